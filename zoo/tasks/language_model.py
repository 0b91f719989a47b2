"""Language modelling: next-token cross-entropy at every position of a sequence."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import optax

from zoo.registry import ZooError
from zoo.tasks.base import Batch, Task


@dataclasses.dataclass(frozen=True)
class LanguageModelTask(Task):
  """Batch: `input` (B, T) int32 tokens and `label` (B, T) int32, the next token at each position.
  Outputs: logits (B, T, V).

  The loss is the mean cross-entropy over all B * T positions, in nats per token (per character for a
  character model). Evaluation reports it with the per-token accuracy, bits per token (loss / ln 2) and the
  perplexity exp(loss), over every position of the split.
  """

  def _check(self, outputs: jax.Array, labels: jax.Array) -> None:
    if labels.ndim != 2 or outputs.shape[:2] != labels.shape:
      raise ZooError(
        f"the language_model task needs logits (B, T, V) and next-token labels (B, T); got logits "
        f"{outputs.shape} and labels {labels.shape} (a dataset of token windows, e.g. tiny_shakespeare)"
      )

  def loss(self, outputs: jax.Array, batch: Batch) -> tuple[jax.Array, dict[str, jax.Array]]:
    self._check(outputs, batch["label"])
    losses = optax.softmax_cross_entropy_with_integer_labels(outputs.astype(jnp.float32), batch["label"])
    loss = losses.mean()
    accuracy = (outputs.argmax(-1) == batch["label"]).mean()
    return loss, {"loss": loss, "accuracy": accuracy}

  def eval_metrics(self, outputs: jax.Array, batch: Batch) -> dict[str, jax.Array]:
    self._check(outputs, batch["label"])
    mask = batch["mask"][:, None] * jnp.ones(batch["label"].shape, jnp.float32)  # (B, T): padding rows 0
    losses = optax.softmax_cross_entropy_with_integer_labels(outputs.astype(jnp.float32), batch["label"])
    correct = (outputs.argmax(-1) == batch["label"]).astype(jnp.float32)
    return {"loss": (losses * mask).sum(), "accuracy": (correct * mask).sum(), "count": mask.sum()}

  def summarize(self, means: dict[str, float]) -> dict[str, float]:
    loss = means["loss"]
    return {**means, "bits_per_token": loss / math.log(2), "perplexity": math.exp(min(loss, 700.0))}
