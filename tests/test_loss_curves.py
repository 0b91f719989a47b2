"""Fixed-seed loss curves of small members of the benchmarked families (benchmarks/speed.py), against curves
recorded in tests/data/loss_curves.json: a speed change to a layer, the train step or XLA's options must
keep the numerics, so these curves may move by float rounding only.

Each curve is the loss of 6 training steps of the zoo's own train step (zoo.train.loop.build /
initial_state / make_step, AdamW) on fixed random data. After a deliberate change of the numerics, rewrite
the file with `python tests/test_loss_curves.py --record` and say why in the commit.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

RECORDED = Path(__file__).parent / "data" / "loss_curves.json"
STEPS = 6
VOCAB = "".join(chr(32 + i) for i in range(65))

# name: (model, kwargs, batch size, example shape or sequence length)
CURVES = {
  "mlp": ("mlp", dict(hidden_sizes=(64, 64)), 32, (784,)),
  "cnn": ("bn_cnn", dict(features=(8, 16), convs_per_stage=1, hidden=32, norm="none", dropout=0.0),
          16, (28, 28, 1)),
  "bn_cnn": ("bn_cnn", dict(features=(8, 16), hidden=32, dropout=0.0), 16, (28, 28, 1)),
  "vit": ("vit_tiny_p7", dict(depth=2), 8, (28, 28, 1)),
  "lstm": ("char_lstm", dict(num_layers=1, embed_dim=16, hidden_size=32), 8, 16),
  "gpt": ("gpt_tiny", dict(dropout=0.0, attention_dropout=0.0), 4, 32),
}  # fmt: skip


def loss_curve(name: str) -> list[float]:
  from zoo.config import Config
  from zoo.data.datasets import Dataset
  from zoo.train import loop
  from zoo.train import parallel as parallel_lib

  model, kwargs, batch, shape = CURVES[name]
  rng = np.random.default_rng(0)
  n = 2 * batch
  c = Config()
  c.model.name, c.model.kwargs = model, kwargs
  c.data.name, c.data.batch_size, c.data.normalization = "random", batch, "none"
  c.optimizer.name, c.optimizer.learning_rate, c.optimizer.weight_decay = "adamw", 3e-3, 0.01
  c.schedule.name, c.steps = "constant", STEPS
  if isinstance(shape, int):  # a language model over `shape` tokens
    text = rng.integers(0, len(VOCAB), (n, shape + 1), dtype=np.int32)
    x, y = text[:, :-1], text[:, 1:]
    ds = Dataset("random", x, y, x, y, len(VOCAB), 1.0, tokens=True, vocab=VOCAB)
    c.task.name = "language_model"
  else:
    x = rng.standard_normal((n, *shape), dtype=np.float32)
    y = rng.integers(0, 10, n, dtype=np.int32)
    ds = Dataset("random", x, y, x, y, 10, 1.0)
  exp = loop.build(c, ds)
  par = parallel_lib.create(c.parallel)
  init_rng, data_rng, dropout_rng = jax.random.split(jax.random.key(c.seed), 3)
  state = par.to_devices(loop.initial_state(exp, par, init_rng))
  step = loop.make_step(exp, par)
  data = par.put_replicated({"input": exp.dataset.x_train, "label": exp.dataset.y_train})
  perm = loop.epoch_permutation(data_rng, 0, n)
  losses = []
  for _ in range(STEPS):
    state, metrics = step(state, data, perm, dropout_rng)
    losses.append(float(metrics["loss"]))
  return losses


@pytest.mark.parametrize("name", sorted(CURVES))
def test_loss_curve_matches_the_recorded_one(name):
  recorded = json.loads(RECORDED.read_text())[name]
  losses = loss_curve(name)
  assert losses[-1] < losses[0]  # it trains
  np.testing.assert_allclose(losses, recorded, rtol=2e-5, err_msg=f"{name}: the loss curve moved")


if __name__ == "__main__":
  if sys.argv[1:] != ["--record"]:
    sys.exit("usage: python tests/test_loss_curves.py --record")
  sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
  curves = {name: loss_curve(name) for name in sorted(CURVES)}
  RECORDED.parent.mkdir(exist_ok=True)
  RECORDED.write_text(json.dumps(curves, indent=1) + "\n")
  print(json.dumps(curves, indent=1))
