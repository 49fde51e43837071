"""Read the rows of a dataset, wherever they are: json / jsonl / csv / parquet / arrow / txt
files, folders of them, `save_to_disk` datasets, or a hub dataset (needs network).

Rows come with a `where` string (file:row) so every later error can point at its source.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from stages.base import UserError

BUILDERS = {".csv": "csv", ".parquet": "parquet", ".arrow": "arrow", ".txt": "text"}
SUFFIXES = (".json", ".jsonl", *BUILDERS)


def iter_rows(spec: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, row) for every row of the dataset `spec` describes, honouring `num_samples`."""
    rows = _rows(spec)
    limit = spec.get("num_samples")
    if limit is None:
        yield from rows
        return
    taken = []
    for item in rows:
        taken.append(item)
        if len(taken) == limit:
            break
    if not taken:
        return
    for i in range(limit):  # fewer rows than asked: repeat them, as LLaMA-Factory does
        yield taken[i % len(taken)]


def _rows(spec: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    path = Path(spec["path"])
    if spec.get("folder"):
        path = path / spec["folder"]
    saved = (path / "dataset_info.json").exists() or (path / "state.json").exists()
    if path.is_dir() and saved:
        yield from _saved(path, spec)
    elif path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in SUFFIXES)
        if not files:
            raise UserError(f"{path}: no data files ({', '.join(SUFFIXES)}) in this folder")
        for f in files:
            yield from _file(f)
    elif path.is_file():
        yield from _file(path)
    else:
        yield from _hub(spec)


def _file(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    if path.suffix == ".jsonl":
        yield from _jsonl(path)
    elif path.suffix == ".json":
        yield from _json(path)
    elif path.suffix in BUILDERS:
        data = _builder_rows(path)
        for i, row in enumerate(data, start=1 if path.suffix != ".csv" else 2):
            yield f"{path}:{i}", row
    else:
        raise UserError(f"{path}: unsupported file type (use one of {', '.join(SUFFIXES)})")


def _builder_rows(path: Path) -> Any:
    """A csv / parquet / text file through `datasets`; a file it cannot parse is the user's."""
    from datasets import load_dataset

    try:
        return load_dataset(BUILDERS[path.suffix], data_files=str(path), split="train")
    except Exception as e:  # datasets raises many types for a malformed file
        reason = "not UTF-8 text (a binary file?)" if _binary(path) else f"{type(e).__name__}: {e}"
        raise UserError(f"{path}: cannot be read as {path.suffix[1:]}: {reason}") from None


def _binary(path: Path) -> bool:
    head = path.read_bytes()[:4096]
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:
        return e.start < len(head) - 4  # not just a character cut at the block's end
    return b"\0" in head


def _not_text(path: Path, where: str, e: UnicodeDecodeError) -> UserError:
    return UserError(
        f"{where}: not UTF-8 text (byte {e.start} of the line is {e.object[e.start]:#04x}); "
        f"is {path.name} a binary file? Data files must be UTF-8 JSON / JSON lines / text"
    )


def _jsonl(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    with path.open("rb") as f:
        for n, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise _not_text(path, f"{path}:{n}", e) from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{n}: malformed JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise UserError(f"{path}:{n}: expected a JSON object, got {type(row).__name__}")
            yield f"{path}:{n}", row


def _json(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise _not_text(path, str(path), e) from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path}:{e.lineno}: malformed JSON ({e.msg})") from None
    if not isinstance(data, list):
        raise UserError(f"{path}: expected a JSON list of objects")
    for i, row in enumerate(data):
        if not isinstance(row, dict):
            raise UserError(f"{path}[{i}]: expected a JSON object, got {type(row).__name__}")
        yield f"{path}[{i}]", row


def _saved(path: Path, spec: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    from datasets import DatasetDict, load_from_disk

    data = load_from_disk(str(path))
    if isinstance(data, DatasetDict):
        data = data[spec.get("split", "train")]
    for i, row in enumerate(data):
        yield f"{path}[{i}]", row


def _hub(spec: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    from datasets import load_dataset

    name = spec["path"]
    try:
        data = load_dataset(name, spec.get("subset"), split=spec.get("split", "train"))
    except Exception as e:  # offline, unknown name, ...: one clear message
        raise UserError(
            f"dataset '{name}': not a local file or folder, and the hub did not provide it "
            f"({type(e).__name__}); give a local path"
        ) from None
    for i, row in enumerate(data):
        yield f"{name}[{i}]", row
