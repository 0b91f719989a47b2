"""The fault-injection script (benchmarks/fault_injection.py): a two-kill run end to end, its checkpoint
checks against checkpoints damaged on purpose, and its clean-up on Ctrl-C."""

from __future__ import annotations

import importlib.util
import json
import random
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest
from conftest import REPO

SCRIPT = REPO / "benchmarks" / "fault_injection.py"


def _load():
  spec = importlib.util.spec_from_file_location("fault_injection", SCRIPT)
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module  # dataclasses look their module up there
  spec.loader.exec_module(module)
  return module


fi = _load()


def _alive(pid: int) -> bool:
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended
  except FileNotFoundError:
    return False


def test_two_kills_resume_from_the_newest_checkpoint_and_end_equal(tmp_path):
  """Two SIGKILLs (one aimed at a checkpoint write, one in training) on a 40-step run, then the last rerun:
  each rerun resumed from the newest intact checkpoint and the final parameters equal the uninterrupted
  run's bit for bit (~25 s: four short runs, the uninterrupted one alongside the first)."""
  out = tmp_path / "faults.jsonl"
  done = subprocess.run(
    [
      sys.executable, str(SCRIPT), "--kills", "2", "--faults", "sigkill", "--steps", "40",
      "--checkpoint-every", "2", "--seed", "3", "--json", str(out), "--quiet",
    ],
    cwd=REPO, capture_output=True, text=True, timeout=120,
  )  # fmt: skip
  assert done.returncode == 0, done.stderr[-3000:]
  assert "| fault | tried | survived | data lost | notes |" in done.stdout
  assert "| sigkill | 2 | 2 | 0 |" in done.stdout, done.stdout
  lines = [json.loads(line) for line in out.read_text().splitlines()]
  tries = [r for r in lines if r["type"] == "try"]
  assert [(r["fault"], r["kind"]) for r in tries] == [("sigkill", "write"), ("sigkill", "train")]
  for r in tries:
    assert r["survived"] and r["lost"] == [] and r["false_complete"] == []
    assert r["resumed_from"] == (r["newest_intact"] or 0), r
  (final,) = [r for r in lines if r["type"] == "final"]
  assert final["equal"] and final["max_abs_diff"] == 0.0 and final["step"] == 40
  assert final["leftover_tmp_dirs"] == []  # the last rerun cleaned up what the kills left
  (row,) = [r for r in lines if r["type"] == "row"]
  assert row["tried"] == 2 and row["survived"] == 2 and row["data_lost"] == 0
  summary = lines[-1]
  assert summary["type"] == "summary" and summary["data_lost"] == 0
  assert summary["command"].startswith("python train.py --config digits_mlp --workdir W --config.steps=40")


@pytest.fixture
def checkpoints(tmp_path):
  """Steps 1, 2 and 3 of a small pytree, written as zoo's Checkpointer writes them (one unnamed item)."""
  directory = tmp_path / "checkpoints"
  options = ocp.CheckpointManagerOptions(max_to_keep=3, create=True)
  trees = {
    s: {"params": {"w": np.arange(4096, dtype=np.float32) * s, "b": np.full(3, s, np.float32)}}
    for s in (1, 2, 3)
  }
  with ocp.CheckpointManager(directory, options=options, item_handlers=ocp.StandardCheckpointHandler()) as m:
    for step, tree in trees.items():
      m.save(step, args=ocp.args.StandardSave(tree))
    m.wait_until_finished()
  return directory, trees


def test_inspection_reads_every_step_and_notices_a_temporary_one(checkpoints):
  directory, trees = checkpoints
  shutil.copytree(directory / "3", directory / f"4{fi.TMP_MARK}")  # a write under way
  seen = fi.inspect(directory)
  assert seen.steps == seen.orbax_steps == [1, 2, 3] and seen.newest == 3
  assert seen.tmp_dirs == [f"4{fi.TMP_MARK}"] and seen.unreadable == {} and seen.false_complete == []
  assert fi.trees_equal(seen.readable[2], trees[2]) == (True, 0.0)
  assert fi.trees_equal(seen.readable[2], trees[3]) == (False, 4095.0)


