"""The export stage's rules before anything runs (GGUF types, shard sizes, reward models, a
model to export), a failed Hub push as one clear error, and an export stage in the sft pipeline
from the command line (a relative export_dir, a cached export copied again)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stages.base import REWARD_MODEL, UserError
from stages.export import ExportConfig, ExportStage, push_to_hub


def test_config_rules_are_checked_before_anything_runs() -> None:
    from compiler.schema import validate

    check = ExportStage.check_config
    assert check(ExportConfig(gguf=["f16", "q8_0"], export_size="500MB")) == []
    assert check(ExportConfig(gguf=["q4_k"])) == [
        ("gguf", "unknown GGUF type 'q4_k': one of f32, f16, bf16, q8_0")
    ]
    assert check(ExportConfig(export_size="lots")) == [
        ("export_size", "'lots': give whole GB, or e.g. '500MB'")
    ]
    assert ExportStage.check_input_types(ExportConfig(gguf=["f16"]), {"model": REWARD_MODEL})
    issues: list = []
    validate({"stages": {"e": {"kind": "export", "model": "m", "export_size": 0}}}, issues)
    assert [str(i) for i in issues] == ["stages.e.export_size: 0 is out of range (must be > 0)"]


def test_the_model_to_export_must_be_named(tmp_path: Path) -> None:
    from compiler.errors import CompileError, Issue
    from compiler.graph import build_graph
    from compiler.schema import validate

    issues: list[Issue] = []
    spec = validate({"stages": {"export": {"kind": "export"}}, "datasets": {}}, issues)
    with pytest.raises(CompileError) as e:
        build_graph(spec, tmp_path, issues)
    assert [str(i) for i in e.value.issues] == ["stages.export.model: missing input (name a stage)"]


def test_a_failed_hub_push_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub

    def offline(self: object, *a: object, **kw: object) -> None:
        raise ConnectionError("no route to host")

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", offline)
    with pytest.raises(UserError, match=r"pushing to 'me/tiny' failed \(ConnectionError: no route"):
        push_to_hub(tmp_path, "me/tiny")


@pytest.mark.slow
def test_an_export_stage_runs_in_a_pipeline_from_the_command_line(tmp_path: Path) -> None:
    """The sft pipeline's export with Hydra overrides (a list of GGUF types, a shard size as
    text): compile, run, summary; a relative export_dir lands under the directory the command
    runs from, and a cached export still delivers its copy to a new export_dir."""
    from tests.cli import pipelines

    args = [
        "+pipeline=sft", "stages.sft.max_steps=2", "stages.sft.finetuning_type=lora",
        "stages.export.gguf=[f16]", "stages.export.export_size=200MB",
    ]  # fmt: skip
    result = pipelines("run", *args, "stages.export.export_dir=shipped", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "export" in result.stdout and "size_mb" in result.stdout
    shipped = tmp_path / "shipped"
    assert {"model.safetensors", "model.json", "export.json"} <= {p.name for p in shipped.iterdir()}
    assert (shipped / "gguf" / "model-f16.gguf").stat().st_size > 10_000
    facts = json.loads((shipped / "export.json").read_text())
    assert len(facts["source"]["chain"]) == 2  # the sft adapter, then the base
    (artifact,) = (tmp_path / "store" / "artifacts" / "export").iterdir()
    assert json.loads((artifact / "manifest.json").read_text())["metrics"]["adapters_merged"] == 1
    again = pipelines("run", *args, "stages.export.export_dir=elsewhere", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "export             cached" in again.stdout
    copied = tmp_path / "elsewhere" / "gguf" / "model-f16.gguf"
    assert copied.is_file()
    before = copied.stat().st_mtime_ns
    assert (
        pipelines("run", *args, "stages.export.export_dir=elsewhere", cwd=tmp_path).returncode == 0
    )
    assert copied.stat().st_mtime_ns == before  # already there, whole: not copied again
