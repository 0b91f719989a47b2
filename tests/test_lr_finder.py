"""The LR range test (Smith 2017): the sweep, the smoothing, divergence, the suggestion, files, the CLI."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
from conftest import REPO

import zoo.train.lr_finder as lr_finder
from zoo.config import Config
from zoo.registry import ZooError
from zoo.train import train_and_evaluate

MIN_LR, MAX_LR, STEPS = 1e-3, 1e3, 60


def _blobs_config(**data_kwargs) -> Config:
  """SGD on a small MLP over Gaussian blobs: it learns at rates around 0.1-1 and blows up by ~10-30."""
  c = Config()
  c.model.kwargs = {"hidden_sizes": (16,)}
  c.data.name = "synthetic_tabular"
  c.data.kwargs = {"n_train": 512, "n_test": 16, "features": 16, "num_classes": 3, **data_kwargs}
  c.data.batch_size = 64
  c.optimizer.name = "sgd"
  c.optimizer.learning_rate = 0.3
  return c


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
  """One sweep shared by the tests below, with the compiled step and the optimiser's schedule captured."""
  workdir = tmp_path_factory.mktemp("lr_find")
  checkpoint = (
    workdir / "checkpoints" / "40" / "marker"
  )  # A run's checkpoint, which the finder must not touch.
  checkpoint.parent.mkdir(parents=True)
  checkpoint.write_text("step 40")
  captured = {}
  real_step, real_optimizer = lr_finder.make_train_step, lr_finder.create_optimizer

  def capture_step(*args, **kwargs):
    captured["step"] = real_step(*args, **kwargs)
    return captured["step"]

  def capture_optimizer(config, schedule):
    captured["schedule"] = schedule
    return real_optimizer(config, schedule)

  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(lr_finder, "make_train_step", capture_step)
    mp.setattr(lr_finder, "create_optimizer", capture_optimizer)
    result = lr_finder.find_lr(_blobs_config(), workdir, min_lr=MIN_LR, max_lr=MAX_LR, steps=STEPS)
  return result, workdir, captured


def test_rates_are_the_exponential_sweep_and_the_optimiser_follows_it(sweep):
  result, _, captured = sweep
  rates = np.asarray(result["rates"])
  i = np.arange(len(rates))
  np.testing.assert_allclose(rates, MIN_LR * (MAX_LR / MIN_LR) ** (i / (STEPS - 1)), rtol=1e-12, atol=0)
  assert rates[0] == MIN_LR
  # The optimiser reads its rate from the sweep at its update count (float32 on the device), past the
  # record's end too.
  full = np.geomspace(MIN_LR, MAX_LR, STEPS)
  schedule = captured["schedule"]
  np.testing.assert_array_equal([float(schedule(k)) for k in range(STEPS)], full.astype(np.float32))
  assert float(schedule(STEPS + 5)) == np.float32(MAX_LR)


def test_loss_falls_then_diverges_and_the_record_stops_there(sweep):
  result, _, _ = sweep
  smoothed = np.asarray(result["smoothed"])
  assert np.all(np.isfinite(smoothed)) and np.all(np.isfinite(result["losses"]))
  assert len(result["rates"]) == len(result["losses"]) == len(smoothed) < STEPS  # truncated
  best = int(np.argmin(smoothed))
  assert 0 < best < len(smoothed) - 1 and smoothed[best] < 0.75 * smoothed[0]  # fell well below the start
  running_min = np.minimum.accumulate(smoothed)
  assert np.all(smoothed[:-1] <= 4.0 * running_min[:-1])  # no earlier step diverged ...
  assert smoothed[-1] > 4.0 * running_min[-1]  # ... and the last one did, at the rate reported
  assert result["diverged_at"] == result["rates"][-1]


def test_suggestion_lies_between_the_first_rate_and_the_divergence(sweep):
  result, _, _ = sweep
  rates, smoothed = np.asarray(result["rates"]), np.asarray(result["smoothed"])
  assert MIN_LR < result["suggestion"] < result["diverged_at"]
  # SGD on this small MLP over standardised blobs trains well at 0.1-1: the steepest descent is about there
  # (the sweep spans 1e-3 to 1e3).
  assert 0.05 < result["suggestion"] < 5
  assert result["min_loss_rate"] == rates[np.argmin(smoothed)]
  assert result["min_loss_rate_div10"] == pytest.approx(result["min_loss_rate"] / 10)
  assert result["suggestion"] < result["min_loss_rate"]


