"""Reconstruction tasks: autoencoders (dense, convolutional, denoising, sparse) and the VAE / beta-VAE,
with per-example anomaly scores from the reconstruction error, and sample grids from the VAE's prior."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from zoo.config import check_type
from zoo.models.autoencoder import bernoulli_nll, gaussian_kl, kl_sparsity
from zoo.registry import ZooError
from zoo.tasks import register_task, reports
from zoo.tasks.base import Batch, Task

LIKELIHOODS = ("bernoulli", "mse")


def _masked_sums(values: dict[str, jax.Array], mask: jax.Array) -> dict[str, jax.Array]:
  return {**{k: (v * mask).sum() for k, v in values.items()}, "count": mask.sum()}


def _score_report(scores: np.ndarray, labels: np.ndarray, workdir: Any, what: str) -> dict[str, Any]:
  """scores.npy (one anomaly score per test example, in order) and report.txt: the scores' mean and spread
  per class, and the most anomalous examples."""
  scores = np.asarray(scores, np.float64)
  np.save(Path(workdir) / "scores.npy", scores.astype(np.float32))
  lines = [f"anomaly score: {what}, per test example (scores.npy)", "", "class  count      mean       std"]
  if labels is not None and np.asarray(labels).ndim == 1:
    labels = np.asarray(labels)
    for c in np.unique(labels):
      s = scores[labels == c]
      lines.append(f"{int(c):5d}  {len(s):5d}  {s.mean():8.3f}  {s.std():8.3f}")
  lines.append(f"  all  {len(scores):5d}  {scores.mean():8.3f}  {scores.std():8.3f}")
  worst = np.argsort(-scores)[:10]
  lines += [
    "",
    "most anomalous test examples (index: score): " + ", ".join(f"{i}: {scores[i]:.2f}" for i in worst),
  ]
  (Path(workdir) / "report.txt").write_text("\n".join(lines) + "\n")
  return {"mean_score": float(scores.mean()), "max_score": float(scores.max())}


@dataclasses.dataclass(frozen=True)
class VAETask(Task):
  """The VAE's objective (Kingma & Welling 2014): the negative ELBO per example,
  -E_q[log p(x|z)] + beta KL(q(z|x) || N(0, I)), with one reparameterised sample of z per example (the
  'sample' stream; evaluation draws it from a fixed key, so the reported bound is reproducible).

  Batch: `input` (B, H, W, C) in [0, 1] (the 'scale' normalisation; binary pixels for a likelihood in the
  strict sense, e.g. the binarized_mnist dataset). Outputs: the VAE's dict (logits, mean, logvar, z).
  Metrics, in nats per example: loss (the beta-weighted objective), neg_elbo (beta = 1, the bound on
  -log p(x)), reconstruction (the expected negative log-likelihood) and kl. beta > 1 is the beta-VAE
  (Higgins et al. 2017). Predictions and the report: each test example's neg_elbo is its anomaly score.
  The end of a run writes samples.png: decoded means sigmoid(logits) of `num_samples` draws z ~ N(0, I).
  """

  beta: float = 1.0
  num_samples: int = 100

  rng_streams: ClassVar[tuple[str, ...]] = ("sample",)

  def _terms(self, outputs: dict[str, jax.Array], batch: Batch) -> dict[str, jax.Array]:
    if not isinstance(outputs, dict) or not {"logits", "mean", "logvar"} <= set(outputs):
      raise ZooError(
        "the vae task needs a VAE's outputs (a dict with logits, mean and logvar): a 'vae' model"
      )
    reconstruction = bernoulli_nll(outputs["logits"], batch["input"])
    kl = gaussian_kl(outputs["mean"], outputs["logvar"])
    return {
      "loss": reconstruction + self.beta * kl,
      "neg_elbo": reconstruction + kl,
      "reconstruction": reconstruction,
      "kl": kl,
    }

  def loss(self, outputs, batch):
    terms = {k: v.mean() for k, v in self._terms(outputs, batch).items()}
    return terms["loss"], terms

  def eval_metrics(self, outputs, batch):
    return _masked_sums(self._terms(outputs, batch), batch["mask"])

  def predictions(self, outputs, batch):
    return self._terms(outputs, batch)["neg_elbo"]

  def write_report(self, outputs, labels, workdir) -> dict:
    return _score_report(outputs, labels, workdir, "negative ELBO (nats)")

  def write_samples(self, model, variables, workdir, rng) -> dict:
    z = jax.random.normal(rng, (self.num_samples, model.latent_dim), jnp.float32)
    logits = model.apply(variables, z, method="decode")
    images = np.asarray(jax.nn.sigmoid(logits))
    path = reports.save_image_grid(images, Path(workdir) / "samples.png")
    return {"samples": path.name}


@dataclasses.dataclass(frozen=True)
class AutoencoderTask(Task):
  """Reconstruction for the (dense, convolutional, denoising, sparse) autoencoders: each example's error
  is the Bernoulli negative log-likelihood of its pixels given the reconstruction's logits ('bernoulli',
  inputs in [0, 1]) or the squared error summed over its values ('mse'); the loss is its batch mean plus,
  for a sparse autoencoder, `sparsity_weight` times kl_sparsity(code, sparsity_target) (the code must be
  in (0, 1): code_activation='sigmoid'). Denoising models corrupt their input from the 'sample' stream
  in training; the error is always against the clean input.

  Metrics: loss, reconstruction (mean error per example) and sparsity. Predictions and the report: each
  test example's error is its anomaly score (scores.npy, per-class means in report.txt).
  """

  likelihood: str = "bernoulli"
  sparsity_weight: float = 0.0
  sparsity_target: float = 0.05

  rng_streams: ClassVar[tuple[str, ...]] = ("sample",)

  def _errors(self, outputs, batch) -> jax.Array:
    if not isinstance(outputs, dict) or "reconstruction" not in outputs:
      raise ZooError("the autoencoder task needs an autoencoder's outputs (a dict with 'reconstruction')")
    x, r = batch["input"].astype(jnp.float32), outputs["reconstruction"]
    if self.likelihood == "bernoulli":
      return bernoulli_nll(r, x)
    return jnp.sum(jnp.square(r - x).reshape(x.shape[0], -1), axis=-1)

  def loss(self, outputs, batch):
    reconstruction = self._errors(outputs, batch).mean()
    metrics = {"reconstruction": reconstruction}
    loss = reconstruction
    if self.sparsity_weight:
      metrics["sparsity"] = kl_sparsity(outputs["code"], self.sparsity_target)
      loss = loss + self.sparsity_weight * metrics["sparsity"]
    return loss, {"loss": loss, **metrics}

  def eval_metrics(self, outputs, batch):
    errors = self._errors(outputs, batch)
    return _masked_sums({"loss": errors, "reconstruction": errors}, batch["mask"])

  def predictions(self, outputs, batch):
    return self._errors(outputs, batch)

  def write_report(self, outputs, labels, workdir) -> dict:
    what = "Bernoulli NLL (nats)" if self.likelihood == "bernoulli" else "squared error"
    return _score_report(outputs, labels, workdir, what)


def _positive_int(value, key: str) -> int:
  value = check_type(value, int, key)
  if value < 1:
    raise ZooError(f"{key} must be at least 1, got {value}")
  return value


@register_task
def vae(beta: float = 1.0, num_samples: int = 100) -> Task:
  """The VAE's negative ELBO (nats per example) with a beta-weighted KL term (beta = 1: Kingma & Welling;
  beta > 1: the beta-VAE); writes a grid of `num_samples` prior samples (samples.png) at the end.
  Inputs must be in [0, 1] (data.normalization='scale')."""
  beta = check_type(beta, float, "task.kwargs.beta")
  if not (math.isfinite(beta) and beta >= 0):
    raise ZooError(f"task.kwargs.beta must be finite and >= 0, got {beta}")
  return VAETask(beta=beta, num_samples=_positive_int(num_samples, "task.kwargs.num_samples"))


@register_task
def autoencoder(
  likelihood: str = "bernoulli", sparsity_weight: float = 0.0, sparsity_target: float = 0.05
) -> Task:
  """Reconstruction error ('bernoulli' NLL of inputs in [0, 1], or 'mse') per example, plus the sparse
  autoencoder's KL sparsity penalty when `sparsity_weight` > 0; anomaly scores in the report."""
  likelihood = check_type(likelihood, str, "task.kwargs.likelihood")
  if likelihood not in LIKELIHOODS:
    raise ZooError(f"task.kwargs.likelihood must be one of {', '.join(LIKELIHOODS)}; got {likelihood!r}")
  weight = check_type(sparsity_weight, float, "task.kwargs.sparsity_weight")
  target = check_type(sparsity_target, float, "task.kwargs.sparsity_target")
  if not weight >= 0:
    raise ZooError(f"task.kwargs.sparsity_weight must be >= 0, got {weight}")
  if not 0 < target < 1:
    raise ZooError(f"task.kwargs.sparsity_target must be in (0, 1), got {target}")
  return AutoencoderTask(likelihood=likelihood, sparsity_weight=weight, sparsity_target=target)
