"""Fault injection for checkpointed training: killed, terminated and corrupted runs must resume losslessly.

    python benchmarks/fault_injection.py [--kills 20] [--config digits_mlp] [--seed 0] [--json FILE]

Runs `python train.py --config NAME --workdir W --config.steps=S --config.checkpoint_every_steps=E
--no-progress` and injects faults into it, rerunning the same command after each one:
- sigkill: SIGKILL `--kills` times in a row in one work directory, at random moments, in turn: aimed at
  a checkpoint being written (the n-th new `<step>.orbax-checkpoint-tmp` directory, then a random delay of
  up to `--write-delay` s), at a random time in training, just after a checkpoint's rename (when Orbax
  deletes the steps past keep_checkpoints), again at a write and in training, and during start-up
  (imports, restore, clean-up of temporary directories, compilation);
- truncate / bitflip (`--other-faults` tries each, a work directory per try): SIGKILL a run once it has a
  few checkpoints, then cut the newest checkpoint's largest file short, or flip one bit of it (another bit
  while the flip changes nothing the checkpoint reads back), then rerun;
- sigterm (`--other-faults` in a row in one work directory): SIGTERM, as a scheduler does before
  preempting; the run may save and exit; SIGKILL if it is still running after `--grace` s.

After each fault and before the rerun it lists the step directories and checks that every step Orbax takes
for complete (`all_steps`) reads back in full. The rerun must resume from the newest intact checkpoint (its
log line "resumed from the checkpoint of step N") and go on (it is killed later while still running, or
ends well): then the fault counts as survived. The last rerun in each work directory trains to the end and
its final parameters (`zoo.train.restore.load_run(workdir).variables`) are compared with those of an
uninterrupted run of the same command: they must be equal bit for bit (on CPU the step is deterministic
and the data order a function of (seed, step); `--atol` relaxes that for other platforms).

"Data lost", per fault: checkpoints complete before the fault that are gone or unreadable after it
(leaving out those Orbax was due to delete, `keep_checkpoints` newer ones being intact, and the one a
corruption fault damaged on purpose), plus one per work directory whose final parameters differ from the
uninterrupted run's or that could not train to the end. Prints a Markdown table (fault | tried | survived
| data lost | notes); `--json FILE` writes a JSON line per fault, per work directory and per table row.
Ctrl-C (or SIGTERM) stops every training process it started.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TMP_MARK = ".orbax-checkpoint-tmp"  # Orbax writes step N into N.orbax-checkpoint-tmp, then renames it N.
RESUMED = re.compile(r"resumed from the checkpoint of step (\d+)")
STARTED = re.compile(r"[\d,]+ parameters, \d+ steps \(")  # logged once the state is restored, before training
# A save on SIGTERM: a line after the signal that names it (or a termination) and a step.
SIGNAL_SAVED = re.compile(r"(?im)^(?=.*(?:sigterm|signal|terminat|preempt|interrupt)).*?\bstep (\d+)")
KILL_KINDS = ("write", "train", "commit", "write", "train", "startup")  # the sigkill chain's moments, in turn
FAULTS = ("sigkill", "truncate", "bitflip", "sigterm")
POLL_S = 0.0005

_LIVE: list[subprocess.Popen] = []  # training processes started and not yet reaped


def kill_children() -> None:
  """SIGKILLs every training process still running (each leads its own process group) and reaps it."""
  while _LIVE:
    proc = _LIVE.pop()
    if proc.poll() is None:
      with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _interrupt(signum, frame) -> None:
  raise KeyboardInterrupt  # A SIGTERM to this script cleans up as Ctrl-C does.


class Training:
  """One `python train.py ...` process in its own session (so Ctrl-C in a terminal reaches only this
  script, which then kills it), its output going to a log file that `poll` reads as it grows."""

  def __init__(self, command: list[str], log_path: Path, steps: list[int], tmp_dirs: set[str]):
    self.log_path = log_path
    self._out = open(log_path, "wb")  # Closed in `close`.
    self.proc = subprocess.Popen(
      command,
      cwd=REPO,
      stdin=subprocess.DEVNULL,
      stdout=self._out,
      stderr=subprocess.STDOUT,
      start_new_session=True,
    )
    _LIVE.append(self.proc)
    self._in = open(log_path, encoding="utf-8", errors="replace")
    self.launched = time.monotonic()
    self.started: float | None = None  # when it logged the start of training (after any restore)
    self.resumed_from: int | None = None  # set with `started`; 0 when it started afresh
    self.text = ""
    self.killed = False  # ended by us with SIGKILL
    # Orbax's temporary directories: those present at the last look, and those that appeared while this
    # process ran (checkpoint writes it started; a leftover of an earlier run appears only once removed).
    self.tmp_dirs = set(tmp_dirs)
    self.writes: list[str] = []
    self.first_write: float | None = None  # when the first of them appeared (training is under way)
    self.steps = set(steps)  # the step directories, and the new ones as they appeared: (time, step)
    self.commits: list[tuple[float, int]] = []

  @property
  def pid(self) -> int:
    return self.proc.pid

  def saw(self, now: float, steps: list[int], tmp_dirs: set[str]) -> None:
    """Notes a look at the checkpoint directory (one every POLL_S: writes take milliseconds at least)."""
    self.writes += sorted(tmp_dirs - self.tmp_dirs)
    self.tmp_dirs = tmp_dirs
    if self.writes and self.first_write is None:
      self.first_write = now
    self.commits += [(now, s) for s in sorted(set(steps) - self.steps)]
    self.steps |= set(steps)

  def rate(self) -> tuple[float, float] | None:
    """(steps per second, over how many seconds) between this run's first and last new checkpoints."""
    if len(self.commits) < 2:
      return None
    (t0, s0), (t1, s1) = self.commits[0], self.commits[-1]
    return ((s1 - s0) / (t1 - t0), t1 - t0) if t1 > t0 and s1 > s0 else None

  def poll(self) -> bool:
    """Reads new output; True while the process runs."""
    running = self.proc.poll() is None  # Checked first: what it wrote before exiting is read below.
    chunk = self._in.read()
    if chunk:
      self.text += chunk
      if self.started is None and STARTED.search(self.text):
        self.started = time.monotonic()
        match = RESUMED.search(self.text)
        self.resumed_from = int(match.group(1)) if match else 0
    return running

  def send(self, sig: int) -> None:
    """SIGKILL goes to the whole process group; other signals to the process, as a scheduler sends them."""
    with contextlib.suppress(ProcessLookupError):
      if sig == signal.SIGKILL:
        self.killed = True
        os.killpg(self.pid, sig)
      else:
        os.kill(self.pid, sig)

  def wait(self, timeout: float | None = None) -> int | None:
    try:
      code = self.proc.wait(timeout)
    except subprocess.TimeoutExpired:
      return None
    self.poll()
    return code

  def close(self) -> None:
    if self.proc.poll() is None:
      self.send(signal.SIGKILL)
    self.wait()
    if self.proc in _LIVE:
      _LIVE.remove(self.proc)
    self._out.close()
    self._in.close()

  def tail(self, lines: int = 3) -> str:
    return " | ".join(line.strip() for line in self.text.strip().splitlines()[-lines:])


