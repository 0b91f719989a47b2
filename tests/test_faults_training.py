"""Faults in training: damaged checkpoints, SIGTERM/SIGINT, non-finite numbers, out of memory, a full disk."""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import REPO

import zoo.train.checkpoint as checkpoint_lib
import zoo.train.loop as loop
from zoo.registry import ZooError
from zoo.train import NonFiniteLossError, train_and_evaluate
from zoo.train.checkpoint import MANIFEST, Checkpointer, verify_step
from zoo.train.loop import TrainingInterrupted
from zoo.train.restore import load_run

# tiny_config(): 16 steps (2 epochs of 8), checkpoints at steps 5, 8 (an evaluation), 10, 15 and 16, the
# newest 3 kept. A run killed after step 12 leaves 5, 8 and 10.
KILLED_AFTER = 12
_CACHE: dict[str, object] = {}


def _leaves_equal(a, b) -> bool:
  return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def _steps(workdir: Path) -> list[int]:
  return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


def _step_files(workdir: Path, step: int) -> list[Path]:
  """The files of a checkpoint that hold its arrays, largest first."""
  files = [
    p for p in (workdir / "checkpoints" / str(step)).rglob("*") if p.is_file() and "/d/" in p.as_posix()
  ]
  return sorted(files, key=lambda p: p.stat().st_size, reverse=True)


def _failing_steps(monkeypatch, at_call: int, error: BaseException) -> None:
  """The compiled train step raises `error` at its `at_call`-th call (counting from 1)."""
  real = loop.make_train_step

  def make(*args, **kwargs):
    step, calls = real(*args, **kwargs), []

    def wrapped(*a):
      calls.append(1)
      if len(calls) == at_call:
        raise error
      return step(*a)

    return wrapped

  monkeypatch.setattr(loop, "make_train_step", make)


@pytest.fixture(autouse=True)
def _no_plots(monkeypatch):
  """The PNGs (curves, confusion matrix) take most of a tiny run's time and are not what is tested here."""
  from zoo.tasks import reports
  from zoo.train.writers import MetricWriter

  monkeypatch.setattr(MetricWriter, "plot", lambda self: None)
  monkeypatch.setattr(reports, "save_confusion_png", lambda *args, **kwargs: None)


@pytest.fixture
def reference(tiny_config, tmp_path_factory):
  """The final state of an uninterrupted run of tiny_config() (trained once per session)."""
  if "reference" not in _CACHE:
    _CACHE["reference"] = train_and_evaluate(
      tiny_config(), tmp_path_factory.mktemp("reference"), progress=False
    )
  return _CACHE["reference"]["state"]


@pytest.fixture
def killed_run(tiny_config, tmp_path, tmp_path_factory):
  """A copy (in tmp_path/run) of the workdir of tiny_config() killed after step 12 (trained once)."""
  if "killed" not in _CACHE:
    workdir = tmp_path_factory.mktemp("killed") / "run"
    with pytest.MonkeyPatch.context() as mp:
      _failing_steps(mp, KILLED_AFTER + 1, KeyboardInterrupt())
      with pytest.raises(KeyboardInterrupt):
        train_and_evaluate(tiny_config(), workdir, progress=False)
    assert _steps(workdir) == [5, 8, 10]
    _CACHE["killed"] = workdir
  return Path(shutil.copytree(_CACHE["killed"], tmp_path / "run"))


