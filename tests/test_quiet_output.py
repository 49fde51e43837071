"""Quiet, readable output: one progress bar per training stage with the metrics in it, no raw
log dicts, and no third-party warnings about things the project handles."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli import pipelines


@pytest.mark.slow
def test_a_run_prints_bars_and_a_summary_not_raw_dicts(tmp_path: Path) -> None:
    args = ["+pipeline=sft", "stages.sft.max_steps=3", "stages.sft.logging_steps=1"]
    done = pipelines("run", *args, "stages.sft.cutoff_len=40", "~stages.export", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    everything = done.stdout + done.stderr
    assert "{'loss'" not in everything and "'grad_norm'" not in everything
    assert "sft: 100%" in done.stderr and "loss=" in done.stderr  # the stage's one bar
    assert "Token indices sequence length" not in everything  # cut and reported by us instead
    assert "Failed to load CPU gemm_4bit_forward" not in everything
    assert "FutureWarning" not in everything
    assert not (tmp_path / "outputs").exists()  # Hydra's run dir is in the store
    assert list((tmp_path / "store" / "hydra").glob("*/*/run.json"))


def test_only_the_handled_third_party_warnings_are_filtered() -> None:
    import logging

    from runtime.worker import quiet_handled_warnings

    quiet_handled_warnings()
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    logger = logging.getLogger("transformers.trainer")
    logger.addHandler(Keep())
    try:
        logger.warning(
            "There were missing keys in the checkpoint model loaded: ['lm_head.weight']."
        )
        logger.warning("There were missing keys in the checkpoint model loaded: ['x.weight'].")
    finally:
        logger.handlers.clear()
    assert seen == ["There were missing keys in the checkpoint model loaded: ['x.weight']."]
