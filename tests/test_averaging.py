"""Weight averaging: EMA and SWA against NumPy, BatchNorm statistics recomputed, and both in training."""

from __future__ import annotations

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zoo.config import AveragingConfig
from zoo.registry import ZooError
from zoo.train import averaging, train_and_evaluate
from zoo.train.checkpoint import Checkpointer


@pytest.mark.parametrize("warmup", [False, True])
def test_ema_matches_numpy(warmup):
  cfg = AveragingConfig(ema_decay=0.9, ema_warmup=warmup)
  rng = np.random.default_rng(0)
  weights = rng.normal(size=(6, 3))
  averages = averaging.init_averages(cfg, {"params": {"w": jnp.asarray(weights[0], jnp.float32)}})
  want = weights[0]
  for t in range(1, 6):
    averages = averaging.update_averages(
      cfg, averages, {"params": {"w": jnp.asarray(weights[t], jnp.float32)}}, jnp.int32(t), 100
    )
    d = min(0.9, (1 + t) / (10 + t)) if warmup else 0.9
    want = d * want + (1 - d) * weights[t]
    np.testing.assert_allclose(averages["ema"]["params"]["w"], want, rtol=1e-5)


def test_swa_averages_epoch_ends_after_the_start_epoch():
  cfg = AveragingConfig(swa_start_epoch=1)
  spe = 3
  rng = np.random.default_rng(1)
  weights = rng.normal(size=(13, 2))  # weights[t]: after step t
  averages = averaging.init_averages(cfg, {"params": jnp.asarray(weights[0], jnp.float32)})
  for t in range(1, 13):
    averages = averaging.update_averages(
      cfg, averages, {"params": jnp.asarray(weights[t], jnp.float32)}, jnp.int32(t), spe
    )
  # Epoch 1 (steps 1-3) is ordinary training; the ends of epochs 2, 3, 4 are steps 6, 9, 12.
  assert int(averages["swa_count"]) == 3
  np.testing.assert_allclose(averages["swa"], weights[[6, 9, 12]].mean(axis=0), rtol=1e-5)


def test_bad_settings_fail_clearly():
  with pytest.raises(ZooError, match="ema_decay must be between 0 and 1"):
    averaging.check(AveragingConfig(ema_decay=1.5))
  with pytest.raises(ZooError, match="not both"):
    averaging.check(AveragingConfig(ema_decay=0.99, swa_start_epoch=2))
  with pytest.raises(ZooError, match="need averaging.swa_start_epoch"):
    averaging.check(AveragingConfig(swa_lr=0.01))


class _NormThenDense(nn.Module):
  momentum: float

  @nn.compact
  def __call__(self, x, *, train=False):
    x = nn.BatchNorm(use_running_average=not train, momentum=self.momentum)(x)
    return nn.Dense(2)(nn.relu(x))


@pytest.mark.parametrize("momentum", [0.9, 0.99])
def test_batch_stats_are_the_mean_of_the_batch_statistics(momentum):
  """Whatever the layer's momentum, the recomputed running mean/var are the mean over the batches of each
  batch's mean/(biased) variance, as torch.optim.swa_utils.update_bn gives."""
  model = _NormThenDense(momentum)
  rng = np.random.default_rng(0)
  x = (rng.normal(size=(96, 3)) * [1.0, 2.0, 0.5] + [0.0, 3.0, -1.0]).astype(np.float32)
  variables = model.init(jax.random.key(0), jnp.asarray(x[:8]))
  batch, num_batches = 16, 4
  perm = jnp.asarray(rng.permutation(96))
  recompute = averaging.make_batch_stats_fn(model, lambda v: v, batch, num_batches)
  new = recompute(variables, {"input": jnp.asarray(x)}, perm)
  batches = np.asarray(x)[np.asarray(perm)[: batch * num_batches]].reshape(num_batches, batch, 3)
  stats = new["batch_stats"]["BatchNorm_0"]
  np.testing.assert_allclose(stats["mean"], batches.mean(axis=1).mean(axis=0), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(stats["var"], batches.var(axis=1).mean(axis=0), rtol=1e-4, atol=1e-5)
  assert _same(new["params"], variables["params"])


def _same(a, b):
  return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def test_training_with_ema_evaluates_the_average(tiny_config, tmp_path):
  config = tiny_config(epochs=3, model__kwargs={"hidden_sizes": (32,), "batch_norm": True})
  config.averaging.ema_decay = 0.9
  result = train_and_evaluate(config, tmp_path, progress=False)
  state = result["state"]
  ema = state.averages["ema"]
  assert set(ema) == {"params", "batch_stats"}
  assert not _same(ema["params"], state.params)
  from zoo.train.loop import _summarise, build, eval_batches
  from zoo.train.steps import make_eval_fn

  exp = build(config)
  evaluate = make_eval_fn(exp.model, exp.task, exp.preprocess)
  test = eval_batches(exp.dataset.x_test, exp.dataset.y_test, config.data.eval_batch_size)
  with_ema = _summarise(exp.task, evaluate(ema, test))
  assert with_ema == pytest.approx(result["test"])
  assert result["test"]["accuracy"] > 0.8


def test_training_with_swa_averages_the_epoch_ends(tiny_config, tmp_path):
  config = tiny_config(epochs=4, model__kwargs={"hidden_sizes": (32,), "batch_norm": True})
  config.averaging.swa_start_epoch = 1
  config.averaging.swa_lr = 3e-3
  config.keep_checkpoints = 10
  result = train_and_evaluate(config, tmp_path, progress=False)
  state = result["state"]
  spe = 256 // 32
  assert int(state.averages["swa_count"]) == 3
  checkpointer = Checkpointer(tmp_path / "checkpoints", keep=10)
  ends = [checkpointer.restore(state, e * spe).params for e in (2, 3, 4)]
  checkpointer.close()
  mean = jax.tree.map(lambda *w: sum(w) / 3, *ends)
  for got, want in zip(jax.tree.leaves(state.averages["swa"]), jax.tree.leaves(mean), strict=True):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  rates = [r["learning_rate"] for r in records if r["split"] == "train"]
  assert rates[0] == pytest.approx(1e-2) and rates[-1] == pytest.approx(3e-3)
  assert result["test"]["accuracy"] > 0.8
