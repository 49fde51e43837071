"""The store: atomic commit with the manifest last, crash safety, locks, names, run records."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from runtime.store import Store
from tests.cli import ROOT


def payload(store: Store, key: str, text: str = "weights") -> Path:
    out = store.work_dir(key) / "out"
    (out / "sub").mkdir(parents=True)
    (out / "a.bin").write_text(text)
    (out / "sub" / "b.txt").write_text("b")
    return out


def test_commit_seals_the_payload_with_digests(tmp_path: Path) -> None:
    store = Store(tmp_path)
    out = payload(store, "k1")
    path = store.commit("sft", "k1", out, {"name": "sft", "metrics": {"loss": 1.0}})
    assert path == tmp_path / "artifacts" / "sft" / "k1" and not out.exists()
    manifest = json.loads((path / "manifest.json").read_text())
    assert set(manifest["files"]) == {"a.bin", "sub/b.txt"}
    assert manifest["files"]["sub/b.txt"]["size"] == 1
    assert (
        manifest["files"]["a.bin"]["sha256"]
        == "9a129038d9a00aed0cf6a7ea059ca50a813449061ab87848cf1a13eafdf33b2c"
    )  # sha256 of b"weights"
    assert store.has("k1") and store.find("k1") == path and store.manifest("k1")["name"] == "sft"
    assert store.verify("k1") == []
    (path / "a.bin").write_text("tampered")
    (path / "sub" / "b.txt").unlink()
    assert store.verify("k1") == ["a.bin", "sub/b.txt"]
    assert store.verify("nope") == ["<no artifact>"]


def test_a_directory_without_a_complete_manifest_is_not_an_artifact(tmp_path: Path) -> None:
    store = Store(tmp_path)
    (tmp_path / "artifacts" / "sft" / "k1").mkdir(parents=True)
    (tmp_path / "artifacts" / "sft" / "k2").mkdir(parents=True)
    (tmp_path / "artifacts" / "sft" / "k2" / "manifest.json").write_text('{"files": {')
    assert not store.has("k1") and not store.has("k2") and list(store.artifacts()) == []


CRASH = """
import os, signal, sys
from pathlib import Path
from runtime.store import Store
os.rename = lambda src, dst: os.kill(os.getpid(), signal.SIGKILL)
store = Store(Path(sys.argv[1]))
out = store.work_dir("k1") / "out"
out.mkdir(parents=True)
(out / "a.bin").write_text("weights")
store.commit("sft", "k1", out, {"name": "sft"})
"""


def test_a_kill_in_the_middle_of_a_commit_leaves_no_artifact(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-c", CRASH, str(tmp_path)], cwd=ROOT)
    assert result.returncode == -signal.SIGKILL
    store = Store(tmp_path)
    assert not store.has("k1") and list(store.artifacts()) == []
    out = store.work_dir("k1") / "out"
    assert out.is_dir()  # the payload waits in the work dir; a rerun rebuilds it
    assert (out / "manifest.json").is_file()  # killed after sealing, before the rename
    store.commit("sft", "k1", out, {"name": "sft"})
    assert store.has("k1") and store.verify("k1") == []


HOLD = """
import sys, time
from pathlib import Path
from runtime.store import Store
store = Store(Path(sys.argv[1]))
with store.lock("k1"):
    Path(sys.argv[2]).write_text("locked")
    time.sleep(float(sys.argv[3]))
    Path(sys.argv[2]).write_text(str(time.time()))
"""


def hold_lock(tmp_path: Path, seconds: float) -> tuple[subprocess.Popen, Path]:
    flag = tmp_path / "flag"
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path), str(flag), str(seconds)], cwd=ROOT
    )
    deadline = time.time() + 30
    while not flag.exists():
        assert time.time() < deadline
        time.sleep(0.01)
    return proc, flag


def test_a_second_writer_waits_for_the_lock(tmp_path: Path) -> None:
    proc, flag = hold_lock(tmp_path, 0.5)
    waited: list[bool] = []
    with Store(tmp_path).lock("k1", on_wait=lambda: waited.append(True)):
        acquired = time.time()
    proc.wait()
    assert waited == [True]
    assert acquired >= float(flag.read_text())  # only after the holder released it


def test_a_killed_lock_holder_does_not_block(tmp_path: Path) -> None:
    proc, _ = hold_lock(tmp_path, 60)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    t0 = time.time()
    with Store(tmp_path).lock("k1"):
        pass
    assert time.time() - t0 < 5


def test_names_and_run_records_round_trip(tmp_path: Path) -> None:
    store = Store(tmp_path)
    assert store.manifest_for_name("tokenize:demo") is None
    store.remember_name("tokenize:demo", "k1", {"config": {"a": 1}})
    assert store.manifest_for_name("tokenize:demo") == {
        "name": "tokenize:demo",
        "key": "k1",
        "payload": {"config": {"a": 1}},
    }
    store.write_run({"id": "r1", "stages": {}})
    store.write_run({"id": "r2", "stages": {"s": {"key": "k"}}})
    assert [r["id"] for r in store.runs()] == ["r1", "r2"]
