"""Fault injection: a pipeline killed with SIGKILL at seeded points across base, tokenize,
training, checkpoint writes, commits and run records, each followed by a rerun. Nothing broken
ever appears in the store, and the final artifacts (keys, weights, metrics) equal those of an
uninterrupted run. And eight runs of a sweep started at once on one store share their upstream:
it is built once, and every run completes."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from runtime.store import Store
from tests.cli import ROOT, pipelines

pytestmark = [pytest.mark.slow, pytest.mark.long]  # minutes: CI runs them after the default run

ARGS = [
    "+pipeline=sft",
    "~stages.eval",  # the kill points are in the store and training; eval / export add time
    "~stages.export",
    "stages.sft.max_steps=6",
    "stages.sft.save_steps=2",
    "stages.sft.logging_steps=1",
    "stages.sft.max_samples=64",
]

# Runs the CLI with one fault armed: FAULT=site:n kills the process (SIGKILL) at the n-th hit.
KILLER = """
import os, signal, sys
import runtime.store as store, stages.base as base, stages.model.health as health
import stages.base_model as base_model, stages.tokenize as tokenize
site, n = os.environ["FAULT"].split(":")
hits = {"n": 0}
def hit(name, when=True):
    if name == site and when:
        hits["n"] += 1
        if hits["n"] == int(n):
            os.kill(os.getpid(), signal.SIGKILL)
def after(cls, name):
    real = cls.run
    def run(self, ctx, cfg):
        real(self, ctx, cfg)
        hit(name)
    cls.run = run
after(base_model.BaseModelStage, "base_run")
after(tokenize.TokenizeStage, "tokenize_run")
real_write = store.atomic_write_json
def write(path, value):
    hit("manifest", path.name == "manifest.json")
    return real_write(path, value)
store.atomic_write_json = write
real_rename = os.rename
def rename(src, dst):
    hit("rename", os.path.basename(os.path.dirname(os.path.dirname(str(dst)))) == "artifacts")
    return real_rename(src, dst)
store.os.rename = rename
real_commit = store.Store.commit
def commit(self, *a, **k):
    out = real_commit(self, *a, **k)
    hit("after_commit")
    return out
store.Store.commit = commit
real_finite = health.weights_finite
def finite(model):
    hit("step")
    return real_finite(model)
health.weights_finite = finite
real_mark = base.Context.mark_checkpoint_complete
def mark(path):
    hit("checkpoint")
    return real_mark(path)
base.Context.mark_checkpoint_complete = staticmethod(mark)
real_record = store.Store.write_run
def record(self, r):
    hit("record")
    return real_record(self, r)
store.Store.write_run = record
from pipelines.__main__ import main
sys.exit(main(sys.argv[1:]))
"""


def killed_run(cwd: Path, fault: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PIPELINES_STORE": str(cwd / "store")}
    return subprocess.run(
        [sys.executable, "-c", KILLER, "run", *ARGS],
        cwd=cwd,
        env={**env, "FAULT": fault},
        capture_output=True,
        text=True,
        timeout=600,
    )


def faults(seed: int) -> list[str]:
    """Kill points in the order the pipeline reaches them; the training steps and the run
    record write are drawn from the seed."""
    rng = random.Random(seed)
    return [
        "base_run:1",
        "manifest:1",  # base: payload complete, manifest not yet written
        "rename:1",  # base: manifest written, not yet renamed into artifacts/
        "after_commit:1",  # base committed, its work dir not yet cleaned
        "tokenize_run:1",
        "manifest:1",  # tokenize
        f"step:{rng.randint(1, 2)}",  # training, before any checkpoint
        "checkpoint:1",  # checkpoint-2 written, not yet marked complete
        f"step:{rng.randint(1, 4)}",  # training after a checkpoint: resumes
        "manifest:1",  # sft
        "rename:1",  # sft
        f"record:{rng.randint(1, 3)}",  # a run record write (the sft artifact is cached)
    ]


def assert_store_sound(store: Store) -> None:
    for path, manifest in store.artifacts():
        assert store.verify(manifest["key"]) == [], path
    for kind_dir in (store.root / "artifacts").glob("*"):
        for path in kind_dir.iterdir():  # no artifact dir without its manifest
            assert (path / "manifest.json").exists(), path


def artifact(store: Path, kind: str) -> Path:
    (path,) = (store / "artifacts" / kind).iterdir()
    return path


def tensors(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def test_kill_at_twelve_points_then_rerun_gives_the_uninterrupted_result(tmp_path: Path) -> None:
    crashed, fresh = tmp_path / "crashed", tmp_path / "fresh"
    crashed.mkdir()
    fresh.mkdir()
    store = Store(crashed / "store")
    for fault in faults(seed=13):
        done = killed_run(crashed, fault)
        assert done.returncode == -9, f"{fault} never fired:\n{done.stdout}{done.stderr}"
        assert_store_sound(store)
    final = pipelines("run", *ARGS, cwd=crashed)
    assert final.returncode == 0, final.stderr
    assert pipelines("run", *ARGS, cwd=fresh).returncode == 0
    assert_store_sound(store)
    assert pipelines("verify", "--all", cwd=crashed).returncode == 0

    for kind in ("base", "tokenize", "sft"):
        assert artifact(crashed / "store", kind).name == artifact(fresh / "store", kind).name
    got, want = (
        tensors(artifact(crashed / "store", "sft")),
        tensors(artifact(fresh / "store", "sft")),
    )
    assert got.keys() == want.keys()
    for name in got:
        assert (got[name] - want[name]).abs().max().item() <= 1e-5, name
    m_got = json.loads((artifact(crashed / "store", "sft") / "manifest.json").read_text())
    m_want = json.loads((artifact(fresh / "store", "sft") / "manifest.json").read_text())
    assert m_got["metrics"]["tokens_seen"] == m_want["metrics"]["tokens_seen"]
    assert abs(m_got["metrics"]["train_loss"] - m_want["metrics"]["train_loss"]) <= 1e-4
    statuses = {json.loads(p.read_text())["status"] for p in (crashed / "store" / "runs").glob("*")}
    assert "running" not in statuses  # killed runs were marked interrupted by the next run


def test_eight_runs_at_once_share_their_upstream(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PIPELINES_STORE": str(tmp_path / "store")}
    rates = ["1e-3", "2e-3", "3e-3", "4e-3", "5e-3", "6e-3", "7e-3", "8e-3"]
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pipelines",
                "run",
                "+pipeline=sft",
                "~stages.export",
                "stages.sft.max_steps=2",
                "stages.sft.max_samples=32",
                f"stages.sft.learning_rate={lr}",
            ],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for lr in rates
    ]
    outputs = [p.communicate(timeout=900) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in outputs]
    rows = [
        {ln.split()[0]: ln.split()[1] for ln in out.splitlines() if ln[:1].isalpha() and "  " in ln}
        for out, _ in outputs
    ]
    for stage in ("base", "tokenize:demo_sft"):
        ran = [r[stage] for r in rows if r[stage] == "ran"]
        assert len(ran) == 1, (stage, [r[stage] for r in rows])
    assert len(list((tmp_path / "store" / "artifacts" / "sft").iterdir())) == 8
    assert_store_sound(Store(tmp_path / "store"))
