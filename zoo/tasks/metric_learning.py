"""Metric learning of Siamese embeddings from labelled batches: the contrastive loss (Hadsell, Chopra & LeCun
2006) or the batch-hard triplet loss (Hermans, Beyer & Leibe 2017), scored by pair verification with LFW's
10-fold threshold protocol (Huang et al. 2007)."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from zoo.config import check_type
from zoo.models.siamese import batch_hard_triplet_loss, pairwise_distances, valid_anchors
from zoo.registry import ZooError, close_matches
from zoo.tasks import register_task
from zoo.tasks.base import Batch, Task

LOSSES = ("contrastive", "triplet")

# The sums `eval_metrics` returns (besides "count"), from which `summarize` forms the split's metrics.
_PAIR_SUMS = ("same_pairs", "different_pairs", "same_correct", "different_correct")
_DISTANCE_SUMS = ("same_distance", "different_distance")


# --- pairs within a batch -------------------------------------------------------------------------------


def _embeddings(outputs: Any) -> jax.Array:
  """Float32 (B, D) embeddings; checked at trace time from the shape."""
  if not hasattr(outputs, "ndim") or outputs.ndim != 2:
    shape = tuple(outputs.shape) if hasattr(outputs, "shape") else type(outputs).__name__
    raise ZooError(
      f"the metric_learning task needs one embedding vector per example, (B, D), but the model outputs "
      f"{shape}; use an embedding model such as model.name='siamese_cnn'"
    )
  return outputs.astype(jnp.float32)


def _labels(batch: Batch) -> jax.Array:
  labels = batch["label"]
  if not jnp.issubdtype(labels.dtype, jnp.integer) or labels.ndim != 1:
    raise ZooError(
      f"the metric_learning task forms pairs from integer class labels (B,), but the dataset holds "
      f"{labels.dtype} labels of shape {tuple(labels.shape)}"
    )
  return labels


def pair_masks(labels: jax.Array, mask: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """Every unordered pair {i, j} (i < j) of a batch's real examples, split by label: (same, different),
  each (B, B) bool, True on the strict upper triangle only (so each pair counts once). `mask` (B,): 1 real,
  0 padding."""
  b = labels.shape[0]
  real = jnp.ones((b,), bool) if mask is None else mask.astype(bool)
  pairs = jnp.triu(jnp.ones((b, b), bool), k=1) & real[:, None] & real[None, :]
  equal = labels[:, None] == labels[None, :]
  return pairs & equal, pairs & ~equal


def _balanced(same_value, same_count, different_value, different_count):
  """The mean of the same-label pairs' mean and the different-label pairs' mean: each kind of pair weighs
  half, however many of each a batch holds (a batch of 10 balanced digits has 9 different pairs per same
  one). A kind with no pairs is left out rather than divided by 0."""
  has_same, has_different = same_count > 0, different_count > 0
  # Counts may be means over a split (sums per example), below 1: only an absent kind is guarded.
  same_mean = jnp.where(has_same, same_value / jnp.where(has_same, same_count, 1.0), 0.0)
  different_mean = jnp.where(
    has_different, different_value / jnp.where(has_different, different_count, 1.0), 0.0
  )
  kinds = jnp.maximum(has_same.astype(jnp.float32) + has_different.astype(jnp.float32), 1.0)
  return (same_mean + different_mean) / kinds


def contrastive_pair_losses(embeddings: jax.Array, same: jax.Array, margin: float) -> jax.Array:
  """Hadsell et al.'s contrastive loss of every pair of rows of `embeddings` (B, D), as (B, B): D^2 / 2
  where `same` (B, B), max(0, margin - D)^2 / 2 elsewhere. The same values as
  zoo.models.siamese.contrastive_loss on pairs of rows, from the distance matrix: a batch of B never
  materialises its B^2 pairs of embedding vectors."""
  squared = pairwise_distances(embeddings, squared=True)
  push = jnp.square(jnp.maximum(margin - pairwise_distances(embeddings), 0.0))  # 0 gradient at D = 0.
  return 0.5 * jnp.where(same, squared, push)


# --- the task ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class MetricLearningTask(Task):
  """Batch: `input` (B, ...) and `label` (B,) int32, ordinary labelled batches. Outputs: embeddings (B, D).

  Pairs and triplets are formed inside each batch from the labels, so no pair dataset is needed:
  - 'contrastive' (Hadsell et al. 2006): every unordered pair i < j of the batch, B (B - 1) / 2 of them.
    Same-label pairs are pulled together (D^2 / 2), different-label ones pushed out to `margin`
    (max(0, margin - D)^2 / 2). The loss is the mean over same pairs and the mean over different pairs,
    averaged with weight 1/2 each: with 10 balanced digits a batch holds ~9 different pairs per same one,
    and an unweighted mean would mostly push apart.
  - 'triplet': the batch-hard triplet loss of Hermans et al. 2017 (not FaceNet's semi-hard triplets):
    every example is an anchor with the farthest same-label example as its positive and the nearest
    other-label example as its negative, max(0, D(a, p) - D(a, n) + margin) with D the Euclidean
    distance (not squared), averaged over the anchors that have both.

  Metrics (training batches and evaluation): `loss`; `accuracy`, the verification accuracy on the batch's
  pairs, balanced as the contrastive loss is ((true-same rate + true-different rate) / 2: the accuracy a
  half-same, half-different pair set would get), a pair being called "same" when D <= `threshold`;
  `same_distance` and `different_distance`, the mean D of each kind of pair. The default threshold is
  margin / 2 for the contrastive loss, half-way between where it pulls same pairs (0) and pushes
  different ones (margin). The triplet loss fixes only differences of distances, not their scale, so
  its default threshold is the batch's own midpoint between the mean same and mean different distance.
  Evaluation adds the pairs of each evaluation batch up over the split (exact ratios, via `summarize`).

  The headline is `write_report`: verification accuracy on a fixed set of balanced test pairs with the
  threshold chosen by 10-fold cross-validation, and ROC-AUC.
  """

  objective: str = "contrastive"
  margin: float = 1.0
  threshold: float | None = None
  report_pairs: int = 10_000
  report_folds: int = 10
  report_seed: int = 0

  def __post_init__(self):
    if self.objective not in LOSSES:
      matches = close_matches(str(self.objective), list(LOSSES))
      hint = f" (did you mean: {', '.join(matches)}?)" if matches else ""
      raise ZooError(f"task.kwargs.loss must be one of {', '.join(LOSSES)}; got {self.objective!r}{hint}")
    if not (math.isfinite(self.margin) and self.margin > 0):
      raise ZooError(f"task.kwargs.margin must be positive and finite, got {self.margin}")
    if self.threshold is not None and not (math.isfinite(self.threshold) and self.threshold > 0):
      raise ZooError(f"task.kwargs.threshold must be positive and finite (or None), got {self.threshold}")
    if self.report_folds < 2:
      raise ZooError(f"task.kwargs.report_folds must be at least 2, got {self.report_folds}")
    if self.report_pairs < 2 * self.report_folds:
      raise ZooError(
        f"task.kwargs.report_pairs={self.report_pairs} is too few for {self.report_folds} folds of same "
        f"and different pairs; give at least {2 * self.report_folds}"
      )

  def _pair_sums(self, outputs: Any, labels: jax.Array, mask: jax.Array | None) -> dict[str, jax.Array]:
    """Loss terms and verification counts of the batch's pairs, as sums (B, B reductions)."""
    embeddings = _embeddings(outputs)
    same, different = pair_masks(labels, mask)
    distances = pairwise_distances(embeddings)  # (B, B)
    sums = {
      "same_pairs": same.sum().astype(jnp.float32),
      "different_pairs": different.sum().astype(jnp.float32),
      "same_distance": jnp.where(same, distances, 0.0).sum(),
      "different_distance": jnp.where(different, distances, 0.0).sum(),
    }
    if self.threshold is not None:
      threshold = jnp.float32(self.threshold)
    elif self.objective == "contrastive":
      threshold = jnp.float32(self.margin / 2)
    else:
      means = [sums[f"{k}_distance"] / jnp.maximum(sums[f"{k}_pairs"], 1) for k in ("same", "different")]
      threshold = jax.lax.stop_gradient((means[0] + means[1]) / 2)
    called_same = distances <= threshold
    sums["same_correct"] = (same & called_same).sum().astype(jnp.float32)
    sums["different_correct"] = (different & ~called_same).sum().astype(jnp.float32)
    if self.objective == "contrastive":
      losses = contrastive_pair_losses(embeddings, same, self.margin)
      sums["same_loss"] = jnp.where(same, losses, 0.0).sum()
      sums["different_loss"] = jnp.where(different, losses, 0.0).sum()
    else:
      sums["triplet_loss"] = batch_hard_triplet_loss(embeddings, labels, self.margin, mask=mask).sum()
      sums["anchors"] = valid_anchors(labels, mask).sum().astype(jnp.float32)
    return sums

  def _metrics(self, sums: dict[str, Any]) -> dict[str, Any]:
    """loss, accuracy and the mean distances from pair sums (or from their means over a split)."""
    if self.objective == "contrastive":
      loss = _balanced(sums["same_loss"], sums["same_pairs"], sums["different_loss"], sums["different_pairs"])
    else:
      loss = sums["triplet_loss"] / jnp.maximum(sums["anchors"], 1e-12)
    same_pairs, different_pairs = sums["same_pairs"], sums["different_pairs"]
    return {
      "loss": loss,
      "accuracy": _balanced(sums["same_correct"], same_pairs, sums["different_correct"], different_pairs),
      "same_distance": sums["same_distance"] / jnp.maximum(same_pairs, 1e-12),
      "different_distance": sums["different_distance"] / jnp.maximum(different_pairs, 1e-12),
    }

  def loss(self, outputs: Any, batch: Batch) -> tuple[jax.Array, dict[str, jax.Array]]:
    metrics = self._metrics(self._pair_sums(outputs, _labels(batch), None))
    return metrics["loss"], metrics

  def eval_metrics(self, outputs: Any, batch: Batch) -> dict[str, jax.Array]:
    return {**self._pair_sums(outputs, _labels(batch), batch["mask"]), "count": batch["mask"].sum()}

  def summarize(self, means: dict[str, float]) -> dict[str, float]:
    """The split's ratios from its summed pairs (each sum arrives divided by the same example count,
    which cancels): the balanced loss and accuracy, and the mean distances."""
    return {k: float(v) for k, v in self._metrics({k: jnp.float32(v) for k, v in means.items()}).items()}

  def write_report(self, outputs, labels, workdir) -> dict:
    """report.txt and roc.png for a fixed seeded set of balanced test pairs (`sample_pairs`): verification
    accuracy with the threshold cross-validated over `report_folds` folds (`cross_validated_accuracy`),
    and ROC-AUC of the negated distance."""
    from zoo.tasks import reports

    embeddings = np.asarray(outputs, np.float64)
    if embeddings.ndim != 2:
      raise ZooError(f"metric_learning report: embeddings must be (N, D), got shape {embeddings.shape}")
    first, second, same, fold = sample_pairs(labels, self.report_pairs, self.report_folds, self.report_seed)
    distances = np.linalg.norm(embeddings[first] - embeddings[second], axis=1)
    accuracies, thresholds = cross_validated_accuracy(distances, same, fold)
    auc = reports.roc_auc(same, -distances)  # A smaller distance = more likely the same label.
    reports.save_roc_png(same, -distances, Path(workdir) / "roc.png")
    summary = {
      "verification_accuracy": float(accuracies.mean()),
      "verification_accuracy_std": float(accuracies.std(ddof=1)),
      "roc_auc": float(auc),
      "threshold": float(np.median(thresholds)),
      "pairs": len(same),
      "folds": self.report_folds,
    }
    lines = [
      f"pair verification on the test split: {len(same)} pairs ({int(same.sum())} same label, "
      f"{int((~same).sum())} different), seed {self.report_seed}",
      f"threshold on the distance chosen on {self.report_folds - 1} folds, scored on the held-out one "
      f"({self.report_folds}-fold cross-validation, as LFW's protocol)",
      "",
      f"{'fold':>4} {'threshold':>10} {'accuracy':>9}",
    ]
    lines += [
      f"{k:>4} {t:>10.4f} {a:>9.4f}" for k, (t, a) in enumerate(zip(thresholds, accuracies, strict=True))
    ]
    lines += [
      "",
      f"verification accuracy {summary['verification_accuracy']:.4f} "
      f"+- {summary['verification_accuracy_std']:.4f} (std over folds)",
      f"ROC-AUC {auc:.4f}",
      f"mean distance: same {distances[same].mean():.4f}, different {distances[~same].mean():.4f}",
    ]
    (Path(workdir) / "report.txt").write_text("\n".join(lines) + "\n")
    return summary


# --- the report's pairs and threshold ---------------------------------------------------------------------


def sample_pairs(
  labels: np.ndarray, num_pairs: int, folds: int = 10, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """A fixed, seeded set of balanced pairs of examples for verification.

  Half the pairs (num_pairs // 2) join two different examples of the same label: a uniform example of a
  label that has at least two, and a uniform other example of that label. The rest join a uniform
  example and a uniform example of another label. Each kind is dealt round-robin into `folds` folds, so
  every fold holds as many same pairs as the others (+-1), and as many different ones.

  Returns:
    first, second: (P,) int64 example indices; same: (P,) bool; fold: (P,) int64 in [0, folds).
  """
  labels = np.asarray(labels)
  if labels.ndim != 1:
    raise ZooError(f"pair sampling needs labels (N,), got shape {labels.shape}")
  classes, class_of, counts = np.unique(labels, return_inverse=True, return_counts=True)
  if len(classes) < 2 or counts.max() < 2:
    raise ZooError(
      f"verification pairs need at least two labels and a label with two examples; the {len(labels)} "
      f"test examples hold {len(classes)} label(s), at most {counts.max() if len(counts) else 0} of each"
    )
  rng = np.random.default_rng(seed)
  n_same, n_different = num_pairs // 2, num_pairs - num_pairs // 2
  order = np.argsort(class_of, kind="stable")  # The examples grouped by label, ...
  starts = np.cumsum(counts) - counts  # ... label c at order[starts[c] : starts[c] + counts[c]].
  rank = np.empty(len(labels), np.int64)
  rank[order] = np.arange(len(labels)) - starts[class_of[order]]  # An example's place in its group.

  # Same: j uniform among the other counts[c] - 1 members of i's label (skip i's own place).
  eligible = np.flatnonzero(counts[class_of] >= 2)
  first_same = rng.choice(eligible, n_same)
  c = class_of[first_same]
  offset = rng.integers(0, counts[c] - 1)
  offset += offset >= rank[first_same]
  second_same = order[starts[c] + offset]

  # Different: j uniform among the N - counts[c] examples outside i's label's group.
  first_different = rng.integers(0, len(labels), n_different)
  c = class_of[first_different]
  position = rng.integers(0, len(labels) - counts[c])
  position += (position >= starts[c]) * counts[c]
  second_different = order[position]

  first = np.concatenate([first_same, first_different]).astype(np.int64)
  second = np.concatenate([second_same, second_different]).astype(np.int64)
  same = np.concatenate([np.ones(n_same, bool), np.zeros(n_different, bool)])
  fold = np.concatenate([np.arange(n_same) % folds, np.arange(n_different) % folds]).astype(np.int64)
  return first, second, same, fold


def best_threshold(distances: np.ndarray, same: np.ndarray) -> float:
  """The distance threshold t with the highest accuracy of "same iff distance <= t" on these pairs, exactly
  (every cut between consecutive distinct distances is tried): the midpoint of the cut, -inf (all called
  different) or +inf (all called same). Of equally good cuts, the smallest."""
  distances, same = np.asarray(distances, np.float64), np.asarray(same, bool)
  order = np.argsort(distances, kind="stable")
  d, s = distances[order], same[order]
  # Cut k calls the k nearest pairs same: correct = same among them + different among the rest.
  same_below = np.concatenate([[0], np.cumsum(s)])
  different_below = np.arange(len(d) + 1) - same_below
  correct = same_below + (different_below[-1] - different_below)
  allowed = np.ones(len(d) + 1, bool)
  allowed[1:-1] = d[:-1] < d[1:]  # A cut inside a run of equal distances cannot be made.
  k = int(np.argmax(np.where(allowed, correct, -1)))
  if k == 0:
    return -math.inf
  if k == len(d):
    return math.inf
  return float((d[k - 1] + d[k]) / 2)


def cross_validated_accuracy(
  distances: np.ndarray, same: np.ndarray, fold: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
  """LFW's protocol: for each fold, the threshold that is best on the other folds (`best_threshold`), and
  the accuracy it scores on the fold. Returns (accuracies, thresholds), one per fold (sorted fold ids);
  the reported figure is the mean accuracy."""
  distances, same, fold = np.asarray(distances, np.float64), np.asarray(same, bool), np.asarray(fold)
  accuracies, thresholds = [], []
  for k in np.unique(fold):
    held_out = fold == k
    threshold = best_threshold(distances[~held_out], same[~held_out])
    accuracies.append(np.mean((distances[held_out] <= threshold) == same[held_out]))
    thresholds.append(threshold)
  return np.asarray(accuracies), np.asarray(thresholds)


# --- the registered factory -------------------------------------------------------------------------------


@register_task
def metric_learning(
  loss: str = "contrastive",
  margin: float = 1.0,
  threshold: float | None = None,
  report_pairs: int = 10_000,
  report_folds: int = 10,
  report_seed: int = 0,
) -> Task:
  """Embeddings (B, D) learned from the pairs (or triplets) of ordinary labelled batches; metrics: loss,
  in-batch pair verification accuracy, mean same/different distances; report: verification accuracy with
  a cross-validated threshold and ROC-AUC on balanced test pairs (see MetricLearningTask).

  Args:
    loss: 'contrastive' (Hadsell et al. 2006, all pairs of the batch, same and different pairs weighted
      equally) or 'triplet' (batch-hard, Hermans et al. 2017).
    margin: the contrastive loss's margin (different pairs are pushed out to it) or the triplet loss's
      (the nearest negative must be this much farther than the farthest positive); Euclidean distance.
    threshold: the distance at or below which the in-batch accuracy calls a pair "same"; None: margin / 2
      for 'contrastive', the batch's midpoint of mean same and mean different distance for 'triplet'.
    report_pairs: how many test pairs the report scores (half same label, half different).
    report_folds: the cross-validation folds the report's threshold is chosen with (LFW: 10).
    report_seed: the seed of the report's pairs (fixed: every run is scored on the same pairs).
  """
  return MetricLearningTask(
    objective=check_type(loss, str, "task.kwargs.loss"),
    margin=check_type(margin, float, "task.kwargs.margin"),
    threshold=check_type(threshold, float | None, "task.kwargs.threshold"),
    report_pairs=check_type(report_pairs, int, "task.kwargs.report_pairs"),
    report_folds=check_type(report_folds, int, "task.kwargs.report_folds"),
    report_seed=check_type(report_seed, int, "task.kwargs.report_seed"),
  )


__all__ = [
  "LOSSES",
  "MetricLearningTask",
  "best_threshold",
  "contrastive_pair_losses",
  "cross_validated_accuracy",
  "metric_learning",
  "pair_masks",
  "sample_pairs",
]
