"""The faces: train.py and `python -m zoo`, run as a user runs them (subprocesses)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import REPO

SYNTHETIC = ["--config.data.name=synthetic_images", "--config.data.kwargs={'n_train': 128, 'n_test': 32}"]


def run(*args: str, cwd=REPO) -> subprocess.CompletedProcess:
  env = dict(os.environ, PYTHONPATH=str(REPO))
  return subprocess.run(
    [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
  )


def _one_paragraph_error(proc: subprocess.CompletedProcess) -> str:
  assert proc.returncode != 0
  assert "Traceback" not in proc.stderr, proc.stderr
  err = proc.stderr.strip()
  assert err.startswith("error: ") or "error:" in err
  return err


@pytest.mark.parametrize(
  "args, message",
  [
    (["--config", "mnist_cn"], "did you mean: mnist_cnn"),
    (["--config.optimizer.learnin_rate=0.1"], "did you mean: optimizer.learning_rate"),
    (["--config.epochs=abc"], "config key 'epochs' expects int, got 'abc'"),
    (["--config.model.name=mpl"], "unknown model 'mpl'; did you mean: mlp"),
    (["--config.optimizer.name=adamm"], "unknown optimizer 'adamm'; did you mean: adam"),
    (["--config.model.kwargs.hiden_sizes=(3,)"], "hidden_sizes"),
    (
      ["--config.model.name=mnist_cnn", "--config.model.kwargs={}", "--config.data.name=synthetic_tabular"],
      "cannot take inputs",
    ),
    (["--accelerator", "tpu"], "--accelerator tpu"),
  ],
)
def test_train_py_bad_input_gets_one_paragraph_error(tmp_path, args, message):
  proc = run("train.py", "--workdir", str(tmp_path), "--no-progress", *args)
  err = _one_paragraph_error(proc)
  assert message in err, err


def test_corrupt_data_file_is_refused_naming_it(tmp_path):
  data = tmp_path / "data" / "mnist"
  data.mkdir(parents=True)
  for name in (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
  ):
    (data / name).write_bytes(b"\x1f\x8b not really gzip")
  proc = run(
    "train.py",
    "--config",
    "mnist_cnn",
    "--data-dir",
    str(tmp_path / "data"),
    "--workdir",
    str(tmp_path / "w"),
    "--no-progress",
  )
  err = _one_paragraph_error(proc)
  assert "-idx" in err and "sha256" in err, err


def test_train_py_trains_and_resumes(tmp_path):
  args = [
    "train.py",
    "--config",
    "digits_mlp",
    "--workdir",
    str(tmp_path),
    "--no-progress",
    "--config.epochs=2",
    "--config.eval_every_epochs=1",
  ]
  first = run(*args)
  assert first.returncode == 0, first.stderr
  assert "digits_mlp: test accuracy" in first.stdout
  again = run(*args)
  assert again.returncode == 0 and "resumed from the checkpoint of step" in again.stderr


def test_zoo_list_filters_by_kind_and_pattern():
  proc = run("-m", "zoo", "list")
  assert proc.returncode == 0
  for section in ("configs", "models", "optimizers", "schedules", "datasets"):
    assert f"{section} (" in proc.stdout
  assert "python train.py --config mnist_cnn" in proc.stdout  # Configs show their command.
  proc = run("-m", "zoo", "list", "models", "mnist*")
  assert proc.stdout.split() == ["models", "(1):", "mnist_cnn"]
  proc = run("-m", "zoo", "list", "zzz_nothing")
  assert proc.returncode == 1


@pytest.mark.benchmark  # tests/test_fault_injection.py kills train.py twice (once mid-write) in the suite
def test_sigkilled_train_py_resumes_to_the_same_parameters(tmp_path):
  """A real kill: SIGKILL train.py once it has written a checkpoint, rerun it, compare with a clean run."""
  import signal
  import time

  import jax
  import numpy as np

  from zoo.train import Checkpointer

  args = [
    "--config",
    "digits_mlp",
    "--no-progress",
    "--config.epochs=40",
    "--config.checkpoint_every_steps=44",
    "--config.model.kwargs.dropout=0.1",
  ]
  env = dict(os.environ, PYTHONPATH=str(REPO))
  killed = tmp_path / "killed"
  proc = subprocess.Popen(
    [sys.executable, "train.py", "--workdir", str(killed), *args],
    cwd=REPO,
    env=env,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
  )
  deadline = time.time() + 120
  while time.time() < deadline and not any(p.name.isdigit() for p in (killed / "checkpoints").glob("*")):
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  steps = sorted(int(p.name) for p in (killed / "checkpoints").glob("*") if p.name.isdigit())
  assert steps and steps[-1] < 40 * 44, "the kill came after the run had finished; nothing was tested"
  assert run("train.py", "--workdir", str(killed), *args).returncode == 0
  assert run("train.py", "--workdir", str(tmp_path / "clean"), *args).returncode == 0

  def final(workdir):
    ckpt = Checkpointer(workdir / "checkpoints")
    restored = ckpt._manager.restore(ckpt.latest_step())
    ckpt.close()
    return ckpt.all_steps()[-1], restored

  (step_a, a), (step_b, b) = final(killed), final(tmp_path / "clean")
  assert step_a == step_b == 40 * 44
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
