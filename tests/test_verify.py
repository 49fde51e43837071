"""The store never hands out a damaged artifact: committed files are read-only, a changed or
missing file turns `cached` into `run (artifact damaged: ...)`, `verify` re-hashes and reports,
and a local model is copied into the store, never linked to the user's file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runtime.store import Store
from stages.model.tiny import build_model
from tests.cli import pipelines
from tests.sizes import SMALL


def committed(tmp_path: Path) -> tuple[Store, str]:
    store = Store(tmp_path / "store")
    payload = tmp_path / "payload"
    payload.mkdir()
    (payload / "weights.bin").write_bytes(b"\x00" * 64)
    (payload / "config.json").write_text("{}\n")
    store.commit("fake", "k1", payload, {"name": "fake"})
    return store, "k1"


def flip_byte(f: Path) -> None:
    f.chmod(0o644)
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))


def test_committed_files_are_read_only_and_intact(tmp_path: Path) -> None:
    store, key = committed(tmp_path)
    path = store.find(key)
    assert path is not None
    assert all(not (f.stat().st_mode & 0o222) for f in path.iterdir() if f.name != "manifest.json")
    assert store.damage(key) is None and store.verify(key) == []


def test_a_flipped_byte_or_a_missing_file_is_named(tmp_path: Path) -> None:
    store, key = committed(tmp_path)
    path = store.find(key)
    assert path is not None
    flip_byte(path / "weights.bin")
    assert store.damage(key) == "weights.bin changed"
    assert store.verify(key) == ["weights.bin"]
    (path / "config.json").unlink()
    assert store.damage(key) == "config.json missing"


def test_a_damaged_artifact_is_discarded_whole(tmp_path: Path) -> None:
    store, key = committed(tmp_path)
    store.discard(key)
    assert store.find(key) is None and not store.has(key)


def base_weights(store: Path) -> Path:
    (base,) = (store / "artifacts" / "base").iterdir()
    return base / "model.safetensors"


SFT = ["+pipeline=sft", "stages.sft.max_steps=2", "stages.sft.max_samples=32"]


@pytest.mark.slow
def test_plan_names_the_damage_run_recomputes_and_verify_reports(tmp_path: Path) -> None:
    assert pipelines("run", *SFT, cwd=tmp_path).returncode == 0
    whole = pipelines("verify", "--all", cwd=tmp_path)
    assert whole.returncode == 0 and "5 of 5 artifacts intact" in whole.stdout, whole.stdout
    weights = base_weights(tmp_path / "store")
    flip_byte(weights)

    plan = pipelines("plan", *SFT, cwd=tmp_path)
    assert "base: run (artifact damaged: model.safetensors changed)" in plan.stdout, plan.stdout
    found = pipelines("verify", "base", cwd=tmp_path)
    assert found.returncode == 1
    assert "DAMAGED  base" in found.stdout and "model.safetensors" in found.stdout

    rerun = pipelines("run", *SFT, cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    rows = {ln.split()[0]: ln.split()[1] for ln in rerun.stdout.splitlines() if ln[:1].isalpha()}
    assert rows["base"] == "ran"
    assert pipelines("verify", "--all", cwd=tmp_path).returncode == 0


@pytest.mark.slow
def test_a_local_model_is_copied_so_editing_the_source_leaves_the_artifact_intact(
    tmp_path: Path,
) -> None:
    user = tmp_path / "my-model"
    build_model(user, **SMALL)
    args = ["model=local", f"model.name_or_path={user}", "+pipeline=sft"]
    done = pipelines(
        "run", *args, "stages.sft.max_steps=1", "stages.sft.max_samples=16", cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    stored = base_weights(tmp_path / "store")
    assert stored.stat().st_ino != (user / "model.safetensors").stat().st_ino
    (user / "model.safetensors").write_bytes(b"not the weights any more")
    check = pipelines("verify", "--all", cwd=tmp_path)
    assert check.returncode == 0, check.stdout
    manifest = json.loads((stored.parent / "manifest.json").read_text())
    assert manifest["files"]["model.safetensors"]["size"] == stored.stat().st_size
