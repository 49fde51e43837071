"""Write a merged causal LM as one GGUF file (llama.cpp's format, also read by Ollama and by
transformers' GGUF loader), through the `gguf` package: hyperparameters, tokenizer, chat template
and stop tokens as metadata; weights as f32 / f16 / bf16 / q8_0.

Reading GGUF models (the base stage's SmolLM2) lives in `stages/model/gguf.py`; this is the writer.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stages.base import UserError

# name -> (tensor type of 2-D weights, file type) as gguf spells them
GGUF_TYPES: dict[str, tuple[str, str]] = {
    "f32": ("F32", "ALL_F32"),
    "f16": ("F16", "MOSTLY_F16"),
    "bf16": ("BF16", "MOSTLY_BF16"),
    "q8_0": ("Q8_0", "MOSTLY_Q8_0"),
}


@dataclass(frozen=True)
class Arch:
    name: str  # llama.cpp's architecture name
    permute_qk: bool  # llama.cpp's rotary layout for q / k rows (undone by the loaders)


ROPE_TYPES = ("default", "linear", "llama3")
ARCHITECTURES = {
    "LlamaForCausalLM": Arch("llama", permute_qk=True),
    "Qwen2ForCausalLM": Arch("qwen2", permute_qk=False),
}


def check_architecture(config: Any) -> Arch:
    """The GGUF layout of a model config, or a UserError naming the supported ones."""
    archs = list(getattr(config, "architectures", None) or [])
    for name in archs:
        if name in ARCHITECTURES:
            return ARCHITECTURES[name]
    raise UserError(
        f"gguf: cannot write {', '.join(archs) or 'this model'} as GGUF; supported: "
        f"{', '.join(ARCHITECTURES)}; export the safetensors only (gguf: [])"
    )


def write_gguf(
    model: Any, tokenizer: Any, stop_ids: list[int], path: Path, kind: str, log: Any = None
) -> dict[str, Any]:
    """`model` (a merged causal LM) as `path`, weights in `kind` (a GGUF_TYPES name)."""
    import gguf

    from stages.model.gguf_vocab import add_vocab

    arch = check_architecture(model.config)
    tensor_type, file_type = GGUF_TYPES[kind]
    writer = _writer_class()(str(path), arch.name)
    writer.add_name("pipelines export")
    _add_hparams(writer, model.config, gguf.LlamaFileType[file_type])
    add_vocab(writer, tokenizer, stop_ids, model.config.vocab_size)
    counts: dict[str, int] = {}
    for name, data, raw in _tensors(model, arch, gguf.GGMLQuantizationType[tensor_type]):
        writer.add_tensor(name, data, raw_dtype=raw)
        label = raw.name if raw is not None else str(data.dtype)
        counts[label] = counts.get(label, 0) + 1
    if log:
        log.info("GGUF %s: writing %d tensors to %s", kind, sum(counts.values()), path.name)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file(progress=True)  # a bar, as transformers' shard writing has
    writer.close()
    return {"file": path.name, "type": kind, "bytes": path.stat().st_size, "tensors": counts}


def _writer_class() -> Any:
    import gguf

    class Writer(gguf.GGUFWriter):
        """gguf's writer, except that it writes an empty array too: GGUF allows one, and
        llama.cpp needs the merges key of a vocabulary that has no merges."""

        def _pack_val(self, val: Any, vtype: Any, add_vtype: bool, sub_type: Any = None) -> bytes:
            if vtype == gguf.GGUFValueType.ARRAY and not len(val) and sub_type is not None:
                head = self._pack("I", vtype) if add_vtype else b""
                return head + self._pack("I", sub_type) + self._pack("Q", 0)
            return super()._pack_val(val, vtype, add_vtype, sub_type)

    return Writer


def _add_hparams(writer: Any, config: Any, file_type: Any) -> None:
    import gguf

    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(getattr(config, "num_key_value_heads", None) or heads)
    writer.add_rope_dimension_count(head_dim)
    if head_dim * heads != config.hidden_size:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    rope = _rope(config)
    writer.add_rope_freq_base(float(rope.get("rope_theta", 10000.0)))
    if check_rope(rope) == "linear":  # llama3's factors travel as a tensor (rope_freqs)
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def check_rope(rope: dict[str, Any]) -> str:
    """The rope scaling type, if GGUF export writes it; a UserError otherwise."""
    kind = rope.get("rope_type") or rope.get("type") or "default"
    if kind not in ROPE_TYPES:
        raise UserError(
            f"gguf: rope scaling '{kind}' is not written to GGUF here ({', '.join(ROPE_TYPES)} "
            "are); export without gguf"
        )
    return kind


def _rope(config: Any) -> dict[str, Any]:
    """transformers 5 `rope_parameters`, or the older `rope_theta` plus `rope_scaling`."""
    params = dict(getattr(config, "rope_parameters", None) or {})
    if not params:
        params = dict(getattr(config, "rope_scaling", None) or {})
        params.setdefault("rope_theta", getattr(config, "rope_theta", 10000.0))
        if "type" in params:
            params.setdefault("rope_type", params["type"])
    return params


def _tensors(model: Any, arch: Arch, wanted: Any) -> Any:
    """(gguf name, array, raw type or None) per weight, in the model's own order."""
    import gguf

    config = model.config
    names = gguf.get_tensor_name_map(_arch_enum(arch.name), config.num_hidden_layers)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    for hf_name, tensor in model.state_dict().items():
        if tied and hf_name == "lm_head.weight":
            continue  # llama.cpp reuses token_embd when there is no output tensor
        stem, _, suffix = hf_name.rpartition(".")
        gguf_name = names.get_name(stem)
        if gguf_name is None:
            raise UserError(f"gguf: no GGUF name for the weight {hf_name}; export without gguf")
        data = tensor.detach().float().cpu().numpy()
        if arch.permute_qk and stem.endswith("q_proj"):
            data = permute_rotary(data, heads)
        elif arch.permute_qk and stem.endswith("k_proj"):
            data = permute_rotary(data, kv_heads)
        yield (f"{gguf_name}.{suffix}", *_encode(data, wanted))
    factors = llama3_rope_factors(config)
    if factors is not None:
        yield (f"{gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS]}.weight", factors, None)


