"""Load a model artifact: full weights, or a base (found by key) plus a PEFT adapter.

`model.json` in the artifact says which: {"format": "full"} or {"format": "adapter", "base": key},
and which head the model has: a causal LM (the default) or a reward model's one-output scalar head
({"head": "reward"}: AutoModelForSequenceClassification with num_labels 1).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

MODEL_JSON = "model.json"
CAUSAL_LM, REWARD = "causal_lm", "reward"


def write_model_json(
    out_dir: Path,
    fmt: str,
    base: str | None = None,
    rope_scaling: dict | None = None,
    base_dir: str | None = None,
    head: str = CAUSAL_LM,
    quantization: dict | None = None,
    trust_remote_code: bool = False,
) -> None:
    """`rope_scaling` is kept for adapters: their base must be loaded with it to match training
    (full weights carry it in their own config.json). `base_dir` names a copy of the base inside
    the artifact, for adapters whose initialisation rewrote the base (LoftQ); `base` still names
    where it came from. `quantization` records the quantised base a QLoRA adapter trained on
    ({"bits": 4, "type": "nf4"}): export refuses to merge it without being told to dequantise."""
    meta: dict[str, Any] = {"format": fmt}
    if head != CAUSAL_LM:
        meta["head"] = head
    if trust_remote_code:  # the user allowed the model's own code when it was built
        meta["trust_remote_code"] = True
    if fmt == "adapter":
        if not base:
            raise ValueError("an adapter artifact must name the key of its base model")
        meta["base"] = base
        if rope_scaling:
            meta["rope_scaling"] = rope_scaling
        if base_dir:
            meta["base_dir"] = base_dir
        if quantization:
            meta["quantization"] = quantization
    (Path(out_dir) / MODEL_JSON).write_text(json.dumps(meta, sort_keys=True) + "\n")


def read_model_json(path: Path) -> dict[str, Any]:
    file = Path(path) / MODEL_JSON
    if not file.exists():  # a plain Hugging Face directory
        return {"format": "full"}
    return json.loads(file.read_text())


def load_tokenizer(path: Path) -> Any:
    from transformers import AutoTokenizer

    remote = bool(read_model_json(path).get("trust_remote_code"))
    return AutoTokenizer.from_pretrained(str(path), local_files_only=True, trust_remote_code=remote)


def load_model(
    path: Path,
    resolve: Callable[[str], Path],
    *,
    trainable_adapter: bool = False,
    dtype: Any = None,
    quantization: Any = None,
    attn_implementation: str | None = None,
    rope_scaling: dict | None = None,
    head: str | None = None,
) -> Any:
    """The model an artifact describes; an adapter's base is loaded first, by key. `head` asks
    for a head other than the artifact's own (a reward head on a causal LM: the rm stage).
    `quantization` (a transformers BitsAndBytesConfig) applies to the full weights; `rope_scaling`
    (rope_type linear / dynamic / yarn / llama3 and its factor) stretches the context."""
    from transformers import AutoConfig

    meta = read_model_json(path)
    head = head or meta.get("head", CAUSAL_LM)
    if meta["format"] == "full":
        extra: dict[str, Any] = (
            {"attn_implementation": attn_implementation} if attn_implementation else {}
        )
        if meta.get("trust_remote_code"):
            extra["trust_remote_code"] = True
        if quantization:
            extra.update(quantization_config=quantization, device_map=_device())
        if rope_scaling:
            extra["config"] = with_rope_scaling(AutoConfig.from_pretrained(str(path)), rope_scaling)
        with _quiet_new_head(head != meta.get("head", CAUSAL_LM)):
            return _auto_class(head).from_pretrained(
                str(path), local_files_only=True, dtype=dtype, **_head_options(head, path), **extra
            )
    from peft import PeftModel

    own = meta.get("head", CAUSAL_LM)
    if head != own:  # a new head on an adapter's model (rm on a LoRA sft): merge, then swap
        options = {"dtype": dtype, "attn_implementation": attn_implementation}
        whole = merged(load_model(path, resolve, rope_scaling=rope_scaling, head=own, **options))
        return _with_head(whole, head, path)
    base = load_model(
        Path(path) / meta["base_dir"] if meta.get("base_dir") else resolve(meta["base"]),
        resolve,
        dtype=dtype,
        quantization=quantization,
        attn_implementation=attn_implementation,
        rope_scaling=rope_scaling or meta.get("rope_scaling"),
        head=head,
    )
    model = PeftModel.from_pretrained(merged(base), str(path), is_trainable=trainable_adapter)
    if (Path(path) / "generation_config.json").exists():  # the adapter's stop tokens
        from transformers import GenerationConfig

        model.get_base_model().generation_config = GenerationConfig.from_pretrained(str(path))
    return model


def _with_head(model: Any, head: str, path: Path) -> Any:
    """The same backbone weights under another head (the new head initialised fresh): the
    backbone's parameter names are shared by a model's causal-LM and classification classes."""
    import copy

    config = copy.deepcopy(model.config)
    for k, v in _head_options(head, path, config.to_dict()).items():
        setattr(config, k, v)
    with _quiet_new_head(True):
        out = _auto_class(head).from_config(config, dtype=model.dtype)
    prefix = out.base_model_prefix
    backbone = getattr(model, prefix).state_dict()
    getattr(out, prefix).load_state_dict(backbone)
    return out


@contextmanager
def _quiet_new_head(new: bool) -> Iterator[None]:
    """A head put on a model that has none (rm on a causal LM) is new by design: transformers'
    "newly initialized" report would only alarm."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    if new:
        hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def _auto_class(head: str) -> Any:
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    return AutoModelForSequenceClassification if head == REWARD else AutoModelForCausalLM


def _head_options(head: str, path: Path, config: dict[str, Any] | None = None) -> dict[str, Any]:
    """A reward head: one output, and the pad id its last-token pooling needs."""
    if head != REWARD:
        return {}
    options: dict[str, Any] = {"num_labels": 1}
    config = config or json.loads((Path(path) / "config.json").read_text())
    if config.get("pad_token_id") is None:
        options["pad_token_id"] = _pad_id(path, config)
    return options


def _pad_id(path: Path, config: dict[str, Any]) -> int:
    """The tokenizer's pad id (or eos) where the config names none."""
    tokenizer = load_tokenizer(path) if (Path(path) / "tokenizer_config.json").exists() else None
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is None:
        pad = getattr(tokenizer, "eos_token_id", None)
    eos = config.get("eos_token_id")
    return pad if pad is not None else (eos[0] if isinstance(eos, list) else eos or 0)


def with_rope_scaling(config: Any, scaling: dict) -> Any:
    """Merge a rope scaling dict into the config (transformers 5 `rope_parameters`, or the older
    `rope_scaling`)."""
    if getattr(config, "rope_parameters", None) is not None:
        config.rope_parameters = {**config.rope_parameters, **scaling}
    else:
        config.rope_scaling = dict(scaling)
    return config


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def merged(model: Any) -> Any:
    """Full weights: an adapter folded into its base; anything else as it is."""
    from peft import PeftModel

    return model.merge_and_unload() if isinstance(model, PeftModel) else model
