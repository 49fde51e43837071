"""GaLore, APOLLO and BAdam: each reaches the Trainer through its library, trains (CPU, tiny
model), and is refused at compile time where it cannot apply."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest

from stages.base import Context, UserError
from stages.model.optimizers import ALL_LAYERS, missing_package, trainer_args
from stages.model.tiny import build_model
from stages.sft import SftConfig
from tests.sizes import SMALL
from tests.training import base_and_data, run_sft

pytestmark = pytest.mark.slow
SEEN: dict[str, object] = {}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return base_and_data(tmp_path_factory.mktemp("optim"))


@pytest.fixture(autouse=True)
def see_the_optimizer(monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import Trainer

    real = Trainer.train

    def spy(self: Trainer, *a: object, **kw: object) -> object:
        out = real(self, *a, **kw)
        SEEN["optimizer"] = self.optimizer
        return out

    monkeypatch.setattr(Trainer, "train", spy)


def train(prepared: tuple[Path, Path], tmp_path: Path, **cfg: object) -> Context:
    ctx = run_sft(*prepared, tmp_path / "out", **{"finetuning_type": "full", **cfg})
    assert math.isfinite(ctx.metrics["train_loss"])
    return ctx


def changed(base: Path, out: Path) -> set[str]:
    from safetensors.torch import load_file

    before, after = (
        load_file(str(base / "model.safetensors")),
        load_file(str(out / "model.safetensors")),
    )
    return {k for k in before if not before[k].equal(after[k])}


def optimizer_class() -> str:
    """module.Class of the optimizer the Trainer used (accelerate wraps it)."""
    opt = SEEN["optimizer"]
    inner = getattr(opt, "optimizer", opt)
    return f"{type(inner).__module__}.{type(inner).__name__}"


@pytest.mark.parametrize(
    ("flag", "want"),
    [("use_galore", "galore_torch.adamw.AdamW"), ("use_apollo", "apollo_torch.apollo.AdamW")],
)
def test_low_rank_projection_optimizers_train_full_weights(
    prepared: tuple[Path, Path], tmp_path: Path, flag: str, want: str
) -> None:
    pytest.importorskip(flag.replace("use_", "") + "_torch")
    prefix = flag.replace("use_", "")
    ctx = train(
        prepared, tmp_path, **{flag: True, f"{prefix}_rank": 4, f"{prefix}_update_interval": 2}
    )
    assert optimizer_class() == want
    moved = changed(prepared[0], ctx.out)
    assert any(".layers.0.mlp.down_proj." in k for k in moved)


def test_badam_trains_one_block_of_layers_at_a_time(
    prepared: tuple[Path, Path], tmp_path: Path
) -> None:
    pytest.importorskip("badam")
    ctx = train(prepared, tmp_path, use_badam=True, badam_switch_interval=100)
    assert optimizer_class() == "badam.block_optim.BlockOptimizer"
    moved = changed(prepared[0], ctx.out)
    assert moved and all(k.startswith("model.layers.0.") for k in moved)  # ascending: block 0


def test_trainer_arguments_for_galore_and_apollo() -> None:
    cfg = SftConfig(finetuning_type="full", use_galore=True, galore_rank=8, galore_layerwise=True)
    assert trainer_args(cfg) == {
        "optim": "galore_adamw_layerwise",
        "optim_target_modules": ALL_LAYERS,
        "optim_args": "rank=8,update_proj_gap=200,scale=2.0,proj_type=std",
    }
    cfg = SftConfig(finetuning_type="full", use_apollo=True, apollo_target=["q_proj", "v_proj"])
    args = trainer_args(cfg)
    assert args["optim"] == "apollo_adamw" and args["optim_target_modules"] == ["q_proj", "v_proj"]
    assert trainer_args(SftConfig()) == {}


def test_rules_are_checked_at_compile_time() -> None:
    from compiler.errors import Issue
    from compiler.schema import validate

    issues: list[Issue] = []
    stage = {
        "kind": "sft",
        "finetuning_type": "lora",
        "use_galore": True,
        "use_badam": True,
        "optim": "sgd",
        "galore_layerwise": True,
        "gradient_accumulation_steps": 4,
    }
    validate({"stages": {"s": stage}}, issues)
    assert [str(i) for i in issues] == [
        "stages.s.use_badam: choose one of use_galore, use_badam",
        "stages.s.use_galore: trains full weights: finetuning_type: full",
        "stages.s.use_badam: trains full weights: finetuning_type: full",
        "stages.s.optim: GaLore wraps one of: adamw_torch, adamw_8bit, adafactor",
        "stages.s.gradient_accumulation_steps: layer-wise updates need 1",
    ]


def test_a_missing_package_is_one_install_hint(
    prepared: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "badam" else real(name, *a)
    )
    cfg = SimpleNamespace(use_galore=False, use_apollo=False, use_badam=True)
    assert (
        missing_package(cfg)
        == "use_badam needs badam: pip install badam (or the [optimizers] extra)"
    )
    with pytest.raises(UserError, match="use_badam needs badam"):
        train(prepared, tmp_path, use_badam=True)


@pytest.mark.parametrize("mode", ["ascending", "descending", "fixed"])
def test_a_resumed_badam_run_continues_the_block_schedule(tmp_path: Path, mode: str) -> None:
    """The block active after k steps of a fresh run is the one a run resumed at step k starts
    with (BAdam itself does not checkpoint it)."""
    pytest.importorskip("badam")
    import torch
    from transformers import AutoModelForCausalLM

    from stages.model.optimizers import build_optimizer

    build_model(tmp_path, **{**SMALL, "num_hidden_layers": 4})
    cfg = SftConfig(finetuning_type="full", use_badam=True, badam_switch_interval=2)
    cfg.badam_switch_mode = mode

    def active(opt: object) -> list[str]:
        return list(opt.active_param_prefixs)  # type: ignore[attr-defined]

    model = AutoModelForCausalLM.from_pretrained(str(tmp_path))
    fresh = build_optimizer(model, cfg)
    ids = torch.tensor([[5, 9, 14, 20, 33]])
    seen = [active(fresh)]
    for _ in range(7):
        model(ids, labels=ids).loss.backward()
        fresh.step()
        fresh.zero_grad()
        seen.append(active(fresh))
    assert len({tuple(s) for s in seen}) == (1 if mode == "fixed" else 4)  # it did switch
    for k in (1, 2, 3, 5, 6):
        resumed = build_optimizer(AutoModelForCausalLM.from_pretrained(str(tmp_path)), cfg, k)
        assert active(resumed) == seen[k], k


def test_a_target_string_names_modules_as_in_llama_factory() -> None:
    """transformers reads a string target as one regex over the full module name, so a bare
    "q_proj" would match nothing: a string other than "all" is a comma-separated list."""
    cfg = SftConfig(finetuning_type="full", use_galore=True, galore_target="q_proj, v_proj")
    assert trainer_args(cfg)["optim_target_modules"] == ["q_proj", "v_proj"]


def test_optimizer_settings_the_libraries_cannot_run_are_refused() -> None:
    from stages.model.optimizers import check

    cfg = SftConfig(finetuning_type="full", use_galore=True, galore_layerwise=True)
    cfg.optim = "adafactor"
    assert ("galore_layerwise", "the layer-wise GaLore Adafactor fails: use adamw") in check(cfg)
    from compiler.errors import Issue
    from compiler.schema import validate

    issues: list[Issue] = []
    stage = {
        "kind": "sft",
        "finetuning_type": "full",
        "use_apollo": True,
        "apollo_proj_type": "full",
    }
    validate({"stages": {"s": stage}}, issues)
    assert [str(i) for i in issues] == [
        "stages.s.apollo_proj_type: invalid value 'full' (one of: std, reverse_std, right, left)"
    ]


def test_galore_on_named_modules_changes_only_those_in_the_layers(
    prepared: tuple[Path, Path], tmp_path: Path
) -> None:
    pytest.importorskip("galore_torch")
    ctx = train(prepared, tmp_path, use_galore=True, galore_rank=4, galore_target="q_proj")
    moved = changed(prepared[0], ctx.out)
    assert any(".self_attn.q_proj." in k for k in moved)