def _reference_smoothing(losses: np.ndarray, beta: float) -> np.ndarray:
  """The bias-corrected EMA in closed form: a weighted mean with weights beta^(i-j), normalised."""
  out = []
  for i in range(len(losses)):
    weights = (1 - beta) * beta ** np.arange(i, -1, -1)
    out.append(np.sum(weights * losses[: i + 1]) / (1 - beta ** (i + 1)))
  return np.asarray(out)


def test_smoothing_matches_a_numpy_reference(sweep):
  result, _, _ = sweep
  losses = np.asarray(result["losses"])
  np.testing.assert_allclose(result["smoothed"], _reference_smoothing(losses, 0.98), rtol=1e-12)
  noisy = np.random.default_rng(0).uniform(0.5, 3.0, 40)
  for beta in (0.0, 0.5, 0.98):
    np.testing.assert_allclose(
      lr_finder.smoothed_losses(noisy, beta), _reference_smoothing(noisy, beta), rtol=1e-12
    )
  assert lr_finder.smoothed_losses([2.0, 2.0, 2.0], 0.98) == pytest.approx([2.0, 2.0, 2.0])  # no bias to 0


def test_writes_the_plot_and_the_record_and_leaves_checkpoints_alone(sweep):
  result, workdir, _ = sweep
  png = workdir / "lr_find.png"
  assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
  assert result["plot"] == str(png)
  assert json.loads((workdir / "lr_find.json").read_text()) == result
  assert sorted(p.name for p in workdir.iterdir()) == ["checkpoints", "lr_find.json", "lr_find.png"]
  assert [p.name for p in (workdir / "checkpoints").rglob("*")] == ["40", "marker"]
  assert (workdir / "checkpoints" / "40" / "marker").read_text() == "step 40"


def test_the_step_compiles_once(sweep):
  _, _, captured = sweep
  assert captured["step"].traces() == 1


def test_sweep_trains_exactly_as_training_does(tmp_path):
  """Same init, data order across an epoch boundary, augmentation and dropout: with the config's schedule
  set to the same exponential ramp, the trainer logs the finder's losses step for step."""
  steps, min_lr, max_lr = 12, 1e-3, 1e-1
  c = Config()
  c.model.kwargs = {"hidden_sizes": (32,), "dropout": 0.2}
  c.data.name = "synthetic_images"
  c.data.kwargs = {"n_train": 256, "n_test": 32, "image_size": 8}
  c.data.batch_size = 32  # 8 steps per epoch
  c.data.augment = {"random_shift": {"pixels": 1}}
  c.optimizer.name = "momentum"
  c.log_every_steps = 1
  found = lr_finder.find_lr(c, tmp_path / "find", min_lr=min_lr, max_lr=max_lr, steps=steps)
  assert found["diverged_at"] is None and len(found["losses"]) == steps

  c.optimizer.learning_rate = min_lr
  c.schedule.name = "exponential"
  c.schedule.kwargs = {"decay_rate": (max_lr / min_lr) ** (1 / (steps - 1))}
  c.steps = steps
  c.checkpoint_every_steps = 1000
  train_and_evaluate(c, tmp_path / "train", progress=False)
  records = [json.loads(x) for x in (tmp_path / "train" / "metrics.jsonl").read_text().splitlines()]
  trained = [r["loss"] for r in records if r["split"] == "train"]
  np.testing.assert_allclose(found["losses"], trained, rtol=1e-4)


def test_gradient_accumulation_spends_one_rate_per_update(tmp_path, monkeypatch):
  calls = []
  real = lr_finder.make_train_step

  def counting(*args, **kwargs):
    step = real(*args, **kwargs)
    return lambda *a: calls.append(1) or step(*a)

  monkeypatch.setattr(lr_finder, "make_train_step", counting)
  c = _blobs_config(n_train=128)
  c.optimizer.accumulate_steps = 2
  found = lr_finder.find_lr(c, tmp_path, min_lr=1e-3, max_lr=1e-2, steps=8)
  assert len(found["losses"]) == 8 and len(calls) == 16


