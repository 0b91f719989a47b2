"""Scoring a generator's samples with a trained zoo classifier: the share it labels confidently, the spread of
its labels (histogram entropy), and the Inception Score (Salimans et al. 2016) with that classifier."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from zoo.registry import ZooError
from zoo.train.restore import Run, load_run
from zoo.train.steps import normalizer

DEFAULT_THRESHOLD = 0.9
SCORE_FILE = "sample_score.json"


def score_probabilities(probabilities: np.ndarray, threshold: float = DEFAULT_THRESHOLD) -> dict[str, Any]:
  """Scores of samples from their classifier probabilities (N, K) (rows summing to 1).

  Returns:
    num_samples N; confident_share, the share of samples whose top probability is >= `threshold`;
    mean_max_probability; histogram, the K counts of predicted (argmax) classes; histogram_entropy_nats
    and _bits, the entropy of those counts' shares (0 when every sample gets one class; at most
    max_entropy_nats = ln K, all classes equally often); classifier_score, exp(E_x KL(p(y|x) || p(y)))
    with p(y) the mean of p(y|x): the Inception Score's formula in one split, between 1 and K (high when
    each sample is classified confidently and the classes are spread evenly).
  """
  p = np.asarray(probabilities, np.float64)
  if p.ndim != 2 or p.shape[0] == 0 or p.shape[1] < 2:
    raise ZooError(f"scoring needs probabilities (N, K) of N >= 1 samples and K >= 2 classes, got {p.shape}")
  if not 0 <= threshold <= 1:
    raise ZooError(f"the confidence threshold must be in [0, 1], got {threshold}")
  n, k = p.shape
  top = p.max(axis=1)
  histogram = np.bincount(p.argmax(axis=1), minlength=k)
  shares = histogram[histogram > 0] / n
  entropy = float((shares * np.log(1 / shares)).sum())  # (not -sum p log p: no -0.0 for one class)
  marginal = p.mean(axis=0)
  # 0 log 0 = 0: a class a sample gives no probability adds nothing to its KL (where p > 0, marginal > 0).
  with np.errstate(divide="ignore", invalid="ignore"):
    kl = np.where(p > 0, p * np.log(p / marginal), 0.0).sum(axis=1)  # (N,)
  return {
    "num_samples": int(n),
    "threshold": float(threshold),
    "confident_share": float((top >= threshold).mean()),
    "mean_max_probability": float(top.mean()),
    "histogram": [int(c) for c in histogram],
    "histogram_entropy_nats": entropy,
    "histogram_entropy_bits": entropy / math.log(2),
    "max_entropy_nats": math.log(k),
    "classifier_score": float(np.exp(kl.mean())),
  }


def classifier_probabilities(run: Run, images: np.ndarray, batch_size: int = 1000) -> np.ndarray:
  """The softmax (N, K) float32 of a classifier run on raw images (N, H, W, C) (pixel values as its dataset
  held them, e.g. uint8 0..255), normalised as in its training (model.json's mean and std), in eval mode."""
  if run.card.get("tokens") or run.config.task.name != "classification":
    raise ZooError(
      f"{run.workdir} is not an image classifier's run (task {run.config.task.name!r}): score samples "
      "with one, e.g. `python train.py --config mnist_cnn --workdir runs/mnist_cnn`"
    )
  images = np.asarray(images)
  if images.ndim == 3:  # (N, H, W): one channel
    images = images[..., None]
  if images.ndim != 4 or len(images) == 0:
    raise ZooError(f"samples must be images (N, H, W, C) with N >= 1, got shape {images.shape}")
  preprocess = normalizer(run.card["mean"], run.card["std"])
  model, variables = run.model, run.variables

  @jax.jit
  def predict(x):
    return jax.nn.softmax(model.apply(variables, preprocess(x), train=False).astype(jnp.float32), axis=-1)

  size = min(batch_size, len(images))
  example = jax.ShapeDtypeStruct((size, *images.shape[1:]), images.dtype)
  try:
    shape = jax.eval_shape(predict, example).shape
  except Exception as e:  # noqa: BLE001 - any failure here is the classifier rejecting the images' shape.
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise ZooError(
      f"the classifier in {run.workdir} ({run.card['model']}) cannot take samples of shape "
      f"{images.shape[1:]}: {type(e).__name__}: {first}"
    ) from e
  if len(shape) != 2:
    raise ZooError(f"the classifier in {run.workdir} gives outputs {shape}, not class logits (B, K)")
  # Fixed-size batches (the last one padded) compile once.
  padded = np.concatenate([images, np.zeros((-len(images) % size, *images.shape[1:]), images.dtype)])
  out = [np.asarray(predict(padded[i : i + size])) for i in range(0, len(padded), size)]
  return np.concatenate(out)[: len(images)]


def score_samples(
  images_uint8: np.ndarray, classifier_workdir: str | Path, *, threshold: float = DEFAULT_THRESHOLD
) -> dict[str, Any]:
  """Scores generated images (N, H, W, C) uint8 with the classifier trained in `classifier_workdir` (its
  newest checkpoint, via zoo.train.restore.load_run): see `score_probabilities`.

  Args:
    images_uint8: samples as pixel values 0..255 (e.g. samples.npz's "images" written by task 'gan').
    classifier_workdir: a classification run on images of that shape, e.g. of config mnist_cnn.
    threshold: the top probability at which a sample counts as confidently classified.
  """
  images = np.asarray(images_uint8)
  if images.dtype != np.uint8:
    raise ZooError(f"samples must be uint8 pixel values (0..255), got dtype {images.dtype}")
  run = load_run(classifier_workdir)
  return score_probabilities(classifier_probabilities(run, images), threshold)


def score_samples_file(
  samples: str | Path,
  classifier_workdir: str | Path,
  *,
  threshold: float = DEFAULT_THRESHOLD,
  out: str | Path | None = None,
) -> dict[str, Any]:
  """`score_samples` on a samples.npz file (key "images"), written as JSON to `out` (default:
  sample_score.json beside the samples) with the paths of both inputs; returns what it wrote."""
  samples = Path(samples)
  if not samples.is_file():
    raise ZooError(f"no samples file {samples}: a run of task 'gan' writes samples.npz into its workdir")
  with np.load(samples) as data:
    if "images" not in data:
      raise ZooError(f"{samples} holds {sorted(data)}, not the 'images' a run of task 'gan' writes")
    images = data["images"]
  score = {
    "samples": str(samples),
    "classifier": str(classifier_workdir),
    **score_samples(images, classifier_workdir, threshold=threshold),
  }
  path = Path(out) if out is not None else samples.with_name(SCORE_FILE)
  path.write_text(json.dumps(score, indent=2) + "\n")
  return score


def format_score(score: dict[str, Any]) -> str:
  """A few lines for people: the share, the histogram and its entropy, the classifier score."""
  return "\n".join(
    [
      f"samples: {score['num_samples']}",
      f"confidently classified (max p >= {score['threshold']:g}): {score['confident_share']:.4f}"
      f" (mean max p {score['mean_max_probability']:.4f})",
      f"class histogram: {' '.join(str(c) for c in score['histogram'])}",
      f"histogram entropy: {score['histogram_entropy_nats']:.4f} nats ({score['histogram_entropy_bits']:.4f}"
      f" bits; uniform: {score['max_entropy_nats']:.4f} nats)",
      f"classifier score (Inception Score formula): {score['classifier_score']:.3f}"
      f" (of at most {len(score['histogram'])})",
    ]
  )