def test_a_truncated_checkpoint_is_unreadable_and_counts_as_taken_for_complete(checkpoints):
  directory, _ = checkpoints
  damage = fi.corrupt(directory / "3", "truncate", random.Random(0), lambda: True)
  assert damage["truncated_to"] < damage["size"] and damage["file"].startswith("3/")
  seen = fi.inspect(directory)
  assert list(seen.unreadable) == [3] and seen.newest == 2
  assert seen.false_complete == [3]  # Orbax still lists it: a resuming run must check it itself
  # Complete before the fault and unreadable after: lost, unless three newer intact ones remain.
  assert fi.lost_steps([1, 2, 3], seen, keep=3) == [3]
  shutil.rmtree(directory / "1")
  assert fi.lost_steps([1, 2, 3], fi.inspect(directory), keep=3) == [1, 3]
  assert fi.lost_steps([1, 2, 3], fi.inspect(directory), keep=0) == []  # Orbax was due to delete them


def test_a_half_deleted_step_that_orbax_lists_is_rejected_by_zoos_checksums(tmp_path):
  """A SIGKILL while Orbax deletes a step past keep_checkpoints leaves it half-deleted under its name: Orbax
  still lists it; zoo's checksums must reject it, so that no run takes it for a whole checkpoint."""
  from zoo.train import checkpoint

  if not hasattr(checkpoint, "verify_step"):
    pytest.skip("zoo's checkpoints carry no checksums")
  directory = tmp_path / "checkpoints"
  ckpt = checkpoint.Checkpointer(directory, keep=3)
  for step in (1, 2):
    ckpt.save(step, {"w": np.arange(4096, dtype=np.float32) * step})
    ckpt.wait()
  ckpt.close()
  (directory / "1" / "default" / "_METADATA").unlink()  # as rmtree leaves it, part of the way through
  seen = fi.inspect(directory)
  assert seen.orbax_steps == [1, 2] and seen.listed_unreadable == [1] and seen.newest == 2
  assert list(seen.rejected) == [1] and seen.false_complete == []


def test_a_bit_flip_is_retried_until_the_checkpoint_reads_differently(checkpoints):
  directory, trees = checkpoints
  target = fi.largest_file(directory / "2")
  original = np.frombuffer(target.read_bytes(), np.uint8)

  def unchanged() -> bool:
    try:
      return fi.trees_equal(fi.read_checkpoint(directory, 2), trees[2])[0]
    except Exception:
      return False

  damage = fi.corrupt(directory / "2", "bitflip", random.Random(1), unchanged)
  assert damage["effective"] and 1 <= damage["attempts"] <= 64
  assert not unchanged()
  flipped = np.unpackbits(np.frombuffer(target.read_bytes(), np.uint8) ^ original)
  assert flipped.sum() == 1  # one bit; the flips that changed nothing were put back
  assert damage["offset"] * 8 + 7 - damage["bit"] == int(np.flatnonzero(flipped)[0])


def test_a_bit_flip_that_never_reaches_the_data_leaves_the_file_as_it_was(checkpoints):
  directory, _ = checkpoints
  target = fi.largest_file(directory / "1")
  original = target.read_bytes()
  damage = fi.corrupt(directory / "1", "bitflip", random.Random(2), lambda: True)
  assert damage["effective"] is False and damage["attempts"] == 64 and target.read_bytes() == original


def test_ctrl_c_stops_every_training_process():
  proc = subprocess.Popen(
    [
      sys.executable, str(SCRIPT), "--kills", "1", "--faults", "sigkill", "--steps", "40",
      "--checkpoint-every", "2",
    ],
    cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
  )  # fmt: skip
  pids = []
  try:
    while len(pids) < 2:  # the uninterrupted run and the first one to be killed
      line = proc.stderr.readline()
      assert line, "the script ended before starting two runs"
      if ": pid " in line:
        pids.append(int(line.rsplit(" ", 1)[1]))
    time.sleep(0.5)
    assert all(_alive(pid) for pid in pids)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
  finally:
    if proc.poll() is None:
      proc.kill()
  assert proc.returncode == 130 and "interrupted" in err
  assert not any(_alive(pid) for pid in pids), pids