def test_suggest_finds_the_steepest_descent_despite_noise():
  steps = 100
  rates = np.geomspace(1e-6, 1.0, steps)
  centre = 1e-3  # A loss falling fastest at 1e-3, then rising: tanh descent plus a quadratic wall.
  x = np.log10(rates) - np.log10(centre)
  curve = 2.0 - np.tanh(x) + 0.2 * np.maximum(x - 1.5, 0) ** 2
  noisy = curve + np.random.default_rng(0).normal(0, 0.01, steps)
  for smoothed in (curve, noisy):
    got = lr_finder.suggest(rates, smoothed, steps)["suggestion"]
    assert abs(np.log10(got / centre)) <= 0.25, got  # within ~4 steps of the sweep (0.06 decades each)
  rising = np.linspace(1.0, 3.0, steps)
  assert lr_finder.suggest(rates, rising, steps)["suggestion"] is None  # never fell: no suggestion


def test_divergence_index():
  assert lr_finder.divergence_index(np.array([3.0, 2.0, 1.0, 3.9, 4.1]), 4.0) == 4
  assert lr_finder.divergence_index(np.array([3.0, 2.0, np.nan, 5.0]), 4.0) == 2
  assert lr_finder.divergence_index(np.array([3.0, 2.0, 1.0, 3.9]), 4.0) is None
  # Losses below zero: the threshold is best + (diverge - 1) |best|, here -2 + 3 * 2 = 4, then -2 + 2 * 2.
  assert lr_finder.divergence_index(np.array([-2.0, -1.0, 3.9]), 4.0) is None
  assert lr_finder.divergence_index(np.array([-2.0, -1.0, 3.9]), 3.0) == 2


def test_nonfinite_losses_end_the_record_before_them(tmp_path):
  c = _blobs_config(n_train=128)
  found = lr_finder.find_lr(c, tmp_path, min_lr=1e10, max_lr=1e30, steps=10)  # blows up at once
  assert found["diverged_at"] is not None and len(found["losses"]) < 10
  assert np.all(np.isfinite(found["losses"]))
  json.loads((tmp_path / "lr_find.json").read_text())  # valid JSON: no NaN


@pytest.mark.parametrize(
  "kwargs, message",
  [
    (dict(min_lr=1.0, max_lr=0.1), "0 < min_lr < max_lr"),
    (dict(min_lr=0.0), "0 < min_lr < max_lr"),
    (dict(steps=1), "at least 2 steps"),
    (dict(smooth=1.0), "smoothing factor"),
    (dict(diverge=1.0), "divergence factor"),
  ],
)
def test_bad_settings_are_clear_errors(tmp_path, kwargs, message):
  with pytest.raises(ZooError, match=message):
    lr_finder.find_lr(_blobs_config(), tmp_path, **kwargs)
  assert not any(tmp_path.iterdir())


def _train_py():
  spec = importlib.util.spec_from_file_location("train_cli", REPO / "train.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_cli_find_lr_writes_the_plot_and_prints_the_suggestion(tmp_path, capsys):
  args = [
    "--config.data.name=synthetic_tabular",
    "--config.data.kwargs={'n_train': 256, 'n_test': 16}",
    "--config.optimizer.name=sgd",
    "--workdir",
    str(tmp_path),
    "--no-progress",
    "--find-lr",
    "--find-lr-steps",
    "40",
  ]
  assert _train_py().main(args) == 0
  out = capsys.readouterr().out
  found = json.loads((tmp_path / "lr_find.json").read_text())
  assert found["steps"] == 40 and found["suggestion"] is not None
  assert f"suggested learning rate {found['suggestion']:.2g}" in out
  assert str(tmp_path / "lr_find.png") in out and (tmp_path / "lr_find.png").is_file()
  assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "metrics.jsonl").exists()  # no training
  assert _train_py().main([*args[:-1], "1"]) == 2
  assert "at least 2 steps" in capsys.readouterr().err
