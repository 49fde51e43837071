"""Full weights from a model artifact: its chain of adapters folded into the base through the
shared loader (PEFT merge_and_unload at each link), never into quantised weights.

Quantised weights appear two ways: a base checkpoint stored quantised (config.json carries a
`quantization_config`), or a QLoRA adapter, trained on a base quantised at load time (its
model.json says how). Merging into either is refused unless `dequantize` is set; then the
base is quantised as training saw it, dequantised to full precision, and the adapters are merged
into that, so the export computes what the trained model computed.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from stages.base import UserError

DTYPES = ("auto", "float32", "float16", "bfloat16")


@dataclass
class Link:
    path: Path
    meta: dict[str, Any]  # its model.json
    key: str  # the artifact key ("<key>/<dir>" for a base copy inside an adapter artifact)


def lineage(path: Path, key: str, resolve: Callable[[str], Path]) -> list[Link]:
    """The artifact, then its base, down to the full weights everything stands on."""
    from stages.model.loading import read_model_json

    links = [Link(Path(path), read_model_json(path), key)]
    while links[-1].meta["format"] != "full":
        top = links[-1]
        if top.meta.get("base_dir"):
            base, base_key = top.path / top.meta["base_dir"], f"{top.key}/{top.meta['base_dir']}"
        else:
            base, base_key = resolve(top.meta["base"]), top.meta["base"]
        links.append(Link(Path(base), read_model_json(base), base_key))
    return links


def quantised(links: list[Link]) -> list[str]:
    """What in the chain is quantised, in words."""
    found = []
    for link in links[:-1]:
        q = link.meta.get("quantization")
        if q:
            kind = f"{q['bits']}-bit" + (f" {q['type']}" if q.get("type") else "")
            found.append(f"the adapter {link.key[:12]} was trained on a {kind} base (QLoRA)")
    stored = stored_quantization(links[-1].path)
    if stored:
        found.append(f"the base {links[-1].key[:12]} is stored quantised ({stored})")
    return found


def stored_quantization(path: Path) -> str | None:
    config = Path(path) / "config.json"
    if not config.exists():
        return None
    q = json.loads(config.read_text()).get("quantization_config")
    return (q.get("quant_method") or "quantised") if isinstance(q, dict) else None


def source_dtype(links: list[Link]) -> str:
    """The dtype the base's weights are saved in (transformers' config `dtype`)."""
    config = json.loads((links[-1].path / "config.json").read_text())
    dtype = config.get("dtype") or config.get("torch_dtype") or "float32"
    return dtype if dtype in DTYPES else "float32"


def load_merged(
    links: list[Link],
    resolve: Callable[[str], Path],
    dtype: str,
    dequantize: bool,
    work: Path,
    log: Any = None,
) -> Any:
    """The artifact of `links[0]` as one full model in `dtype` (eval mode, on the CPU)."""
    import torch

    from stages.model.loading import load_model, merged

    problems = quantised(links)
    if problems and not dequantize:
        raise UserError(
            f"export: {'; '.join(problems)}: merging into quantised weights is refused (lossy, "
            "and not a model that loads without the quantisation library); set dequantize: true "
            "to dequantise the base to full precision first and merge into that"
        )
    root = links[-1]
    if problems:
        full = dequantised_base(links, work / "dequantized-base", log)
        resolve = _resolving(resolve, root.key, full)
        if len(links) == 1:
            links = [Link(full, links[0].meta, root.key)]
    if log and len(links) > 1:
        log.info("merging %d adapter(s) into the base %s", len(links) - 1, root.key[:12])
    model = merged(load_model(links[0].path, resolve, dtype=getattr(torch, dtype)))
    return model.to(getattr(torch, dtype)).eval()


def _resolving(resolve: Callable[[str], Path], key: str, path: Path) -> Callable[[str], Path]:
    return lambda k: path if k == key else resolve(k)


def dequantised_base(links: list[Link], out: Path, log: Any = None) -> Path:
    """The base as training saw it, in full precision: a quantised checkpoint loaded and
    dequantised, or a full one quantised the way the QLoRA adapter's training did, then
    dequantised. Saved in `out` as an ordinary full model."""
    import importlib.util

    from stages.model.adapters import quantization
    from stages.model.loading import load_model, load_tokenizer, write_model_json

    if importlib.util.find_spec("bitsandbytes") is None:
        raise UserError(
            "export.dequantize: needs bitsandbytes to reproduce the quantised base: "
            "pip install 'pipelines[quant]'"
        )
    root = links[-1]
    qlora = next((link.meta["quantization"] for link in links if "quantization" in link.meta), None)
    config = None
    if qlora and not stored_quantization(root.path):
        config = quantization(
            SimpleNamespace(
                quantization_bit=qlora["bits"],
                quantization_type=qlora.get("type", "nf4"),
                double_quantization=qlora.get("double", True),
            )
        )
    if log:
        log.info("dequantising the base %s", root.key[:12])
    model = load_model(root.path, lambda k: root.path, quantization=config)
    model = model.dequantize()
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    load_tokenizer(root.path).save_pretrained(str(out))
    remote = bool(root.meta.get("trust_remote_code"))
    write_model_json(out, "full", head=root.meta.get("head", "causal_lm"), trust_remote_code=remote)
    return out
