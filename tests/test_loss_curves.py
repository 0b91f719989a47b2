"""Fixed-seed loss curves of small members of the benchmarked families (benchmarks/speed.py), against curves
recorded in tests/data/loss_curves.json: a speed change to a layer, the train step or XLA's options must
keep the numerics, so these curves may move by float rounding only.

Each curve is the loss of 6 training steps of the zoo's own train step (built as benchmarks/speed.py
builds it, through zoo.train.loop) on fixed random data. After a deliberate change of the numerics, rewrite
the file with `python tests/test_loss_curves.py --record` and say why in the commit.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

RECORDED = Path(__file__).parent / "data" / "loss_curves.json"
STEPS = 6

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import speed  # noqa: E402
from benchmarks.train_step import build_single  # noqa: E402

# Small members of the families: the model, its kwargs, the batch size, an example's shape or token count.
CURVES = {
  "mlp": speed.Workload("mlp", dict(hidden_sizes=(64, 64)), 32, (784,)),
  "cnn": speed.Workload(
    "bn_cnn", dict(features=(8, 16), convs_per_stage=1, hidden=32, norm="none", dropout=0.0), 16, (28, 28, 1)
  ),
  "bn_cnn": speed.Workload("bn_cnn", dict(features=(8, 16), hidden=32, dropout=0.0), 16, (28, 28, 1)),
  "vit": speed.Workload("vit_tiny_p7", dict(depth=2), 8, (28, 28, 1)),
  "lstm": speed.Workload("char_lstm", dict(num_layers=1, embed_dim=16, hidden_size=32), 8, seq_len=16),
  "gpt": speed.Workload("gpt_tiny", dict(dropout=0.0, attention_dropout=0.0), 4, seq_len=32),
}


def loss_curve(name: str) -> list[float]:
  """The losses of STEPS steps of the zoo's train step (as benchmarks/speed.py builds it) on 2 batches of
  random data, AdamW at 3e-3 with weight decay 0.01 (biases and norms spared)."""
  w = CURVES[name]
  config = speed.zoo_config(w)
  config.optimizer.learning_rate, config.optimizer.weight_decay_mask = 3e-3, "no_bias_no_norm"
  config.steps = STEPS
  built = build_single(config, speed.dataset(w, 2 * w.batch_size))
  state, losses = built["state"], []
  for _ in range(STEPS):
    state, metrics = built["run"](state, *built["args"])
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
  curves = {name: loss_curve(name) for name in sorted(CURVES)}
  RECORDED.parent.mkdir(exist_ok=True)
  RECORDED.write_text(json.dumps(curves, indent=1) + "\n")
  print(json.dumps(curves, indent=1))