# ---------------------------------------------------------------------------------------------------
# What is on disk.


def listing(ckpt_dir: Path) -> tuple[list[int], set[str]]:
  """The step directories (numeric names) in `ckpt_dir`, and Orbax's temporary ones."""
  steps, tmps = [], set()
  with contextlib.suppress(FileNotFoundError), os.scandir(ckpt_dir) as entries:
    for entry in entries:
      if entry.name.isdigit():
        steps.append(int(entry.name))
      elif TMP_MARK in entry.name:
        tmps.add(entry.name)
  return sorted(steps), tmps


def read_checkpoint(ckpt_dir: Path, step: int) -> Any:
  """Everything checkpoint `step` holds (parameters, optimiser state, step, ...) as numpy arrays; raises
  when any of it cannot be read."""
  import jax
  import orbax.checkpoint as ocp

  item = ckpt_dir / str(step) / "default"  # zoo's Checkpointer saves one unnamed item
  if not item.is_dir():
    raise FileNotFoundError(f"{item} is missing")
  with ocp.PyTreeCheckpointer() as checkpointer:
    tree = checkpointer.restore(item)
  return jax.tree.map(np.asarray, tree)


def orbax_steps(ckpt_dir: Path) -> list[int]:
  """The steps Orbax takes for complete (those a resuming run picks from), read without changing anything."""
  import orbax.checkpoint as ocp

  if not ckpt_dir.is_dir():
    return []
  options = ocp.CheckpointManagerOptions(create=False, read_only=True)
  with ocp.CheckpointManager(ckpt_dir, options=options) as manager:
    return sorted(int(s) for s in manager.all_steps())


def zoo_verdict(ckpt_dir: Path, step: int) -> str | None:
  """Why zoo's own check of a checkpoint (`zoo.train.checkpoint.verify_step`: its files against their
  checksums) rejects it; None when it passes, or when zoo has no such check."""
  from zoo.train import checkpoint

  verify = getattr(checkpoint, "verify_step", None)
  return None if verify is None else verify(ckpt_dir, step)


