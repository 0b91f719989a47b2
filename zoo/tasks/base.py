"""The interface every task implements."""

from __future__ import annotations

from typing import Any, ClassVar

import jax

Batch = dict[str, jax.Array]


class Task:
  """What is learned from a batch: the loss and the metrics.

  A batch is a dict of arrays with a leading batch axis; `batch["mask"]` (float, 1 for real examples,
  0 for padding) is present in evaluation batches. Subclasses implement `loss` and `eval_metrics`.

  Class attributes a task may set:
  - `rng_streams`: random streams the model draws from besides 'dropout' (a VAE's 'sample' for the
    reparameterisation, a GAN's latents). Training gives them a fresh key per step; evaluation a fixed key
    per batch, so that evaluation metrics are reproducible.
  - `players`: top-level parameter subtrees that each minimise their own loss (a GAN's 'generator' and
    'discriminator'). `loss` then returns a dict of scalar losses keyed by player; each player's gradient
    is that of its own loss with respect to its own subtree only (simultaneous gradient play), all in one
    compiled step, and each player has its own instance of the configured optimiser (own state).
  """

  rng_streams: ClassVar[tuple[str, ...]] = ()
  players: ClassVar[tuple[str, ...]] = ()

  def loss(self, outputs: Any, batch: Batch) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Mean training loss over the batch, and per-batch metrics (means) to log."""
    raise NotImplementedError

  def eval_metrics(self, outputs: Any, batch: Batch) -> dict[str, jax.Array]:
    """Metric *sums* over the batch's real examples (masked); the trainer adds them up and divides by
    the summed `count`."""
    raise NotImplementedError

  def predictions(self, outputs: Any, batch: Batch) -> Any:
    """What the end-of-run report receives per test example (compiled, on the device): the model's
    outputs by default; e.g. an anomaly score per example for a reconstruction task."""
    return outputs

  def summarize(self, means: dict[str, float]) -> dict[str, float]:
    """Turns the split's metric means (each `eval_metrics` sum divided by the summed count) into the
    reported metrics, for metrics that are not means themselves (e.g. R^2 from the means of y, y^2 and
    the squared error). Default: the means as they are."""
    return means

  def write_report(self, outputs: Any, labels: Any, workdir: Any) -> dict[str, Any]:
    """Writes the task's end-of-run report on the test split into `workdir` (host arrays, padding
    removed); returns a summary to add to the run's result. Default: nothing."""
    return {}

  def write_samples(self, model: Any, variables: dict[str, Any], workdir: Any, rng: jax.Array) -> dict:
    """Writes what a generative model makes (e.g. a sample grid) into `workdir` at the end of a run, from the
    trained `variables`; returns a summary to add to the run's report. Default: nothing."""
    return {}
