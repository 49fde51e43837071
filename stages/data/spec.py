"""A dataset registry entry: `datasets.<name>` in the config, or an entry of a LLaMA-Factory
`dataset_info.json` (same field names, read as it is)."""

from __future__ import annotations

from dataclasses import dataclass, field

FORMATS = ("alpaca", "sharegpt", "openai", "text", "multiple_choice")


@dataclass
class DatasetSpec:
    # a local file or folder (relative to the directory the command runs in; `pkg://package/rel`
    # inside an installed package), or a hub dataset name when nothing local has that name
    path: str
    # None (LLaMA-Factory's entries without the key): read as the consuming stage reads it, as
    # LLaMA-Factory does: alpaca for chat stages, the `prompt` column (default `text`) as the
    # document for pt
    formatting: str | None = field(default=None, metadata={"choices": FORMATS})
    ranking: bool = False  # preference pairs (chosen / rejected)
    split: str = "train"
    subset: str | None = None
    folder: str | None = None
    num_samples: int | None = None  # take (or, when larger, repeat up to) this many rows
    # LLaMA-Factory column names: prompt, query, response, history, system, tools, messages,
    # chosen, rejected, kto_tag (each maps a canonical field to the file's own column name)
    columns: dict = field(default_factory=dict)
    # sharegpt / openai tags: role_tag, content_tag, user_tag, assistant_tag, observation_tag,
    # function_tag, system_tag
    tags: dict = field(default_factory=dict)
    description: str = field(default="", metadata={"volatile": True})
