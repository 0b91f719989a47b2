"""The trainer end to end on small data: learning, resuming, compiling once, failing clearly."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

import zoo.train.loop as loop
from zoo.registry import ZooError
from zoo.train import NonFiniteLossError, train_and_evaluate


def _leaves_equal(a, b) -> bool:
  return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def test_trains_and_writes_the_workdir(tiny_config, tmp_path):
  config = tiny_config(epochs=4)
  result = train_and_evaluate(config, tmp_path, progress=False)
  assert result["test"]["accuracy"] > 0.8  # Synthetic classes are separable: chance is 0.1.
  assert result["step"] == 4 * (256 // 32)
  saved = json.loads((tmp_path / "config.json").read_text())
  assert saved["model"]["kwargs"]["hidden_sizes"] == [32]
  records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  train = [r for r in records if r["split"] == "train"]
  assert {"loss", "accuracy", "grad_norm", "learning_rate", "steps_per_sec"} <= set(train[0])
  assert train[-1]["loss"] < train[0]["loss"]
  assert [r["step"] for r in records if r["split"] == "test"] == [8, 16, 24, 32]
  assert (tmp_path / "curves.png").stat().st_size > 1000
  assert any((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
  assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())[-1] == 32
  # The end-of-run classification report on the test split agrees with the evaluation.
  assert result["report"]["accuracy"] == pytest.approx(result["test"]["accuracy"])
  assert "precision" in (tmp_path / "report.txt").read_text()
  assert (tmp_path / "confusion.png").stat().st_size > 1000


def test_binary_task_reports_roc_auc(tiny_config, tmp_path):
  config = tiny_config(data__name="synthetic_tabular", data__kwargs={"num_classes": 2})
  result = train_and_evaluate(config, tmp_path, progress=False)
  assert 0.5 < result["report"]["roc_auc"] <= 1.0
  assert "ROC-AUC" in (tmp_path / "report.txt").read_text() and (tmp_path / "roc.png").exists()


def test_train_step_compiles_once(tiny_config, tmp_path, monkeypatch):
  steps = []
  real = loop.make_train_step
  monkeypatch.setattr(loop, "make_train_step", lambda *a, **k: steps.append(real(*a, **k)) or steps[-1])
  train_and_evaluate(tiny_config(epochs=3), tmp_path, progress=False)
  assert steps[0].traces() == 1


def test_killed_run_resumes_to_the_same_parameters(tiny_config, tmp_path, monkeypatch):
  config = tiny_config(epochs=3, model__kwargs={"hidden_sizes": (32,), "dropout": 0.2})
  config.schedule.name = "cosine"  # Depends on the step: a resume must restore it exactly.
  full = train_and_evaluate(config, tmp_path / "full", progress=False)

  real = loop.make_train_step

  def dies_after_12_steps(*args, **kwargs):
    step = real(*args, **kwargs)
    calls = []

    def wrapped(*a):
      if len(calls) == 12:
        raise KeyboardInterrupt  # Killed between steps 12 and 13; the last checkpoint is step 10.
      calls.append(1)
      return step(*a)

    return wrapped

  monkeypatch.setattr(loop, "make_train_step", dies_after_12_steps)
  with pytest.raises(KeyboardInterrupt):
    train_and_evaluate(config, tmp_path / "killed", progress=False)
  monkeypatch.setattr(loop, "make_train_step", real)
  resumed = train_and_evaluate(config, tmp_path / "killed", progress=False)
  assert _leaves_equal(full["state"].params, resumed["state"].params)
  assert _leaves_equal(full["state"].opt_state, resumed["state"].opt_state)
  records = [json.loads(x) for x in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
  steps = [r["step"] for r in records if r["split"] == "train"]
  assert steps == sorted(steps) and len(steps) == len(set(steps))  # Replayed steps are not logged twice.


def test_rerunning_a_finished_run_reports_without_training(tiny_config, tmp_path):
  config = tiny_config()
  first = train_and_evaluate(config, tmp_path, progress=False)
  again = train_and_evaluate(config, tmp_path, progress=False)
  assert again["test"] == pytest.approx(first["test"])
  assert _leaves_equal(first["state"].params, again["state"].params)


def test_batch_norm_model_trains_and_checkpoints_its_statistics(tiny_config, tmp_path):
  config = tiny_config(model__kwargs={"hidden_sizes": (16,), "batch_norm": True})
  result = train_and_evaluate(config, tmp_path, progress=False)
  assert "batch_stats" in result["state"].model_state
  again = train_and_evaluate(config, tmp_path, progress=False)
  assert _leaves_equal(result["state"].model_state, again["state"].model_state)


def test_nonfinite_loss_stops_and_keeps_the_last_good_checkpoint(tiny_config, tmp_path):
  config = tiny_config(epochs=3)
  config.optimizer.name = "sgd"
  config.optimizer.learning_rate = 1e30
  with pytest.raises(NonFiniteLossError, match=r"became (nan|inf) at step \d+; .*last good checkpoint"):
    train_and_evaluate(config, tmp_path, progress=False)
  for ckpt in (tmp_path / "checkpoints").glob("[0-9]*"):
    assert int(ckpt.name) < 24  # Nothing written after the loss went bad.


def test_wrong_input_shape_is_a_clear_error(tiny_config, tmp_path):
  config = tiny_config(data__name="synthetic_tabular", data__kwargs={"features": 16})
  config.model.name = "mnist_cnn"  # A convolutional net given feature vectors.
  config.model.kwargs = {}
  with pytest.raises(ZooError, match=r"cannot take inputs of shape \(16,\)"):
    train_and_evaluate(config, tmp_path, progress=False)


def test_batch_larger_than_the_data_is_refused(tiny_config, tmp_path):
  with pytest.raises(ZooError, match="batch_size=1000"):
    train_and_evaluate(tiny_config(data__batch_size=1000), tmp_path, progress=False)


def test_resuming_with_a_different_model_is_a_clear_error(tiny_config, tmp_path):
  train_and_evaluate(tiny_config(epochs=1), tmp_path, progress=False)
  changed = tiny_config(epochs=2, model__kwargs={"hidden_sizes": (48,)})
  with pytest.raises(ZooError, match="does not fit this config"):
    train_and_evaluate(changed, tmp_path, progress=False)


def _noise_dataset():
  """Labels independent of the inputs: the network can only memorise, so validation loss rises."""
  from zoo.data import Dataset

  rng = np.random.default_rng(0)
  x = rng.integers(0, 256, (400, 8, 8, 1), dtype=np.uint8)
  y = rng.integers(0, 3, 400).astype(np.int32)
  return Dataset("noise", x[:300], y[:300], x[300:], y[300:], num_classes=3, pixel_max=255.0)


def test_validation_split_is_carved_from_training_data(tiny_config, tmp_path):
  config = tiny_config(epochs=1, data__validation_split=0.25)
  result = train_and_evaluate(config, tmp_path, progress=False)
  assert result["step"] == (256 - 64) // 32
  records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert {r["split"] for r in records} == {"train", "validation", "test"}
  with pytest.raises(ZooError, match="validation_split=1.0"):
    train_and_evaluate(tiny_config(data__validation_split=1.0), tmp_path / "bad", progress=False)


def test_early_stopping_stops_on_rising_validation_loss_and_restores_the_best(tiny_config, tmp_path):
  config = tiny_config(epochs=40, data__validation_split=0.25, model__kwargs={"hidden_sizes": (256,)})
  config.early_stopping.patience = 3
  config.early_stopping.restore_best = True
  result = train_and_evaluate(config, tmp_path, progress=False, dataset=_noise_dataset())
  records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  val = [(r["step"], r["loss"]) for r in records if r["split"] == "validation"]
  assert result["stopped_early"] and len(val) < 40
  best_step, best_loss = min(val, key=lambda v: v[1])
  assert result["best"] == {"split": "validation", "step": best_step, "loss": best_loss}
  assert all(loss > best_loss for _, loss in val[-3:])  # Stopped after `patience` evaluations without a gain.
  assert val[-1][0] == best_step + 3 * (225 // 32)
  assert result["step"] == best_step  # The parameters returned are the best evaluation's.
  # A rerun neither trains on nor forgets the best.
  again = train_and_evaluate(config, tmp_path, progress=False, dataset=_noise_dataset())
  assert again["step"] == best_step and again["stopped_early"]
  assert _leaves_equal(result["state"].params, again["state"].params)


def test_early_stopping_metric_must_exist(tiny_config, tmp_path):
  config = tiny_config(epochs=1)
  config.early_stopping.patience = 2
  config.early_stopping.metric = "f1"
  with pytest.raises(ZooError, match="'f1' is not a test metric; this task reports: accuracy, loss"):
    train_and_evaluate(config, tmp_path, progress=False)


def test_penalties_and_max_norm_act_in_training(tiny_config, tmp_path):
  from zoo.regularizers import penalty

  config = tiny_config(epochs=2)
  config.regularization.l1 = 1e-3
  config.regularization.l2 = 1e-2
  config.optimizer.max_norm = 0.5
  result = train_and_evaluate(config, tmp_path, progress=False)
  params = result["state"].params
  records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  last = [r for r in records if r["split"] == "train"][-1]
  assert last["penalty"] > 0
  # The last logged penalty is of parameters a few steps old: close to, not equal to, the final one.
  assert last["penalty"] == pytest.approx(float(penalty(params, l1=1e-3, l2=1e-2)), rel=0.2)
  for name in ("Dense_0", "Dense_1"):
    norms = np.linalg.norm(np.asarray(params[name]["kernel"]), axis=0)
    assert norms.max() <= 0.5 + 1e-5
  config.regularization.pattern = "*kernal"
  with pytest.raises(ZooError, match="kernal"):
    train_and_evaluate(config, tmp_path / "typo", progress=False)


def test_reduce_on_plateau_cuts_the_rate_when_validation_loss_rises(tiny_config, tmp_path):
  config = tiny_config(epochs=6, data__validation_split=0.25, model__kwargs={"hidden_sizes": (256,)})
  config.reduce_on_plateau.patience = 1
  config.reduce_on_plateau.factor = 0.5
  train_and_evaluate(config, tmp_path, progress=False, dataset=_noise_dataset())
  records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  val = [r for r in records if r["split"] == "validation"]
  # Expected scale after each evaluation, from the logged validation losses alone.
  best, scale, expected = float("inf"), 1.0, []
  for r in val:
    if r["loss"] < best:
      best = r["loss"]
    else:
      scale *= 0.5
    expected.append((r["step"], scale))
  assert expected[-1][1] < 1.0  # The loss did rise: the rate was cut.
  train = {r["step"]: r["learning_rate"] for r in records if r["split"] == "train"}
  spe = 225 // 32
  for step, scale in expected[:-1]:  # The rate logged in the next epoch carries the scale.
    assert train[step + spe] == pytest.approx(config.optimizer.learning_rate * scale)


def test_a_seed_numpy_cannot_take_is_refused_naming_the_key(tiny_config):
  from zoo.train.loop import build

  with pytest.raises(ZooError, match="'seed' must be in"):
    build(tiny_config(seed=-1))