def _arch_enum(name: str) -> Any:
    import gguf

    return next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == name)


def permute_rotary(weight: Any, heads: int) -> Any:
    """Rows of each head from transformers' half-split rotary layout into llama.cpp's
    interleaved pairs: row (half h, index i) moves to 2 * i + h."""
    rows = weight.shape[0]
    half = rows // heads // 2
    shaped = weight.reshape(heads, 2, half, *weight.shape[1:])
    return shaped.swapaxes(1, 2).reshape(weight.shape)


def _encode(data: Any, wanted: Any) -> tuple[Any, Any]:
    """Norms and biases (1-D) stay f32, as llama.cpp keeps them; q8_0 needs rows in blocks
    of 32 values, and a weight whose rows are not falls back to f16."""
    import gguf
    import numpy as np

    kind = gguf.GGMLQuantizationType
    if data.ndim < 2 or wanted == kind.F32:
        return data.astype(np.float32), None
    if wanted == kind.F16:
        return data.astype(np.float16), None
    block, _ = gguf.GGML_QUANT_SIZES[wanted]
    if data.shape[-1] % block:
        return data.astype(np.float16), None
    return gguf.quants.quantize(data, wanted), wanted


def llama3_rope_factors(config: Any) -> Any:
    """Llama 3.1's rope scaling as llama.cpp carries it: one divisor per frequency (the
    tensor `rope_freqs`), the ratio of transformers' own default and llama3 frequencies."""
    if _rope(config).get("rope_type") != "llama3":
        return None
    import torch
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
    base = float(_rope(config).get("rope_theta", 10000.0))
    dim = scaled.shape[0] * 2
    exponents = torch.arange(0, dim, 2, dtype=torch.int64).to(dtype=torch.float) / dim
    return (1.0 / (base**exponents) / scaled).float().numpy()
