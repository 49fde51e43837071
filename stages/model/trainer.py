"""The Trainer our training stages use: the transformers Trainer, with logits computed only at the
positions whose next token is trained.

In SFT most positions are prompt (system prompt, instruction, template markers) and carry no
label, yet a causal LM projects every position onto the whole vocabulary (49k columns for
SmolLM2) and keeps those logits, in fp32, for the backward pass. Selecting the trained positions
before the output projection gives the same loss and gradients for a fraction of that work.
"""

from __future__ import annotations

from typing import Any

from transformers import Trainer

from stages.data.encode import IGNORE

# config attributes that change logits after the output projection: such models use the
# model's own forward
LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "output_multiplier_scale")


class SparseLogitsTrainer(Trainer):
    def compute_loss(
        self,
        model: Any,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        causal = _plain_causal_lm(self, model)
        # the Trainer scales a loss for gradient accumulation as it would the model's own, which
        # normalises by num_items_in_batch only when the model accepts loss kwargs
        own = return_outputs or not self.model_accepts_loss_kwargs or not model.training
        if own or causal is None or "labels" not in inputs:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        with self.accelerator.autocast():  # what the prepared model's forward would run under
            loss = sparse_loss(causal, inputs, num_items_in_batch)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes  # as the Trainer scales a model's loss
        return loss

    def get_eval_dataloader(self, eval_dataset: Any = None) -> Any:
        """Evaluation batches stay padded (a collator's `padded` form): the Trainer weights each
        batch's mean loss by its number of rows, which a padding-free batch would change."""
        collator = self.data_collator
        self.data_collator = getattr(collator, "padded", collator)
        try:
            return super().get_eval_dataloader(eval_dataset)
        finally:
            self.data_collator = collator

    def _track_num_input_tokens(self, inputs: dict[str, Any]) -> None:
        """Neat-packed and padding-free batches carry no attention mask, and the Trainer would
        count tokens equal to the pad id as padding (SmolLM2 pads with its end-of-turn token):
        count them here.
        (A transformers hook; were it renamed, the Trainer's own count applies.)"""
        neat = "position_ids" in inputs and "attention_mask" not in inputs
        if not neat or self.args.include_num_input_tokens_seen != "non_padding":
            return super()._track_num_input_tokens(inputs)
        import torch

        pad_id = getattr(self.processing_class, "pad_token_id", None) or 0
        real = torch.as_tensor(packed_tokens(inputs, pad_id), device=self.args.device)
        self.state.num_input_tokens_seen += int(self.accelerator.gather(real).sum().item())


def _plain_causal_lm(trainer: Trainer, model: Any) -> Any:
    """The causal LM under `model` when its logits are a plain projection of the decoder's last
    hidden state and nothing wraps it (a DDP wrapper must see the forward call); else None."""
    if trainer.accelerator.unwrap_model(model) is not model or trainer.args.use_liger_kernel:
        return None
    causal = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not hasattr(causal, "get_decoder") or causal.get_output_embeddings() is None:
        return None
    config = causal.config
    if any(getattr(config, name, None) not in (None, 1, 1.0) for name in LOGIT_TRANSFORMS):
        return None
    return causal


def sparse_loss(causal: Any, inputs: dict[str, Any], num_items_in_batch: Any = None) -> Any:
    """Next-token cross-entropy over the trained positions only: summed, then divided by
    `num_items_in_batch` (the trained tokens of the whole accumulated batch) when given, else
    averaged, exactly as the model's own loss is."""
    import torch.nn.functional as F

    labels = inputs["labels"]
    rest = {k: v for k, v in inputs.items() if k != "labels"}
    hidden = causal.get_decoder()(**rest, use_cache=False).last_hidden_state
    targets = labels[:, 1:]
    keep = targets != IGNORE
    logits = causal.get_output_embeddings()(hidden[:, :-1][keep]).float()
    total = F.cross_entropy(logits, targets[keep], reduction="sum")
    if num_items_in_batch is None:
        return total / keep.sum().clamp(min=1)
    return total / num_items_in_batch


def packed_tokens(inputs: dict[str, Any], pad_id: int) -> int:
    """Real tokens of a neat-packed or padding-free batch: a row's padding is its last segment
    (position ids restart at 0) when that segment is all pad ids with no label; no real example
    is (and a padding-free row has no padding)."""
    total = 0
    for ids, pos, labels in zip(
        inputs["input_ids"], inputs["position_ids"], inputs["labels"], strict=True
    ):
        last = int((pos == 0).nonzero()[-1])
        tail = ids[last:]
        padding = bool((tail == pad_id).all() and (labels[last:] == IGNORE).all())
        total += last if padding else len(ids)
    return total