@dataclasses.dataclass
class Inspection:
  """The checkpoint directory after a fault."""

  steps: list[int]  # numeric directories
  tmp_dirs: list[str]
  orbax_steps: list[int]  # what Orbax lists as complete
  readable: dict[int, Any]  # step -> its tree: every array read back
  unreadable: dict[int, str]  # step -> why
  rejected: dict[int, str]  # step -> why zoo's checksums reject it

  @property
  def newest(self) -> int | None:
    """The newest intact checkpoint: the one a rerun must resume from."""
    return max(self.readable, default=None)

  @property
  def false_complete(self) -> list[int]:
    """Steps a run would take for complete (Orbax lists them and zoo's check passes) that do not read back:
    a half-written checkpoint taken for a whole one."""
    return [s for s in self.orbax_steps if s not in self.readable and s not in self.rejected]

  @property
  def listed_unreadable(self) -> list[int]:
    """Steps Orbax lists as complete that do not read back, whatever zoo makes of them (a step SIGKILLed
    while Orbax deleted it, past keep_checkpoints, keeps its name)."""
    return [s for s in self.orbax_steps if s not in self.readable]


def inspect(ckpt_dir: Path) -> Inspection:
  steps, tmps = listing(ckpt_dir)
  readable, unreadable, rejected = {}, {}, {}
  for step in steps:
    try:
      readable[step] = read_checkpoint(ckpt_dir, step)
    except Exception as e:  # Any failure to read is the finding.
      unreadable[step] = f"{type(e).__name__}: {_first_line(e)}"
    if (why := zoo_verdict(ckpt_dir, step)) is not None:
      rejected[step] = why
  return Inspection(steps, sorted(tmps), orbax_steps(ckpt_dir), readable, unreadable, rejected)


def _first_line(error: BaseException) -> str:
  text = str(error).strip()
  return text.splitlines()[0][:200] if text else ""


def lost_steps(before: list[int], after: Inspection, keep: int) -> list[int]:
  """Steps complete before a fault that are gone or unreadable after it, leaving out those Orbax was due to
  delete anyway (`keep` newer intact checkpoints remain)."""
  return [s for s in before if s not in after.readable and sum(t > s for t in after.readable) < keep]


def trees_equal(a: Any, b: Any, atol: float = 0.0) -> tuple[bool, float]:
  """(equal, max abs difference): the same structure, dtypes and shapes, values equal (within `atol`)."""
  import jax

  leaves_a, def_a = jax.tree.flatten(a)
  leaves_b, def_b = jax.tree.flatten(b)
  if def_a != def_b or len(leaves_a) != len(leaves_b):
    return False, float("inf")
  equal, diff = True, 0.0
  for x, y in zip(leaves_a, leaves_b, strict=True):
    x, y = np.asarray(x), np.asarray(y)
    if x.shape != y.shape or x.dtype != y.dtype:
      return False, float("inf")
    if x.size:
      with np.errstate(all="ignore"):  # a flipped bit may make a NaN or an infinity
        d = float(np.max(np.abs(x.astype(np.float64) - y.astype(np.float64))))
      diff = max(diff, d if np.isfinite(d) else float("inf"))
    equal &= bool(np.array_equal(x, y, equal_nan=True) if atol == 0 else np.allclose(x, y, rtol=0, atol=atol))
  return equal, diff


def largest_file(directory: Path) -> Path:
  return max((p for p in directory.rglob("*") if p.is_file()), key=lambda p: (p.stat().st_size, str(p)))


def corrupt(step_dir: Path, mode: str, rng: random.Random, unchanged: Callable[[], bool]) -> dict[str, Any]:
  """Damages the largest file of a checkpoint: `truncate` cuts it to a random length shorter than it was;
  `bitflip` flips one random bit, and while `unchanged()` (the checkpoint still reads back as before: the
  bit was padding or unused) puts it back and tries another, up to 64 times."""
  path = largest_file(step_dir)
  size = path.stat().st_size
  damage: dict[str, Any] = {"file": str(path.relative_to(step_dir.parent)), "size": size}
  if mode == "truncate":
    length = rng.randrange(size)
    os.truncate(path, length)
    return {**damage, "truncated_to": length}
  if mode != "bitflip":
    raise ValueError(f"unknown corruption {mode!r}")
  data = bytearray(path.read_bytes())
  for attempt in range(1, 65):
    offset, bit = rng.randrange(size), rng.randrange(8)
    data[offset] ^= 1 << bit
    path.write_bytes(data)
    if not unchanged():
      return {**damage, "offset": offset, "bit": bit, "attempts": attempt, "effective": True}
    data[offset] ^= 1 << bit
  path.write_bytes(data)
  return {**damage, "attempts": 64, "effective": False}


# ---------------------------------------------------------------------------------------------------
# The harness.


