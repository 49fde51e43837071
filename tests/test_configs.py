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
    for node in compiled.nodes():  # every data node and every training stage inherits them
        if node.kind != "base" and hasattr(node.config, "template"):
            assert node.config.template == preset.get("template"), node.name
        if hasattr(node.config, "lora_target"):
            assert node.config.lora_target == preset.get("lora_target"), node.name


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


def test_gpu_only_options_compile_and_plan_here(tmp_path: Path) -> None:
    """LoftQ, Liger, flash-attention-2, bf16 and ZeRO cannot run on this CPU; they are still
    configured, compiled and planned (their runs: tests/test_gpu_methods.py, on a GPU)."""
    from compiler.plan import plan
    from pipelines.summary import plan_lines
    from runtime.store import Store

    raw = compose(
        [
            "+pipeline=pt_sft",
            "model=qwen2_5",
            "stages.pt.finetuning_type=lora",
            "stages.pt.loftq_bits=4",
            "stages.pt.enable_liger_kernel=true",
            "stages.sft.attn_implementation=flash_attention_2",
            "stages.sft.precision=bf16",
            "launcher.zero_stage=3",
            "launcher.nproc_per_node=8",
        ]
    )
    compiled = compile_pipeline(raw, tmp_path, DigestCache())
    pt = compiled.graph.nodes["pt"]["node"]
    preset = yaml.safe_load((CONF / "model" / "qwen2_5.yaml").read_text())
    assert pt.config.loftq_bits == 4 and pt.config.lora_target == preset["lora_target"]
    store = Store(tmp_path / "store")
    lines = plan_lines(plan(compiled.graph, store), compiled.graph, compiled.spec.launcher)
    assert "pt: run (new)" in lines and "sft: run (new)" in lines
