"""TRL's preference trainers, fed the rows our data nodes already tokenized through the chat
template. Each subclass only skips TRL's own prompt extraction and tokenization (which would
re-render text we no longer have); losses, collators, reference handling and metrics are TRL's.

Imported only from a stage's run(): it imports torch and TRL (experimental ORPO / CPO silenced).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

import torch

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

# the config classes are re-exported: the stages pass them to fine_tune beside these trainers
from trl import DPOConfig, DPOTrainer, KTOConfig, KTOTrainer  # noqa: E402
from trl.experimental.cpo import CPOConfig as CPOConfig  # noqa: E402
from trl.experimental.cpo import CPOTrainer  # noqa: E402
from trl.experimental.orpo import ORPOConfig as ORPOConfig  # noqa: E402
from trl.experimental.orpo import ORPOTrainer  # noqa: E402

from stages.model.shared_prompt import share_prompts, unsupported  # noqa: E402

IGNORE = -100
log = logging.getLogger("pipelines.stage")


@dataclass
class SharedPromptDPOConfig(DPOConfig):
    """TRL's DPOConfig, plus whether pairs run packed, [prompt | chosen | rejected] (stages/
    model/shared_prompt.py): the same losses and log-probabilities, the prompt computed once."""

    shared_prompt: bool = field(default=True, metadata={"help": "Pack each pair, prompt once."})


class TokenizedDPOTrainer(DPOTrainer):
    """DPO on rows of prompt_ids / chosen_ids / rejected_ids (the `pairs` node's), as they are;
    TRL's DataCollatorForPreference pads them. With `shared_prompt`, the policy's and the
    reference's forwards run packed pairs."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        drop_fresh_reference(self.accelerator.unwrap_model(self.model))
        if getattr(self.args, "shared_prompt", False):
            self._share_prompts()

    def _prepare_dataset(self, dataset: Any, processing_class: Any, args: Any, name: str) -> Any:
        return dataset

    def _share_prompts(self) -> None:
        """Wrap the causal LMs TRL gave a fused head (the policy's, under its PEFT wrapper, and
        an explicit reference); a model that cannot take the packed mask keeps TRL's rows."""
        policy = self.accelerator.unwrap_model(self.model)
        models = [policy.get_base_model() if hasattr(policy, "get_base_model") else policy]
        if self.ref_model is not None:
            models.append(self.accelerator.unwrap_model(self.ref_model))
        for model in models:
            problem = unsupported(model)
            if problem:
                log.info("shared_prompt off (%s): each reply runs in its own row", problem)
                return
        for model in models:
            share_prompts(model)


def drop_fresh_reference(model: Any) -> bool:
    """TRL copies a PEFT policy's adapter into a frozen "ref" adapter that scores the reference.
    A fresh LoRA adapter (every lora_B zero) adds exactly nothing to its layers, so that copy is
    dropped and TRL disables the adapters instead: the same values, without running the copy.
    A continued adapter, DoRA magnitudes or any other copied module keep the copy."""
    if "ref" not in (getattr(model, "peft_config", None) or {}):
        return False
    copied = {n: p for n, p in model.named_parameters() if ".ref." in n}
    if not copied or any(".lora_A.ref." not in n and ".lora_B.ref." not in n for n in copied):
        return False
    if any(p.any() for n, p in copied.items() if ".lora_B.ref." in n):
        return False
    model.delete_adapter("ref")
    return True


@dataclass
class SequentialKTOConfig(KTOConfig):
    """KTO's KL term scores each reply after its neighbour's prompt within a batch, so batches
    keep the dataset's order (shuffled once by the stage); the shared training arguments sample
    randomly otherwise."""

    def __post_init__(self) -> None:
        self.train_sampling_strategy = "sequential"
        super().__post_init__()


class TokenizedKTOTrainer(KTOTrainer):
    """KTO on rows of prompt_ids / completion_ids / label (the `kto_data` node's). Only the
    mismatched KL completions are added, exactly as TRL does: rotated by one within each batch."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        drop_fresh_reference(self.accelerator.unwrap_model(self.model))

    def _prepare_dataset(self, dataset: Any, processing_class: Any, args: Any, name: str) -> Any:
        if not self.calculate_KL:
            return dataset

        def rotate(batch: dict[str, list]) -> dict[str, list]:
            replies = batch["completion_ids"]
            return {**batch, "KL_completion_ids": [replies[-1], *replies[:-1]]}

        return dataset.map(rotate, batched=True, batch_size=args.per_device_train_batch_size)


class _Pretokenized:
    """ORPO / CPO map `tokenize_row` over prompt / chosen / rejected text: our rows arrive in its
    output format already (`paired_rows`)."""

    def tokenize_row(self, feature: dict[str, Any], model: Any = None) -> dict[str, Any]:
        return feature

    def _track_num_input_tokens(self, inputs: dict[str, Any]) -> None:
        """Batches hold chosen_ / rejected_ sequences, no input_ids: count their real tokens
        (a transformers hook; were it renamed, tokens_seen would read 0)."""
        real = sum(inputs[f"{side}_attention_mask"].sum() for side in ("chosen", "rejected"))
        real = torch.as_tensor(real, device=self.args.device, dtype=torch.int64)
        self.state.num_input_tokens_seen += int(self.accelerator.gather(real).sum().item())


class TokenizedORPOTrainer(_Pretokenized, ORPOTrainer):
    pass


class TokenizedCPOTrainer(_Pretokenized, CPOTrainer):
    pass


def paired_rows(data: Any) -> Any:
    """`pairs` rows -> what ORPO / CPO's tokenize_row returns: prompt ids, and for each side the
    whole sequence with its attention mask and labels (prompt positions ignored). No BOS or EOS
    is added: the chat template rendered the sequence exactly as it is served."""
    if data is None:
        return None

    def convert(row: dict[str, Any]) -> dict[str, Any]:
        prompt = row["prompt_ids"]
        out = {"prompt_input_ids": prompt, "prompt_attention_mask": [1] * len(prompt)}
        for side in ("chosen", "rejected"):
            reply = row[f"{side}_ids"]
            out[f"{side}_input_ids"] = prompt + reply
            out[f"{side}_attention_mask"] = [1] * (len(prompt) + len(reply))
            out[f"{side}_labels"] = [IGNORE] * len(prompt) + reply
        return out

    kept = [c for c in data.column_names if c != "length"]  # group_by_length's column stays
    return data.map(convert, remove_columns=kept)