class Harness:
  def __init__(self, args: argparse.Namespace, root: Path):
    self.args = args
    self.root = root
    self.rng = random.Random(args.seed)
    (root / "logs").mkdir(parents=True, exist_ok=True)
    self._rate: tuple[float, float] | None = None  # training steps/s (checkpoints included), over s
    self.startups: list[float] = []  # seconds from launch to the first checkpoint write
    self.keep = 3
    self._reference: Training | None = None
    self._reference_params: dict[str, Any] | None = None
    self.records: list[dict[str, Any]] = []  # one per fault tried
    self.finals: list[dict[str, Any]] = []  # one per work directory trained to the end
    self.progress = sys.stderr

  # --- processes -----------------------------------------------------------------------------------

  def command(self, workdir: Path) -> list[str]:
    a = self.args
    return [
      sys.executable, "train.py", "--config", a.config, "--workdir", str(workdir),
      f"--config.steps={a.steps}", f"--config.checkpoint_every_steps={a.checkpoint_every}", "--no-progress",
      *a.overrides,
    ]  # fmt: skip

  def launch(self, workdir: Path, label: str) -> Training:
    steps, tmp_dirs = listing(workdir / "checkpoints")
    run = Training(self.command(workdir), self.root / "logs" / f"{label}.log", steps, tmp_dirs)
    self.say(f"  {label}: pid {run.pid}")
    return run

  def _checkpoints_record(self, before: list[int], after: Inspection) -> dict[str, Any]:
    """What a fault did to the checkpoints: the steps before and after it, and what reads back."""
    return {
      "steps_before": before,
      "steps_after": after.steps,
      "orbax_steps": after.orbax_steps,
      "unreadable": after.unreadable,
      "zoo_rejects": after.rejected,
      "listed_unreadable": after.listed_unreadable,
      "false_complete": after.false_complete,
      "lost": lost_steps(before, after, self.keep),
      "newest_intact": after.newest,
    }

  def say(self, message: str) -> None:
    if not self.args.quiet:
      print(message, file=self.progress, flush=True)

  def watch(
    self, run: Training, ckpt_dir: Path, act: Callable[[float, list[int]], bool], timeout: float
  ) -> tuple[str, list[int]]:
    """Polls the run's output and checkpoint directory until `act(now, steps)` says to act ("act"), the run
    exits ("exited") or `timeout` s pass ("timeout"). Returns that and the last look's steps (just before
    acting)."""
    end = time.monotonic() + timeout
    while True:
      running = run.poll()
      now = time.monotonic()
      steps, tmps = listing(ckpt_dir)
      first_write = run.first_write
      run.saw(now, steps, tmps)
      if first_write is None and run.first_write is not None:
        self.startups.append(run.first_write - run.launched)
      rate = run.rate()
      if rate is not None and (self._rate is None or rate[1] >= self._rate[1]):
        self._rate = rate  # the longest stretch seen
      if not running:
        run.wait()
        return "exited", steps
      if act(now, steps):
        return "act", steps
      if now > end:
        return "timeout", steps
      time.sleep(POLL_S)

  def startup_s(self) -> float:
    """Seconds from launch to the first checkpoint write: imports, restore, clean-up, compilation."""
    return float(np.median(self.startups)) if self.startups else 5.0

  def train_window(self, newest: int | None, kills_left: int) -> float:
    """How long after a run's first checkpoint write a random kill may come: about 1.5x the training time
    left per kill left, so that the runs still have steps to go when the kills are done."""
    if self._rate is None:
      return 1.0
    remaining_s = max(self.args.steps - (newest or 0), 0) / self._rate[0]
    return max(0.05, 1.5 * remaining_s / (kills_left + 1))

  # --- verdicts ------------------------------------------------------------------------------------

  def settle(self, pending: list[dict[str, Any]], run: Training, outcome: str) -> None:
    """Judges the faults waiting on a rerun, once a rerun got as far as resuming (or failed): each survived
    when the rerun resumed from the newest intact checkpoint there was after it and went on (was still
    running when the next fault came, or ended well), with no checkpoint lost and none half-written taken
    for whole. `outcome` is `watch`'s: "act" when the run was running as the next fault came."""
    if not pending or (run.started is None and outcome == "act"):
      return  # stopped before it resumed: the next rerun judges them
    went_on = run.started is not None and (outcome == "act" or run.proc.returncode == 0)
    for record in pending:
      record["resumed_from"] = run.resumed_from
      record["rerun"] = run.log_path.stem
      record["rerun_exit"] = "running" if outcome == "act" else run.proc.returncode
      expected = record["newest_intact"] or 0
      ok = went_on and run.resumed_from == expected
      record["survived"] = ok and not record["false_complete"] and not record["lost"]
      if not ok:
        record["error"] = (
          f"expected to resume from step {expected}, resumed from {run.resumed_from}, exit "
          f"{record['rerun_exit']} ({outcome}): {run.tail()}"
        )
    pending.clear()

  def reference_params(self) -> dict[str, Any]:
    if self._reference_params is None:
      if self._reference is None:
        self.start_reference()
      run = self._reference
      code = run.wait(self.args.run_timeout)
      run.close()
      if code != 0:
        raise RuntimeError(f"the uninterrupted reference run failed (exit {code}): {run.tail(5)}")
      self._reference_params = final_parameters(self.root / "reference")
    return self._reference_params

  def start_reference(self) -> None:
    """The uninterrupted run, started at once: it trains alongside the first faults."""
    self._reference = self.launch(self.root / "reference", "reference")

  def finish(self, fault: str, workdir: Path, pending: list[dict[str, Any]]) -> dict[str, Any]:
    """Reruns to the end; compares the final parameters with the uninterrupted run's."""
    run = self.launch(workdir, f"{workdir.name}-final")
    outcome, _ = self.watch(run, workdir / "checkpoints", lambda *_: False, self.args.run_timeout)
    run.close()
    self.settle(pending, run, outcome)
    final = {"type": "final", "fault": fault, "workdir": workdir.name, "exit": run.proc.returncode}
    if run.proc.returncode != 0:
      final.update(equal=False, max_abs_diff=None, error=f"the last rerun failed ({outcome}): {run.tail()}")
    else:
      ref = self.reference_params()
      got = final_parameters(workdir)
      equal, diff = trees_equal(got["variables"], ref["variables"], self.args.atol)
      final.update(equal=equal and got["step"] == ref["step"], max_abs_diff=diff, step=got["step"])
      final["leftover_tmp_dirs"] = sorted(listing(workdir / "checkpoints")[1])
    self.finals.append(final)
    self.say(
      f"  {workdir.name}: final parameters {'equal' if final['equal'] else 'DIFFER'} to the uninterrupted "
      f"run's (max abs diff {final['max_abs_diff']})"
    )
    return final

  def _read_keep(self, workdir: Path) -> None:
    with contextlib.suppress(OSError, ValueError, KeyError):
      self.keep = int(json.loads((workdir / "config.json").read_text())["keep_checkpoints"])

  # --- faults --------------------------------------------------------------------------------------

  def sigkill_chain(self) -> None:
    """`--kills` SIGKILLs in a row in one work directory, each followed by a rerun of the same command."""
    workdir = self.root / "sigkill"
    ckpt = workdir / "checkpoints"
    pending: list[dict[str, Any]] = []
    index = crashes = 0
    while index < self.args.kills:
      kind = KILL_KINDS[index % len(KILL_KINDS)]
      label = f"sigkill-{index + 1:02d}-{kind}"
      steps0, _ = listing(ckpt)
      run = self.launch(workdir, label)
      act, plan = self.kill_moment(kind, run, max(steps0, default=0), self.args.kills - index)
      outcome, before = self.watch(run, ckpt, act, self.args.run_timeout)
      if outcome != "exited":
        run.send(signal.SIGKILL)
      run.close()
      self.settle(pending, run, outcome)
      self._read_keep(workdir)
      if outcome == "exited":
        if run.proc.returncode == 0:
          self.say(f"  {label}: the run ended before the kill: {index} kills done")
          break
        crashes += 1
        self.say(f"  {label}: exit {run.proc.returncode} before the kill: {run.tail()}")
        if crashes >= 3:
          self.say("  three reruns failed: the sigkill chain stops here")
          return
        continue
      after = inspect(ckpt)
      hit = sorted(listing(ckpt)[1] & set(run.writes))  # a write it started, still under way
      record = {
        "type": "try",
        "fault": "sigkill",
        "index": index + 1,
        "kind": kind,
        "plan": plan,
        "seconds_after_launch": round(time.monotonic() - run.launched, 3),
        "resumed_at_start": run.resumed_from,
        "hit_write": bool(hit),
        "tmp_dirs_at_kill": hit,
        **self._checkpoints_record(before, after),
      }
      self.records.append(record)
      pending.append(record)
      half = f", half-deleted {after.listed_unreadable}" if after.listed_unreadable else ""
      self.say(
        f"sigkill {index + 1}/{self.args.kills} ({kind}): killed {record['seconds_after_launch']} s after "
        f"launch; steps {after.steps}{', mid-write ' + str(hit) if hit else ''}{half}; newest intact "
        f"{after.newest}"
      )
      index += 1
    if index or pending:
      self.finish("sigkill", workdir, pending)

  def kill_moment(self, kind: str, run: Training, newest: int, kills_left: int):
    """(act, plan): when to kill, for the chain's `kind` of moment."""
    rng = self.rng
    if kind == "write":  # the n-th checkpoint this run starts writing, a random moment into it
      nth, delay = rng.randint(1, 3), rng.uniform(0.0, self.args.write_delay)
      due: list[float] = []

      def act(now: float, steps: list[int]) -> bool:
        if not due and len(run.writes) >= nth:
          due.append(now + delay)
        return bool(due) and now >= due[0]

      return act, {"nth_write": nth, "delay_s": round(delay, 4)}
    if kind == "commit":  # just as the n-th checkpoint is renamed: Orbax then deletes the oldest ones
      nth, delay = rng.randint(1, 3), rng.uniform(0.0, 0.01)
      seen: list[set[int]] = []
      due = []

      def act(now: float, steps: list[int]) -> bool:
        if not seen:
          seen.append(set(steps))
        new = set(steps) - seen[0]
        if not due and len(new) >= nth:
          due.append(now + delay)
        return bool(due) and now >= due[0]

      return act, {"nth_commit": nth, "delay_s": round(delay, 4)}
    if kind == "train":  # a random moment in training (once its first checkpoint write began)
      delay = rng.uniform(0.0, self.train_window(newest, kills_left))
      act = lambda now, *_: run.first_write is not None and now >= run.first_write + delay
      return act, {"after_first_write_s": round(delay, 3)}
    delay = rng.uniform(0.0, self.startup_s())  # start-up: imports, restore, clean-up, compilation
    return (lambda now, *_: now >= run.launched + delay), {"after_launch_s": round(delay, 3)}

  def corruption_try(self, mode: str, index: int) -> None:
    """SIGKILL a run once it has a few checkpoints, damage the newest, rerun to the end."""
    workdir = self.root / f"{mode}-{index}"
    ckpt = workdir / "checkpoints"
    every, steps = self.args.checkpoint_every, self.args.steps
    target = self.rng.randint(2, max(2, steps // every // 2)) * every  # the checkpoint to stop after
    run = self.launch(workdir, f"{mode}-{index}")
    outcome, _ = self.watch(run, ckpt, lambda now, s: len(s) >= 2 and s[-1] >= target, self.args.run_timeout)
    run.close()
    self._read_keep(workdir)
    record: dict[str, Any] = {"type": "try", "fault": mode, "index": index, "survived": False, "lost": []}
    self.records.append(record)
    before = inspect(ckpt)
    intact_before = sorted(before.readable)
    if len(intact_before) < 2:
      record["error"] = f"the run left {intact_before} ({outcome}: {run.tail()}), not two checkpoints"
      self.say(f"{mode} {index}: {record['error']}")
      return
    newest = intact_before[-1]
    original = before.readable[newest]

    def unchanged() -> bool:
      try:
        return trees_equal(read_checkpoint(ckpt, newest), original)[0]
      except Exception:
        return False

    damage = corrupt(ckpt / str(newest), mode, self.rng, unchanged)
    after = inspect(ckpt)
    if newest in after.unreadable:
      state = "unreadable"
    else:
      state = "unchanged" if trees_equal(after.readable[newest], original)[0] else "reads changed values"
    intact = [s for s in after.readable if s != newest or state == "unchanged"]
    record.update(
      steps_before=intact_before,
      damaged_step=newest,
      damage=damage,
      damaged_reads=state,
      zoo_rejects=after.rejected,
      orbax_steps=after.orbax_steps,
      false_complete=[],  # the damaged step is listed on purpose; judged by what the rerun does with it
      lost=[s for s in lost_steps(intact_before, after, self.keep) if s != newest],
      newest_intact=max(intact, default=None),
    )
    final = self.finish(mode, workdir, [record])
    record["resumed_from_damaged"] = record.get("resumed_from") == newest and state != "unchanged"
    record["survived"] = bool(record.get("survived")) and final["equal"]
    self.say(
      f"{mode} {index}: damaged step {newest} ({state}); resumed from {record.get('resumed_from')} "
      f"(newest intact {record['newest_intact']}); {'survived' if record['survived'] else 'FAILED'}"
    )

  def sigterm_chain(self, tries: int) -> None:
    """SIGTERM `tries` times in a row in one work directory, each followed by a rerun."""
    workdir = self.root / "sigterm"
    ckpt = workdir / "checkpoints"
    pending: list[dict[str, Any]] = []
    for index in range(1, tries + 1):
      steps0, _ = listing(ckpt)
      run = self.launch(workdir, f"sigterm-{index}")
      delay = self.rng.uniform(0.2, max(0.3, self.train_window(max(steps0, default=0), tries - index + 1)))
      act = lambda now, *_, run=run, delay=delay: (
        run.first_write is not None and now >= run.first_write + delay
      )
      outcome, before = self.watch(run, ckpt, act, self.args.run_timeout)
      self.settle(pending, run, outcome)
      if outcome != "act":
        self.say(f"  sigterm-{index}: the run ended ({outcome}) before the signal: {run.tail()}")
        run.close()
        break
      offset = len(run.text)
      signalled = time.monotonic()
      run.send(signal.SIGTERM)
      code = run.wait(self.args.grace)
      needed_kill = code is None
      run.close()
      self._read_keep(workdir)
      said = SIGNAL_SAVED.search(run.text[offset:])
      after = inspect(ckpt)
      record = {
        "type": "try",
        "fault": "sigterm",
        "index": index,
        "after_first_write_s": round(delay, 3),
        "exit": run.proc.returncode,
        "exit_s": round(time.monotonic() - signalled, 3),
        "needed_sigkill": needed_kill,
        "said_saved_step": int(said.group(1)) if said else None,
        "said": said.group(0).strip() if said else None,
        **self._checkpoints_record(before, after),
      }
      self.records.append(record)
      pending.append(record)
      self.say(
        f"sigterm {index}/{tries}: exit {record['exit']} after {record['exit_s']} s"
        f"{' (SIGKILL needed)' if needed_kill else ''}; said {record['said']!r}; newest intact {after.newest}"
      )
    sigterms = [r for r in self.records if r["fault"] == "sigterm"]
    if sigterms:
      self.finish("sigterm", workdir, pending)
    for r in sigterms:
      said = r["said_saved_step"]
      r["resumed_where_it_said"] = said is not None and r.get("resumed_from") == said
      r["survived"] = bool(r.get("survived")) and not r["needed_sigkill"]

  # --- results -------------------------------------------------------------------------------------

  def rows(self) -> list[dict[str, Any]]:
    rows = []
    for fault in FAULTS:
      tries = [r for r in self.records if r["fault"] == fault]
      finals = [f for f in self.finals if f["fault"] == fault]
      if not tries:
        continue
      mismatched = sum(not f["equal"] for f in finals)
      if fault == "sigkill":
        mismatched += not finals  # the chain stopped before its last rerun
      lost = sum(len(r["lost"]) for r in tries) + mismatched
      row = {
        "type": "row",
        "fault": fault,
        "tried": len(tries),
        "survived": sum(bool(r.get("survived")) for r in tries),
        "data_lost": lost,
        "final_equal": f"{sum(f['equal'] for f in finals)}/{len(finals)}",
        "max_abs_diff": max(
          (f["max_abs_diff"] for f in finals if f["max_abs_diff"] is not None), default=None
        ),
      }
      row["notes"] = self.notes(fault, tries, finals, row)
      rows.append(row)
    return rows

  def notes(self, fault: str, tries: list[dict], finals: list[dict], row: dict) -> str:
    n = len(tries)
    eq = f"final parameters equal to the uninterrupted run's in {row['final_equal']} work directories"
    if row["max_abs_diff"]:
      eq += f" (max abs diff {row['max_abs_diff']:.3g})"
    false_complete = sum(bool(r.get("false_complete")) for r in tries)
    half = f"; {false_complete} left a half-written step taken for complete" if false_complete else ""
    listed = [r for r in tries if r.get("listed_unreadable")]
    if listed:
      caught = sum(set(r["listed_unreadable"]) <= {int(s) for s in r["zoo_rejects"]} for r in listed)
      taken = sum(r.get("resumed_from") in r["listed_unreadable"] for r in listed)
      half += (
        f"; {len(listed)} of {n} left Orbax listing a half-deleted old step as complete (zoo's checksums "
        f"rejected it {caught}/{len(listed)}, resumed from {taken})"
      )
    if fault == "sigkill":
      hits = sum(r["hit_write"] for r in tries)
      aimed = sum(r["kind"] == "write" for r in tries)
      commits = sum(r["kind"] == "commit" for r in tries)
      return (
        f"{hits} of {n} kills hit a checkpoint write ({aimed} aimed at one, {commits} at a commit and its "
        f"clean-up){half}; {eq}"
      )
    if fault == "sigterm":
      said = sum(r["said_saved_step"] is not None for r in tries)
      where = sum(r["resumed_where_it_said"] for r in tries)
      itself = sum(not r["needed_sigkill"] for r in tries)
      return (
        f"exited by itself {itself}/{n}; said it saved {said}/{n}; resumed from the step it saved at "
        f"{where}/{n}{half}; {eq}"
      )
    damaged = sum(r.get("damaged_reads") in ("unreadable", "reads changed values") for r in tries)
    fell_back = sum(
      r.get("resumed_from") is not None and r.get("resumed_from") != r.get("damaged_step") for r in tries
    )
    from_damaged = sum(bool(r.get("resumed_from_damaged")) for r in tries)
    failed = sum(r.get("resumed_from") is None for r in tries)
    return (
      f"damage reached the data in {damaged}/{n}; resumed from an older intact checkpoint {fell_back}, from "
      f"the damaged one {from_damaged}, failed to resume {failed}; {eq}"
    )


def final_parameters(workdir: Path) -> dict[str, Any]:
  """The trained variables as `load_run` reads them (numpy), and their step."""
  import jax

  from zoo.train.restore import load_run

  run = load_run(workdir)
  return {"step": run.step, "variables": jax.tree.map(np.asarray, run.variables)}


def markdown(rows: list[dict[str, Any]]) -> str:
  lines = ["| fault | tried | survived | data lost | notes |", "|---|---:|---:|---:|---|"]
  lines += [
    f"| {r['fault']} | {r['tried']} | {r['survived']} | {r['data_lost']} | {r['notes']} |" for r in rows
  ]
  return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--kills", type=int, default=20, help="SIGKILLs in a row (default 20)")
  parser.add_argument("--config", default="digits_mlp", help="config to train (default digits_mlp)")
  parser.add_argument("--seed", type=int, default=0, help="seeds the moments and the damage (default 0)")
  parser.add_argument("--json", type=Path, metavar="FILE", help="write JSON lines here")
  parser.add_argument("--steps", type=int, default=400, help="training steps of each run (default 400)")
  parser.add_argument("--checkpoint-every", type=int, default=5, help="steps between checkpoints (default 5)")
  parser.add_argument(
    "--other-faults", type=int, default=3, help="tries of truncate, bitflip and sigterm each (default 3)"
  )
  parser.add_argument(
    "--faults", default=",".join(FAULTS), help=f"which to inject (default {','.join(FAULTS)})"
  )
  parser.add_argument(
    "--write-delay", type=float, default=0.03, help="aimed kills land up to this many s into a write"
  )
  parser.add_argument("--grace", type=float, default=30.0, help="s a SIGTERMed run may take to exit")
  parser.add_argument("--run-timeout", type=float, default=300.0, help="s any one run may take")
  parser.add_argument("--atol", type=float, default=0.0, help="tolerance of the final comparison (default 0)")
  parser.add_argument("--root", type=Path, help="put the work directories here and keep them (default: temp)")
  parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
  parser.add_argument("overrides", nargs="*", help="more train.py arguments, e.g. --config.seed=1 (after --)")
  args = parser.parse_args(argv)
  faults = [f.strip() for f in args.faults.split(",") if f.strip()]
  if unknown := [f for f in faults if f not in FAULTS]:
    parser.error(f"unknown faults {unknown}; choose from {', '.join(FAULTS)}")
  args.faults = faults
  if args.kills < 0 or args.other_faults < 0 or args.steps < 4 * args.checkpoint_every:
    parser.error("--kills and --other-faults must be >= 0, and --steps at least 4 checkpoint intervals")
  return args


@contextlib.contextmanager
def stderr_to(path: Path):
  """Sends this process's file descriptor 2 to `path` (appending) and yields a stream on the original: what
  Orbax's reader threads print after reading a damaged checkpoint goes to the file, progress to the
  stream."""
  sys.stderr.flush()
  saved = os.dup(2)
  with open(path, "ab") as log_file:
    os.dup2(log_file.fileno(), 2)
  progress = open(os.dup(saved), "w", buffering=1)  # Closed below.
  try:
    yield progress
  finally:
    progress.close()
    sys.stderr.flush()
    os.dup2(saved, 2)
    os.close(saved)


def main(argv: list[str] | None = None) -> int:
  args = parse_args(argv)
  logging.getLogger("absl").setLevel(logging.ERROR)  # Orbax's notes on metadata it does not need
  warnings.filterwarnings("ignore", module="orbax")
  previous = signal.signal(signal.SIGTERM, _interrupt)
  root = args.root or Path(tempfile.mkdtemp(prefix="zoo_faults_"))
  if args.root and args.root.exists() and any(args.root.iterdir()):
    print(f"error: --root {args.root} is not empty", file=sys.stderr)
    return 2
  started = time.monotonic()
  harness = Harness(args, root)
  quiet = contextlib.ExitStack()
  try:
    harness.progress = quiet.enter_context(stderr_to(root / "logs" / "harness.log"))
    harness.start_reference()
    if "sigkill" in args.faults and args.kills:
      harness.sigkill_chain()
    for mode in ("truncate", "bitflip"):
      if mode in args.faults:
        for index in range(1, args.other_faults + 1):
          harness.corruption_try(mode, index)
    if "sigterm" in args.faults and args.other_faults:
      harness.sigterm_chain(args.other_faults)
    harness.reference_params()  # the reference run ends well even when no comparison needed it
  except KeyboardInterrupt:
    kill_children()
    quiet.close()
    print("interrupted: the training processes were stopped", file=sys.stderr)
    return 130
  finally:
    kill_children()
    quiet.close()
    signal.signal(signal.SIGTERM, previous)
    if args.root is None:
      shutil.rmtree(root, ignore_errors=True)
  rows = harness.rows()
  wall = time.monotonic() - started
  summary = {
    "type": "summary",
    "command": " ".join(["python", "train.py", *harness.command(Path("W"))[2:]]),
    "config": args.config,
    "steps": args.steps,
    "checkpoint_every": args.checkpoint_every,
    "keep_checkpoints": harness.keep,
    "seed": args.seed,
    "wall_s": round(wall, 1),
    "data_lost": sum(r["data_lost"] for r in rows),
  }
  print(markdown(rows))
  print(f"\n{summary['command']}; wall time {wall:.0f} s")
  if args.json:
    with open(args.json, "w") as f:
      for item in [*harness.records, *harness.finals, *rows, summary]:
        f.write(json.dumps(item, default=str) + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
