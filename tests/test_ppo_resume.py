"""`kill -9` in the middle of PPO, then the same command: the run resumes from its last complete
checkpoint and takes exactly the steps an uninterrupted run takes (same rewards, same losses).

A ppo stage alone on the built-in base model, with a rule-based reward defined here, through the
CLI as a user runs it."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from tests.cli import pipelines, run_until_first_checkpoint

pytestmark = pytest.mark.slow

STEPS, SAVE = 6, 2
ARGS = [
    "+stages.ppo.kind=ppo",
    "+stages.ppo.reward_funcs=[tests.test_ppo_resume:digit_reward]",
    "+stages.ppo.missing_eos_penalty=0.5",
    f"+stages.ppo.max_steps={STEPS}",
    f"+stages.ppo.save_steps={SAVE}",
    "+stages.ppo.per_device_train_batch_size=4",
    "+stages.ppo.mini_batch_size=2",
    "+stages.ppo.ppo_epochs=2",
    "+stages.ppo.max_new_tokens=8",
    "+stages.ppo.learning_rate=1e-3",
    "+stages.ppo.report_to=none",
]
COMPARED = ("reward_mean", "score_mean", "kl", "kl_coef", "policy_loss", "value_loss", "entropy")
COMPARED += ("clip_frac", "approx_kl", "value_clip_frac", "response_length")


def digit_reward(prompts: list[str], completions: list[str], **_: object) -> list[float]:
    """The share of digits in a reply: a signal even a random model's samples vary in."""
    return [sum(c.isdigit() for c in text) / max(len(text), 1) for text in completions]


def ppo_log(store: Path) -> dict[int, dict]:
    (artifact,) = (store / "artifacts" / "ppo").iterdir()
    lines = (artifact / "train_log.jsonl").read_text().splitlines()
    return {r["step"]: r for r in map(json.loads, lines)}


def test_kill_during_ppo_resumes_with_identical_rewards_and_losses(tmp_path: Path) -> None:
    """LoRA (the default method) here; full and LoRA resume in-process in tests/test_ppo.py."""
    args = ARGS
    code = run_until_first_checkpoint(*args, cwd=tmp_path)
    assert code == -signal.SIGKILL, "ppo finished before it could be killed"

    plan = pipelines("plan", *args, cwd=tmp_path)
    (line,) = [ln for ln in plan.stdout.splitlines() if ln.startswith("ppo: ")]
    assert line.startswith("ppo: resume from checkpoint "), plan.stdout
    step = int(line.split("checkpoint ")[1].split()[0])
    assert step % SAVE == 0 and 0 < step < STEPS

    resumed = pipelines("run", *args, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resumed" in resumed.stdout
    fresh_dir = tmp_path / "fresh"
    fresh_dir.mkdir()
    fresh = pipelines("run", *args, cwd=fresh_dir)
    assert fresh.returncode == 0, fresh.stdout + fresh.stderr

    got, want = ppo_log(tmp_path / "store"), ppo_log(fresh_dir / "store")
    assert sorted(got) == sorted(want) == list(range(1, STEPS + 1))
    # Same CPU, same thread count, every state restored bit for bit, and each step's sampling
    # and minibatch order reseeded from (seed, step): the resumed steps are the same computation,
    # so they agree to float32 rounding of the logged values at most (1e-6 absolute).
    for s in range(1, STEPS + 1):
        for key in COMPARED:
            assert got[s][key] == pytest.approx(want[s][key], abs=1e-6), (s, key)
    assert len({round(want[s]["reward_mean"], 6) for s in want}) > 1, "rewards vary by step"