def _truncate(path: Path) -> str:
  os.truncate(path, path.stat().st_size // 2)
  return "truncated"


def _flip_a_bit(path: Path) -> str:
  data = bytearray(path.read_bytes())
  data[len(data) // 2] ^= 0x10
  path.write_bytes(bytes(data))
  return "does not match its sha256"


@pytest.mark.parametrize("damage", [_truncate, _flip_a_bit], ids=["truncated", "bit_flip"])
def test_damaged_newest_checkpoint_is_set_aside_and_the_run_resumes_from_the_previous(
  damage, killed_run, reference, tiny_config, caplog
):
  damaged = _step_files(killed_run, 10)[0]
  reason = damage(damaged)
  assert verify_step(killed_run / "checkpoints", 8) is None
  with caplog.at_level(logging.INFO):
    result = train_and_evaluate(tiny_config(), killed_run, progress=False)
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert any("step 10" in w and damaged.name in w and reason in w for w in warnings), warnings
  assert "resumed from the checkpoint of step 8" in caplog.text
  assert (killed_run / "checkpoints" / "corrupt-10").is_dir()  # Moved aside, never taken again.
  assert _steps(killed_run)[-1] == 16 and result["step"] == 16
  assert _leaves_equal(result["state"].params, reference.params)
  assert _leaves_equal(result["state"].opt_state, reference.opt_state)


def test_load_run_skips_a_damaged_newest_checkpoint_and_refuses_a_damaged_step(killed_run, caplog):
  _truncate(_step_files(killed_run, 10)[0])
  with caplog.at_level(logging.WARNING):
    run = load_run(killed_run)
  assert run.step == 8 and "step 10" in caplog.text and "truncated" in caplog.text
  with pytest.raises(ZooError, match="the checkpoint of step 10 in .* is damaged: file .* is truncated"):
    load_run(killed_run, step=10)
  assert (killed_run / "checkpoints" / "10").is_dir()  # A reader leaves it where it is.


def test_every_checkpoint_damaged_is_an_error_naming_the_directory(killed_run, tiny_config):
  (killed_run / "checkpoints" / "5" / MANIFEST).unlink()  # As if its save had not completed.
  _truncate(_step_files(killed_run, 8)[0])
  _flip_a_bit(_step_files(killed_run, 10)[0])
  checkpoints = killed_run / "checkpoints"
  with pytest.raises(ZooError, match=f"every checkpoint in {checkpoints} is damaged") as info:
    train_and_evaluate(tiny_config(), killed_run, progress=False)
  message = str(info.value)
  assert "step 5: its manifest" in message and "step 8: file" in message and "step 10: file" in message
  assert sorted(p.name for p in checkpoints.glob("corrupt-*")) == ["corrupt-10", "corrupt-5", "corrupt-8"]


def test_a_save_killed_while_writing_its_manifest_leaves_no_step_and_the_previous_one_restores(tmp_path):
  state = {"w": np.arange(1000, dtype=np.float32), "step": np.asarray(1, np.int32)}
  checkpointer = Checkpointer(tmp_path, keep=3)
  checkpointer.save(1, state)
  checkpointer.wait()

  def killed_midway(step_dir: Path) -> None:
    (step_dir / (MANIFEST + ".tmp")).write_text('{"format": 1, "files": {"def')
    raise SystemError("killed")  # Where a kill would stop it: the temporary directory is never renamed.

  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(checkpoint_lib, "write_manifest", killed_midway)
    checkpointer.save(2, dict(state, w=state["w"] + 1, step=np.asarray(2, np.int32)))
    with pytest.raises(SystemError):
      checkpointer.wait()
    checkpointer.close(raise_errors=False)
  again = Checkpointer(tmp_path, keep=3)  # What the rerun sees.
  assert again.all_steps() == [1] and again.latest_step() == 1
  step, restored = again.restore_latest(state, "")
  assert step == 1 and np.array_equal(restored["w"], state["w"])
  again.close()
  assert sorted(p.name for p in tmp_path.iterdir()) == ["1", checkpoint_lib.CHECKSUMS_SINCE]


def test_steps_from_before_manifests_are_trusted_later_ones_must_have_one(tmp_path):
  state = {"w": np.zeros(10, np.float32)}
  checkpointer = Checkpointer(tmp_path, keep=5)
  for step in (1, 2):
    checkpointer.save(step, state)
  checkpointer.close()
  for step in (1, 2):  # A run from before manifests.
    (tmp_path / str(step) / MANIFEST).unlink()
  (tmp_path / checkpoint_lib.CHECKSUMS_SINCE).unlink()
  checkpointer = Checkpointer(tmp_path, keep=5)
  assert checkpointer.latest_step() == 2 and checkpointer.verify(1) is None
  checkpointer.save(3, state)
  checkpointer.close()
  (tmp_path / "3" / MANIFEST).unlink()
  assert verify_step(tmp_path, 3) == f"its manifest {MANIFEST} is missing"


def test_sigint_saves_the_current_step_ignores_a_second_signal_and_the_rerun_matches(
  tiny_config, tmp_path, reference
):
  handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
  real = loop.make_train_step

  def make(*args, **kwargs):
    step, calls = real(*args, **kwargs), []

    def wrapped(*a):
      calls.append(1)
      if len(calls) == 7:
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while step 7 runs.
      return step(*a)

    return wrapped

  real_wait = Checkpointer.wait

  def wait_under_fire(self):
    os.kill(os.getpid(), signal.SIGTERM)  # A second signal during the save: changes nothing.
    real_wait(self)

  with pytest.MonkeyPatch.context() as mp, pytest.raises(TrainingInterrupted) as info:
    mp.setattr(loop, "make_train_step", make)
    mp.setattr(Checkpointer, "wait", wait_under_fire)
    train_and_evaluate(tiny_config(), tmp_path, progress=False)
  assert info.value.step == 7 and info.value.exit_code == 130
  assert str(info.value) == (
    f"interrupted at step 7: checkpoint saved in {tmp_path / 'checkpoints'}; rerun the same command to resume"
  )
  assert {s: signal.getsignal(s) for s in handlers} == handlers  # Put back.
  assert _steps(tmp_path)[-1] == 7 and verify_step(tmp_path / "checkpoints", 7) is None
  resumed = train_and_evaluate(tiny_config(), tmp_path, progress=False)
  assert _leaves_equal(resumed["state"].params, reference.params)
  assert _leaves_equal(resumed["state"].opt_state, reference.opt_state)


def test_sigterm_to_train_py_saves_a_checkpoint_says_so_and_a_rerun_resumes(tmp_path, caplog):
  import zoo

  overrides = ["checkpoint_every_steps=40", "log_every_steps=20", "eval_every_epochs=100000"]
  workdir = tmp_path / "run"
  command = [sys.executable, "train.py", "--config", "digits_mlp", "--workdir", str(workdir), "--no-progress"]
  env = dict(os.environ, PYTHONPATH=str(REPO))
  proc = subprocess.Popen(
    [*command, "--config.steps=1000000", *(f"--config.{o}" for o in overrides)],
    cwd=REPO,
    env=env,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )
  deadline = time.time() + 120
  while time.time() < deadline and proc.poll() is None and not _steps_if_any(workdir):
    time.sleep(0.05)
  assert proc.poll() is None, proc.communicate()[1]
  proc.send_signal(signal.SIGTERM)
  _, stderr = proc.communicate(timeout=120)
  assert proc.returncode == 143, stderr
  assert "Traceback" not in stderr, stderr
  step = int(stderr.split("interrupted at step ")[1].split(":")[0])
  checkpoints = workdir / "checkpoints"
  assert (
    f"interrupted at step {step}: checkpoint saved in {checkpoints}; rerun the same command to resume"
    in stderr
  )
  assert _steps(workdir)[-1] == step and step >= 40 and verify_step(checkpoints, step) is None
  # The rerun (with 3 more steps to go, to keep it short) resumes from that checkpoint.
  config = zoo.get_config("digits_mlp", [f"steps={step + 3}", *overrides])
  with caplog.at_level(logging.INFO):
    result = train_and_evaluate(config, workdir, progress=False)
  assert f"resumed from the checkpoint of step {step}" in caplog.text and result["step"] == step + 3


def _steps_if_any(workdir: Path) -> list[int]:
  return _steps(workdir) if (workdir / "checkpoints").is_dir() else []


def test_nonfinite_loss_names_the_step_and_the_last_good_checkpoint(tiny_config, tmp_path):
  def config(epochs: int, learning_rate: float):
    c = tiny_config(epochs=epochs)
    c.optimizer.name = "sgd"
    c.optimizer.learning_rate = learning_rate
    return c

  train_and_evaluate(config(1, 1e-2), tmp_path, progress=False)  # Ends with a good checkpoint at step 8.
  with pytest.raises(NonFiniteLossError) as info:
    train_and_evaluate(config(2, 1e30), tmp_path, progress=False)  # Resumes from 8, then diverges.
  message = str(info.value)
  step = int(message.split(" at step ")[1].split(";")[0])
  assert 8 < step <= 16, message
  assert f"the last good checkpoint is step 8, in {tmp_path / 'checkpoints'}" in message
  assert _steps(tmp_path)[-1] == 8 and verify_step(tmp_path / "checkpoints", 8) is None
  with pytest.raises(NonFiniteLossError, match=r"at step \d+; .* there is no last good checkpoint"):
    train_and_evaluate(config(2, 1e30), tmp_path / "fresh", progress=False)


def test_skipped_nonfinite_updates_are_counted_in_the_metrics_and_the_result(tiny_config, tmp_path):
  from zoo.data import load_dataset

  data = load_dataset("synthetic_images", n_train=256, n_test=64, image_size=8)
  x = data.x_train.astype(np.float32) / 255
  x[17, 3, 3, 0] = np.nan  # One bad example: its batch's gradient is NaN, once per epoch.
  data = dataclasses.replace(data, x_train=x, x_test=data.x_test.astype(np.float32) / 255, pixel_max=1.0)
  config = tiny_config(epochs=2, data__normalization="none")
  config.optimizer.skip_nonfinite = True
  result = train_and_evaluate(config, tmp_path, progress=False, dataset=data)
  assert result["skipped_updates"] == 2 and result["train"]["skipped_updates"] == 2
  assert all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves(result["state"].params))
  assert result["test"]["accuracy"] > 0.5  # It trained on the other batches.


def test_out_of_memory_becomes_advice_with_the_config_keys(tiny_config, tmp_path):
  oom = jax.errors.JaxRuntimeError(
    "RESOURCE_EXHAUSTED: Out of memory while trying to allocate 68719476736 bytes."
  )
  with pytest.MonkeyPatch.context() as mp, pytest.raises(ZooError) as info:
    _failing_steps(mp, 7, oom)
    train_and_evaluate(tiny_config(), tmp_path, progress=False)
  message = str(info.value)
  assert message.startswith("the device ran out of memory at step 7 (RESOURCE_EXHAUSTED"), message
  for advice in (
    "--config.data.batch_size=16 --config.optimizer.accumulate_steps=2",
    "model.kwargs.remat=True",
    "--config.precision=bfloat16",
    f"the last checkpoint is step 5, in {tmp_path / 'checkpoints'}",
  ):
    assert advice in message, message
  other = jax.errors.JaxRuntimeError("INTERNAL: something else")
  with pytest.MonkeyPatch.context() as mp, pytest.raises(jax.errors.JaxRuntimeError, match="INTERNAL"):
    _failing_steps(mp, 2, other)  # Other XLA errors pass unchanged.
    train_and_evaluate(tiny_config(), tmp_path / "other", progress=False)


def _no_space(*args, **kwargs):
  raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("where", ["orbax_commit", "manifest"])
def test_a_full_disk_leaves_the_previous_checkpoint_intact(where, tiny_config, tmp_path, reference):
  from orbax.checkpoint._src.path import async_path

  real_write_text, real_write_manifest = async_path.write_text, checkpoint_lib.write_manifest

  async def write_text(path, *args, **kwargs):  # Orbax's last write of step 10: its commit marker.
    if path.name == "commit_success.txt" and path.parent.name.startswith("10.orbax-checkpoint-tmp"):
      _no_space()
    return await real_write_text(path, *args, **kwargs)

  def write_manifest(step_dir: Path) -> None:
    if step_dir.name.startswith("10."):
      _no_space()
    real_write_manifest(step_dir)

  with pytest.MonkeyPatch.context() as mp, pytest.raises(ZooError) as info:
    if where == "orbax_commit":
      mp.setattr(async_path, "write_text", write_text)
    else:
      mp.setattr(checkpoint_lib, "write_manifest", write_manifest)
    train_and_evaluate(tiny_config(), tmp_path, progress=False)
  message = str(info.value)
  assert message.startswith(
    f"no space left on the device while writing the checkpoint of step 10 in {tmp_path}"
  )
  assert "the previous checkpoint at step 8 is intact" in message and "rerun the same command" in message
  checkpoints = tmp_path / "checkpoints"
  assert _steps(tmp_path) == [5, 8] and not list(checkpoints.glob("10.*"))  # The partial save is gone.
  assert verify_step(checkpoints, 8) is None and load_run(tmp_path).step == 8
  resumed = train_and_evaluate(tiny_config(), tmp_path, progress=False)  # Once there is space again.
  assert _leaves_equal(resumed["state"].params, reference.params)
