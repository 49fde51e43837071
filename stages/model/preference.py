"""What the offline preference stages (dpo, kto, orpo, simpo) share around TRL's trainers: their
the reference policy, the check
that policy and reference read the same token ids, the reward metrics TRL logs, and the memory
profile the compiler's estimate asks for.

The reference is the upstream policy the stage starts from (`ref_model` defaults to the producer
of `model`), never silently the base. When it is that upstream and the policy trains a LoRA
adapter, TRL needs no second model: a fresh adapter on the upstream weights is disabled, and a
continued upstream adapter is copied into a frozen "ref" adapter first (left out of the artifact,
adapters.save_trained saves only the trained one). Otherwise the reference is loaded here, merged and frozen.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from stages.base import Context, UserError

REWARD_METRICS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies")


def with_lengths(data: Any) -> Any:
    """group_by_length: the Trainer groups rows by a `length` column where rows have no
    input_ids; a row's length is its prompt plus its longest reply."""
    if data is None:
        return None

    def length(row: dict[str, Any]) -> dict[str, int]:
        replies = [len(v) for k, v in row.items() if k.endswith("_ids") and k != "prompt_ids"]
        return {"length": len(row["prompt_ids"]) + max(replies)}

    return data.map(length)


def same_reference(ctx: Context) -> bool:
    """Whether ref_model is the producer of model (the default), by artifact key."""
    keys = ctx.input_keys
    if "ref_model" in keys and "model" in keys:
        return keys["ref_model"] == keys["model"]
    ref = ctx.inputs.get("ref_model", ctx.inputs["model"])
    return Path(ref).resolve() == Path(ctx.inputs["model"]).resolve()


def reference_extra(ctx: Context, cfg: Any) -> Callable[[Any], dict[str, Any]]:
    """Recipe.extra: TRL's `ref_model` keyword. None (TRL's own reference) where that is exactly
    the upstream policy: LoRA on it (adapter disabled, or the frozen copy of a continued adapter),
    or reference log-probabilities precomputed from the untrained policy."""
    if same_reference(ctx) and (cfg.finetuning_type == "lora" or cfg.precompute_ref_log_probs):
        return lambda model: {}
    return lambda model: {"ref_model": load_reference(ctx, cfg)}


def load_reference(ctx: Context, cfg: Any) -> Any:
    """The ref_model artifact as full weights, in eval mode, frozen."""
    from stages.model.loading import load_model, merged

    path = ctx.inputs.get("ref_model", ctx.inputs["model"])
    resolve = ctx.resolve or (lambda key: path)
    model = merged(
        load_model(
            path,
            resolve,
            attn_implementation=cfg.attn_implementation,
            rope_scaling=cfg.rope_scaling,
        )
    )
    model.eval()
    model.requires_grad_(False)
    return model


def check_tokenizers(ctx: Context, tokenizer: Any) -> None:
    """Policy and reference must score the same token ids: a ref_model from another base model
    (another tokenizer) makes the log-ratios meaningless. Both chains start from the one `base`
    unless a pipeline declares a second model, so this is checked here, on the artifacts."""
    if same_reference(ctx):
        return
    from stages.model.loading import load_tokenizer

    ref = load_tokenizer(ctx.inputs["ref_model"])
    if ref.get_vocab() == tokenizer.get_vocab():
        return
    raise UserError(
        f"ref_model '{stage_name(ctx.inputs['ref_model'])}' uses a different tokenizer from "
        f"model '{stage_name(ctx.inputs['model'])}' ({len(ref)} vs {len(tokenizer)} tokens): "
        "the reference must score the policy's token ids; name a ref_model trained from the "
        "same base model (or leave ref_model unset: the policy's upstream)"
    )


def stage_name(artifact: Path) -> str:
    """The stage that produced an artifact (its manifest's name), else the directory's name."""
    manifest = Path(artifact) / "manifest.json"
    if manifest.exists():
        return str(json.loads(manifest.read_text()).get("name", Path(artifact).name))
    return Path(artifact).name


def record_rewards(ctx: Context, names: tuple[str, ...] = REWARD_METRICS) -> None:
    """The last logged values of TRL's implicit-reward metrics (train, and eval where there is a
    validation split) into the manifest's metrics: rewards_margins, eval_rewards_accuracies..."""
    from stages.model.training import read_log

    for record in read_log(ctx.out):
        for name in names:
            for prefix in ("", "eval_"):
                value = record.get(prefix + name)
                if isinstance(value, (int, float)):
                    ctx.metrics[prefix + name.replace("/", "_")] = round(float(value), 6)


def memory_profile(cfg: Any, roles: dict[str, str | None]) -> dict[str, int]:
    """Two sequences per example (chosen and rejected, or a reply and its KL mismatch); a frozen
    reference in memory unless the kind has none or TRL's own reference needs none."""
    if "ref_model" not in roles:
        return {"sequences": 2}
    own = roles["ref_model"] == roles.get("model") and (
        cfg.finetuning_type == "lora" or cfg.precompute_ref_log_probs
    )
    return {"sequences": 2, "frozen": 0 if own else 1}


def train_pairs(
    ctx: Context, cfg: Any, recipe: Any, rows: Callable[[Any], Any] | None = None
) -> None:
    """What dpo / orpo / simpo run: the data's chat template and stop tokens, the pairs (with a
    `length` column for group_by_length, converted by `rows` for trainers that want another
    layout), the reference's tokenizer checked, then the one training path."""
    from stages.data.build import chat_tokenizer, load_splits
    from stages.model.finetune import fine_tune

    tokenizer, stops = chat_tokenizer(ctx.inputs["model"], ctx.inputs["data"])
    if "ref_model" in ctx.inputs:
        check_tokenizers(ctx, tokenizer)
    train, val = load_splits(ctx.inputs["data"])
    if cfg.group_by_length:
        train, val = with_lengths(train), with_lengths(val)
    if rows is not None:
        train, val = rows(train), rows(val)
    fine_tune(ctx, cfg, tokenizer, train, val, stop_ids=stops, recipe=recipe)
