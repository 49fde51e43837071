"""Failures a user can cause or meet end in one message, with no traceback: a store that is a
file, binary data files and dataset_info.json, a file that is not GGUF, and a disk that fills up
during a checkpoint, a commit or a run record (injected ENOSPC): the summary still prints, the run
record says failed, and the rerun resumes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli import ROOT, pipelines

SFT = ["+pipeline=sft", "stages.sft.max_steps=4", "stages.sft.max_samples=32"]


def binary(path: Path) -> Path:
    path.write_bytes(bytes(range(255, -1, -1)) * 8)  # starts 0xff: never UTF-8
    return path


def one_message(done: subprocess.CompletedProcess, code: int, text: str) -> None:
    assert done.returncode == code, done.stdout + done.stderr
    assert text in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_a_store_that_is_a_file_is_refused_and_plan_still_works(tmp_path: Path) -> None:
    (tmp_path / "s").write_text("not a directory")
    done = pipelines("run", *SFT, "store=s", cwd=tmp_path)
    one_message(done, 2, f"store: {tmp_path / 's'} is a file, not a directory")
    assert pipelines("plan", *SFT, "store=s", cwd=tmp_path).returncode == 0


def test_a_binary_dataset_info_is_one_message(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    binary(tmp_path / "data" / "dataset_info.json")
    done = pipelines("plan", *SFT, "dataset_info=data", cwd=tmp_path)
    one_message(done, 2, "not UTF-8 text (a binary file?)")


@pytest.mark.slow
def test_a_binary_data_file_fails_its_stage_with_file_and_line(tmp_path: Path) -> None:
    data = binary(tmp_path / "rows.jsonl")
    entry = f"+datasets.bad={{path:{data},formatting:alpaca}}"
    done = pipelines("run", *SFT, entry, "stages.sft.dataset=bad", cwd=tmp_path)
    one_message(done, 1, f"{data}:1: not UTF-8 text")
    assert "is rows.jsonl a binary file?" in done.stderr


@pytest.mark.slow
def test_a_file_that_is_not_gguf_is_named(tmp_path: Path) -> None:
    fake = binary(tmp_path / "model.gguf")
    done = pipelines("run", *SFT, "model=local", f"model.name_or_path={fake}", cwd=tmp_path)
    one_message(done, 1, f"{fake} is not a GGUF file")


INJECT = """
import errno, sys
import runtime.store, stages.base
def full(*a, **k):
    raise OSError(errno.ENOSPC, "No space left on device")
where = sys.argv.pop(1)
if where == "commit":
    real = runtime.store.atomic_write_json
    def write(path, value):
        if path.name == "manifest.json" and "sft" == value.get("name"):
            full()
        return real(path, value)
    runtime.store.atomic_write_json = write
elif where == "checkpoint":
    stages.base.Context.mark_checkpoint_complete = staticmethod(full)
elif where == "record":
    runtime.store.Store.write_run = full
elif where == "readonly":  # every write into the store fails as on a read-only mount
    import os, pathlib
    store = os.environ["PIPELINES_STORE"]
    def refuse(path=store, *a, **k):
        raise OSError(errno.EROFS, "Read-only file system", str(path))
    for name in ("write_bytes", "write_text", "mkdir"):
        real = getattr(pathlib.Path, name)
        def guarded(self, *a, _real=real, **k):
            if str(self).startswith(store):
                refuse(self)
            return _real(self, *a, **k)
        setattr(pathlib.Path, name, guarded)
    runtime.store.atomic_write_json = lambda path, value: refuse(path)
from pipelines.__main__ import main
sys.exit(main(sys.argv[1:]))
"""


def run_with_full_disk(
    where: str, cwd: Path, *args: str, verb: str = "run"
) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PIPELINES_STORE": str(cwd / "store")}
    return subprocess.run(
        [sys.executable, "-c", INJECT, where, verb, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def sft_row(stdout: str) -> list[str]:
    (row,) = [ln.split() for ln in stdout.splitlines() if ln.startswith("sft ")]
    return row


@pytest.mark.slow
@pytest.mark.parametrize("where", ["checkpoint", "commit"])
def test_a_full_disk_fails_the_stage_keeps_the_summary_and_resumes(
    tmp_path: Path, where: str
) -> None:
    args = [*SFT, "stages.sft.save_steps=2"]
    done = run_with_full_disk(where, tmp_path, *args)
    when = "while it ran" if where == "checkpoint" else "while committing its artifact"
    one_message(done, 1, f"sft failed: No space left on device {when}")
    assert "to resume: python -m pipelines run" in done.stderr
    assert sft_row(done.stdout)[1] == "failed"  # the summary printed
    (record,) = [json.loads(p.read_text()) for p in (tmp_path / "store" / "runs").glob("*.json")]
    assert record["status"] == "failed"
    assert not (tmp_path / "store" / "artifacts" / "sft").exists()
    again = pipelines("run", *args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert sft_row(again.stdout)[1] in ("ran", "resumed")


@pytest.mark.slow
def test_a_run_record_that_cannot_be_written_does_not_hide_the_summary(tmp_path: Path) -> None:
    done = run_with_full_disk("record", tmp_path, *SFT)
    assert done.returncode == 0, done.stderr
    assert "warning: could not write the run record: No space left on device" in done.stderr
    assert sft_row(done.stdout)[1] == "ran"
    assert (tmp_path / "store" / "artifacts" / "sft").is_dir()


@pytest.mark.slow
def test_data_preview_names_a_bad_file_and_row_without_a_traceback(tmp_path: Path) -> None:
    broken = tmp_path / "rows.jsonl"
    broken.write_text('{"instruction": "a", "output": "b"}\n{bad json\n')
    entry = f"+datasets.bad={{path:{broken},formatting:alpaca}}"
    done = pipelines("data", "preview", "bad", "-n", "5", entry, cwd=tmp_path)
    one_message(done, 2, f"pipelines data preview: {broken}:2: malformed JSON")
    data = binary(tmp_path / "bin.jsonl")
    entry = f"+datasets.bin={{path:{data},formatting:alpaca}}"
    done = pipelines("data", "preview", "bin", entry, cwd=tmp_path)
    one_message(done, 2, f"{data}:1: not UTF-8 text")


@pytest.mark.slow
def test_a_read_only_store_still_plans_and_refuses_to_run_with_one_message(tmp_path: Path) -> None:
    assert pipelines("run", *SFT, "--only", "base", cwd=tmp_path).returncode == 0
    plan = run_with_full_disk("readonly", tmp_path, *SFT, verb="plan")
    assert plan.returncode == 0, plan.stderr
    assert "base: cached" in plan.stdout
    done = run_with_full_disk("readonly", tmp_path, *SFT)
    one_message(done, 2, f"store: cannot write to {tmp_path / 'store'}")
    assert "(Read-only file system)" in done.stderr
