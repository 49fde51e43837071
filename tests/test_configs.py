"""Every shipped config composes and compiles (offline: hub ids are named, not fetched)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from compiler.compile import compile_pipeline
from compiler.digests import DigestCache
from pipelines.preview import compose

CONF = Path(__file__).resolve().parent.parent / "conf"
PIPELINES = sorted(p.stem for p in (CONF / "pipeline").glob("*.yaml"))
MODELS = sorted(p.stem for p in (CONF / "model").glob("*.yaml") if p.stem != "local")


@pytest.mark.parametrize("pipeline", PIPELINES)
@pytest.mark.parametrize("model", MODELS)
def test_every_pipeline_compiles_with_every_model_preset(
    tmp_path: Path, pipeline: str, model: str
) -> None:
    raw = compose([f"+pipeline={pipeline}", f"model={model}"])
    compiled = compile_pipeline(raw, tmp_path, DigestCache())
    preset = yaml.safe_load((CONF / "model" / f"{model}.yaml").read_text())
    for node in compiled.nodes():
        if node.kind == "tokenize":
            assert node.config.template == preset.get("template")
        if node.kind == "sft":
            assert node.config.lora_target == preset.get("lora_target")
            assert node.config.template == preset.get("template")


def test_a_stage_setting_wins_over_the_preset(tmp_path: Path) -> None:
    raw = compose(
        [
            "+pipeline=sft",
            "model=llama3",
            "stages.sft.template=chatml",
            "stages.sft.lora_target=all",
        ]
    )
    sft = compile_pipeline(raw, tmp_path, DigestCache()).graph.nodes["sft"]["node"]
    assert (sft.config.template, sft.config.lora_target) == ("chatml", "all")
