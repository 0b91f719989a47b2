"""Ensembles and sweeps: many models in one vmapped step, each member equal to its own separate run."""

from __future__ import annotations

import json
import os
import signal

import jax
import numpy as np
import pytest

import zoo
from zoo.registry import ZooError
from zoo.train import ensemble
from zoo.train.loop import TrainingInterrupted, train_and_evaluate
from zoo.train.restore import load_run

BASE = ["epochs=2", "log_every_steps=20", "data.max_train_examples=704"]  # 22 steps of 32 per epoch


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]


def _assert_member_equals(stacked, i, single):
  member = jax.tree.map(lambda a: a[i], stacked)
  for a, b in zip(_leaves(member), _leaves(single), strict=True):
    np.testing.assert_allclose(a, b, atol=1e-5)


def _config(*overrides):
  return zoo.get_config("digits_mlp", [*BASE, "data.batch_size=32", *overrides])


def test_ensemble_member_equals_the_run_of_its_seed(tmp_path):
  result = train_and_evaluate(_config("ensemble=3", "seed=4"), tmp_path / "ens", progress=False)
  single = train_and_evaluate(_config("seed=5"), tmp_path / "seed5", progress=False)
  _assert_member_equals(result["state"].params, 1, single["state"].params)
  assert [m["label"] for m in result["members"]] == ["seed4", "seed5", "seed6"]
  assert result["members"][1]["test"]["accuracy"] == pytest.approx(single["test"]["accuracy"])
  # The members differ (their own initialisation and data order) and the averaged prediction is reported.
  first, second = (_leaves(jax.tree.map(lambda a, i=i: a[i], result["state"].params))[0] for i in (0, 1))
  assert not np.allclose(first, second)
  assert 0 < result["test"]["ensemble_accuracy"] <= 1
  saved = json.loads((tmp_path / "ens" / "result.json").read_text())
  assert saved["test"]["ensemble_accuracy"] == result["test"]["ensemble_accuracy"]


@pytest.mark.parametrize(
  ("key", "values", "index"),
  [("optimizer.learning_rate", (1e-3, 3e-3), 1), ("task.kwargs.label_smoothing", (0.0, 0.2), 1)],
)
def test_sweep_member_equals_the_run_with_its_value(tmp_path, key, values, index):
  result = train_and_evaluate(_config(f"sweep={{{key!r}: {values!r}}}"), tmp_path / "sweep", progress=False)
  single = train_and_evaluate(_config(f"{key}={values[index]!r}"), tmp_path / "single", progress=False)
  _assert_member_equals(result["state"].params, index, single["state"].params)


def test_each_member_is_an_ordinary_run_directory(tmp_path):
  result = train_and_evaluate(_config("ensemble=2"), tmp_path / "ens", progress=False)
  member_dir = result["members"][1]["workdir"]
  run = load_run(member_dir)  # its config, model card and checkpoint
  member = jax.tree.map(lambda a: a[1], result["state"].params)
  for a, b in zip(_leaves(run.variables["params"]), _leaves(member), strict=True):
    np.testing.assert_array_equal(a, b)
  config = json.loads((tmp_path / "ens" / "members" / "1_seed1" / "config.json").read_text())
  assert config["seed"] == 1 and config["ensemble"] == 1
  # Rerunning the member's own config in its directory finds it finished (same step, same accuracy).
  again = train_and_evaluate(_config("seed=1"), member_dir, progress=False)
  assert again["test"]["accuracy"] == pytest.approx(result["members"][1]["test"]["accuracy"])


def test_an_interrupted_ensemble_resumes(tmp_path, monkeypatch):
  full = train_and_evaluate(_config("ensemble=2"), tmp_path / "full", progress=False)
  handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
  real = ensemble.Setup.make_step

  def make(self):
    step, calls = real(self), []

    def wrapped(*args):
      calls.append(1)
      if len(calls) == 30:
        os.kill(os.getpid(), signal.SIGTERM)  # preempted while step 30 runs
      return step(*args)

    return wrapped

  with monkeypatch.context() as mp, pytest.raises(TrainingInterrupted) as info:
    mp.setattr(ensemble.Setup, "make_step", make)
    train_and_evaluate(_config("ensemble=2"), tmp_path / "resumed", progress=False)
  assert info.value.step == 30 and info.value.exit_code == 143
  assert {s: signal.getsignal(s) for s in handlers} == handlers
  resumed = train_and_evaluate(_config("ensemble=2"), tmp_path / "resumed", progress=False)
  for a, b in zip(_leaves(full["state"].params), _leaves(resumed["state"].params), strict=True):
    np.testing.assert_allclose(a, b, atol=1e-6)


@pytest.mark.parametrize(
  ("overrides", "message"),
  [
    (["sweep={'model.kwargs.hidden_sizes': (32, 64)}"], "numeric field that the optimiser"),
    (["sweep={'optimizer.learning_rate': (1e-3,)}"], "at least two numbers"),
    (["sweep={'optimizer.learning_rat': (1e-3, 1e-2)}"], "did you mean: optimizer.learning_rate"),
    (["ensemble=2", "sweep={'optimizer.learning_rate': (1e-3, 1e-2)}"], "not both"),
    (["ensemble=0"], "must be >= 1"),
  ],
)
def test_bad_ensembles_and_sweeps_are_clear_errors(overrides, message):
  with pytest.raises(ZooError, match=message):
    ensemble.member_configs(_config(*overrides))


def test_unsupported_options_are_refused(tmp_path):
  with pytest.raises(ZooError, match="early_stopping"):
    train_and_evaluate(_config("ensemble=2", "early_stopping.patience=2"), tmp_path, progress=False)


def test_sweep_flag_parses_into_the_config():
  from zoo.config import parse_sweep

  parsed = parse_sweep("optimizer.learning_rate=1e-4,3e-4, 1e-3")
  assert parsed == {"optimizer.learning_rate": (1e-4, 3e-4, 1e-3)}
  with pytest.raises(ZooError, match="KEY=V1,V2"):
    parse_sweep("optimizer.learning_rate")
