"""Adversarial training (Goodfellow et al. 2014): generator and discriminator each minimise their own loss;
one-sided label smoothing (Salimans et al. 2016); a sample grid and samples to score at the end."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from zoo.config import check_type
from zoo.models import gan as gan_lib
from zoo.registry import ZooError
from zoo.tasks import register_task, reports
from zoo.tasks.base import Batch, Task

GENERATOR_LOSSES = ("non_saturating", "minimax")
OUTPUT_KEYS = ("fake", "real_logits", "fake_logits")
SAMPLE_BATCH = 500  # generator batch for samples.npz: one compilation, bounded memory


@dataclasses.dataclass(frozen=True)
class GANTask(Task):
  """Two players on a GAN model's outputs dict(fake, real_logits, fake_logits) (zoo.models.gan.GAN), its
  latents z from the 'sample' stream; real images must be in the generator's output range ([-1, 1] for
  tanh: data.normalization='symmetric'; [0, 1] for sigmoid: 'scale').

  Per example, with r, f the logits of a real and a fake image (D = sigmoid):
  - the discriminator's loss -log D(x) - log(1 - D(G(z))) = softplus(-r) + softplus(f); with one-sided
    label smoothing s the real target is 1 - s, which adds s r;
  - the generator's 'non_saturating' loss -log D(G(z)) = softplus(-f) (Goodfellow et al.'s practical
    choice), or the 'minimax' game's log(1 - D(G(z))) = -softplus(f), which saturates while D wins.
  `loss` returns {"generator": mean g, "discriminator": mean d}; the trainer takes each player's gradient
  of its own loss w.r.t. its own parameters in one step. Metrics: loss (d_loss + g_loss), d_loss, g_loss,
  d_real_accuracy (r > 0), d_fake_accuracy (f < 0), accuracy (D's on the pair: their mean), d_real (mean
  D(x)), d_fake (mean D(G(z))).
  Evaluation reports the unsmoothed d_loss, as classification reports the unsmoothed cross-entropy.

  At the end: samples.png, a grid of `num_samples` images from the fixed latent `fixed_latent` (the same
  z in every run, to compare runs), and samples.npz ("images": `saved_samples` images (N, H, W, C) uint8,
  from latents of the run's sample key) for zoo.train.sample_score.
  """

  generator_loss: str = "non_saturating"
  label_smoothing: float = 0.0
  num_samples: int = 100
  saved_samples: int = 10_000

  rng_streams: ClassVar[tuple[str, ...]] = ("sample",)
  players: ClassVar[tuple[str, ...]] = ("generator", "discriminator")

  def _terms(self, outputs: Any, smoothing: float) -> dict[str, jax.Array]:
    """Per-example (B,) float32 losses and discriminator statistics."""
    if not isinstance(outputs, dict) or any(k not in outputs for k in OUTPUT_KEYS):
      raise ZooError(
        "task 'gan' needs a GAN model (kind 'gan': mlp_gan, dcgan, ...) whose outputs are "
        f"dict({', '.join(OUTPUT_KEYS)}), not {type(outputs).__name__} outputs"
      )
    real = outputs["real_logits"].astype(jnp.float32)
    fake = outputs["fake_logits"].astype(jnp.float32)
    # (1 - s) softplus(-r) + s softplus(r) = softplus(-r) + s r, since softplus(r) - softplus(-r) = r.
    d = gan_lib.discriminator_loss(real, fake) + smoothing * real
    g = gan_lib.generator_loss(fake) if self.generator_loss == "non_saturating" else -jax.nn.softplus(fake)
    return {
      "loss": d + g,
      "d_loss": d,
      "g_loss": g,
      "d_real_accuracy": (real > 0).astype(jnp.float32),
      "d_fake_accuracy": (fake < 0).astype(jnp.float32),
      "accuracy": ((real > 0).astype(jnp.float32) + (fake < 0).astype(jnp.float32)) / 2,
      "d_real": jax.nn.sigmoid(real),
      "d_fake": jax.nn.sigmoid(fake),
    }

  def loss(self, outputs: Any, batch: Batch) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
    metrics = {k: v.mean() for k, v in self._terms(outputs, self.label_smoothing).items()}
    return {"generator": metrics["g_loss"], "discriminator": metrics["d_loss"]}, metrics

  def eval_metrics(self, outputs: Any, batch: Batch) -> dict[str, jax.Array]:
    mask = batch["mask"]
    sums = {k: (v * mask).sum() for k, v in self._terms(outputs, 0.0).items()}
    return {**sums, "count": mask.sum()}

  def predictions(self, outputs: Any, batch: Batch) -> dict[str, jax.Array]:
    # The end-of-run report needs no fakes: keep the test split's 10,000 images off the host.
    return {k: outputs[k] for k in ("real_logits", "fake_logits")}

  def write_samples(self, model: Any, variables: dict[str, Any], workdir: Any, rng: jax.Array) -> dict:
    """samples.png (a grid of `num_samples` from the fixed latent) and samples.npz (`saved_samples`)."""
    workdir = Path(workdir)
    latent_dim, noise = model.latent_dim, model.noise
    generate = jax.jit(lambda variables, z: model.apply(variables, z, method="generate"))
    to_unit = _to_unit_range(getattr(model, "output", "tanh"))
    grid = to_unit(np.asarray(generate(variables, gan_lib.fixed_latent(self.num_samples, latent_dim, noise))))
    path = reports.save_image_grid(grid, workdir / "samples.png")
    summary: dict[str, Any] = {"samples": path.name}
    if self.saved_samples:
      chunks = []
      for i, start in enumerate(range(0, self.saved_samples, SAMPLE_BATCH)):
        z = gan_lib.sample_latent(jax.random.fold_in(rng, i), SAMPLE_BATCH, latent_dim, noise)
        images = to_unit(np.asarray(generate(variables, z)))[: self.saved_samples - start]
        chunks.append(np.round(images * 255).astype(np.uint8))
      np.savez_compressed(workdir / "samples.npz", images=np.concatenate(chunks))
      summary.update(samples_npz="samples.npz", saved_samples=self.saved_samples)
    return summary


def _to_unit_range(output: str):
  """Maps generated images to [0, 1]: tanh's [-1, 1] by (x + 1) / 2, sigmoid's as they are."""
  if output == "sigmoid":
    return lambda x: np.clip(x, 0.0, 1.0)
  return lambda x: np.clip((x + 1.0) / 2.0, 0.0, 1.0)


def _count(value: Any, key: str, minimum: int) -> int:
  value = check_type(value, int, key)
  if value < minimum:
    raise ZooError(f"{key} must be at least {minimum}, got {value}")
  return value


@register_task
def gan(
  generator_loss: str = "non_saturating",
  label_smoothing: float = 0.0,
  num_samples: int = 100,
  saved_samples: int = 10_000,
) -> Task:
  """A GAN's two players (model kind 'gan'), each minimising its own loss; at the end a sample grid
  (samples.png) and samples to score (samples.npz). Real inputs in the generator's range: for tanh,
  data.normalization='symmetric'.

  Args:
    generator_loss: 'non_saturating' (-log D(G(z)), the default) or 'minimax' (log(1 - D(G(z)))).
    label_smoothing: one-sided: the discriminator's real targets are 1 - label_smoothing (fakes stay 0).
    num_samples: images in samples.png, from a fixed latent.
    saved_samples: images in samples.npz (uint8), for `python -m zoo score-samples`; 0 writes none.
  """
  generator_loss = check_type(generator_loss, str, "task.kwargs.generator_loss")
  if generator_loss not in GENERATOR_LOSSES:
    raise ZooError(
      f"task.kwargs.generator_loss must be one of {', '.join(GENERATOR_LOSSES)}; got {generator_loss!r}"
    )
  label_smoothing = check_type(label_smoothing, float, "task.kwargs.label_smoothing")
  if not 0 <= label_smoothing < 1:
    raise ZooError(f"task.kwargs.label_smoothing must be in [0, 1), got {label_smoothing}")
  return GANTask(
    generator_loss=generator_loss,
    label_smoothing=label_smoothing,
    num_samples=_count(num_samples, "task.kwargs.num_samples", 1),
    saved_samples=_count(saved_samples, "task.kwargs.saved_samples", 0),
  )
