"""Checkpoints with Orbax, sealed by their files' sha256; resumed from the newest that verifies."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from zoo.registry import ZooError

log = logging.getLogger(__name__)

# In each step's directory: {"format": 1, "files": {relative path: {"size": bytes, "sha256": hex}}}.
MANIFEST = "zoo_checksums.json"
# In the checkpoints directory: {"format": 1, "since_step": N}: every step from N on must have a manifest (the
# steps before N were written before checkpoints had one, and are trusted as Orbax reads them).
CHECKSUMS_SINCE = "zoo_checksums_since.json"
# Files Orbax writes into a step's directory after the manifest, as it commits the step (the commit time in
# its step metadata, the commit marker); their content is not the model's. The step metadata must parse.
_WRITTEN_AT_COMMIT = ("_CHECKPOINT_METADATA", "commit_success.txt")
# Orbax writes step N into "N.orbax-checkpoint-tmp..." and renames it to "N" once complete.
_ORBAX_TMP = ".orbax-checkpoint-tmp"
_FORMAT = 1


class _ShapeMismatch(ValueError):
  """The checkpoint's arrays have other shapes than the state restored into."""


class Checkpointer:
  """A thin wrapper over `ocp.CheckpointManager` for one pytree (the TrainState), whose checkpoints are
  checked before they are used.

  Orbax writes each checkpoint into a temporary directory and renames it once complete, so a run killed
  while writing never leaves a half-written checkpoint that looks complete. Orbax does not check what it
  reads, though: a file truncated or changed on disk later would be restored silently (or fail deep in its
  readers). So each checkpoint carries a manifest, `<step>/zoo_checksums.json`: the size and sha256 of each
  of its files, written in Orbax's post-finalisation callback, once every file of the step is final and just
  before Orbax's rename, so that a step appears complete with its manifest or not at all. (Orbax writes two
  small files of its own after the callback as it commits: its step metadata, which is checked to parse,
  and its commit marker.)

  `latest_step` and `restore_latest` take the newest checkpoint that verifies against its manifest; a
  damaged one (a file missing, truncated or changed; no manifest where there must be one; unreadable by
  Orbax) is logged as a warning naming the step, the file and the reason, and moved aside to
  `<directory>/corrupt-<step>` so that it is never taken again and Orbax's max_to_keep does not count it
  (and delete the good older ones in its place).
  """

  def __init__(self, directory: str | Path, *, keep: int = 3):
    self.directory = Path(directory).resolve()
    self._primary = jax.process_index() == 0  # The process that writes manifests and moves steps aside.
    self._in_flight: int | None = None  # The step being written (saves are one at a time).
    self._verified: set[int] = set()  # Checked (or written) by this object: not hashed again.
    self._damaged: dict[int, str] = {}  # step -> why, found by this object.
    options = ocp.CheckpointManagerOptions(
      max_to_keep=keep,
      create=True,
      cleanup_tmp_directories=True,
      async_options=ocp.AsyncOptions(post_finalization_callback=self._seal_in_flight),
    )
    self._manager = ocp.CheckpointManager(
      self.directory, options=options, item_handlers=ocp.StandardCheckpointHandler()
    )
    if self._primary:
      _mark_checksummed(self.directory)

  def latest_step(self) -> int | None:
    """The newest checkpoint that is complete and verifies (None when there is none); damaged ones on the
    way are moved aside with a warning. ZooError when there were checkpoints and every one is damaged."""
    for step in sorted(self.all_steps(), reverse=True):
      if step in self._verified:
        return step
      if step in self._damaged:
        continue
      problem = verify_step(self.directory, step)
      if problem is None:
        self._verified.add(step)
        return step
      self._set_aside(step, problem)
    if self._damaged:
      self.close(raise_errors=False)
      found = "; ".join(f"step {s}: {why}" for s, why in sorted(self._damaged.items()))
      raise ZooError(
        f"every checkpoint in {self.directory} is damaged ({found}). They were moved aside (corrupt-<step> "
        f"there); rerun the same command to train from the start, or put back a copy from a backup."
      )
    return None

  def all_steps(self) -> list[int]:
    """Every complete checkpoint's step as Orbax lists them, verified or not."""
    return sorted(self._manager.all_steps())

  def save(self, step: int, state: Any) -> None:
    """Starts writing `state` as checkpoint `step` (asynchronously; `wait` or `close` to finish). Waits for
    the previous save first: a disk that filled up during it is a ZooError."""
    self._finish()
    self._in_flight = step
    try:
      self._manager.save(step, args=ocp.args.StandardSave(state), force=True)
    except Exception as e:
      self._in_flight = None
      if _disk_full(e):
        self._raise_disk_full(step, e)
      raise

  def restore(self, target: Any, step: int | None = None) -> Any:
    """Restores checkpoint `step` (default: the newest that verifies) into `target`'s structure, dtypes and
    shardings. ZooError when `step` is damaged."""
    if step is None:
      step = self.latest_step()
      if step is None:
        raise ZooError(f"{self.directory} holds no checkpoint")
    elif step not in self._verified:
      problem = verify_step(self.directory, step)
      if problem is not None:
        raise ZooError(f"cannot restore the checkpoint of step {step} from {self.directory}: {problem}")
      self._verified.add(step)
    # Compare shapes first: a restore into the wrong shapes fails deep inside Orbax's async readers.
    saved = Counter(tuple(m.shape) for m in jax.tree.leaves(self._manager.item_metadata(step).tree))
    wanted = Counter(tuple(x.shape) for x in jax.tree.leaves(target))
    if saved != wanted:
      only_saved, only_wanted = sorted((saved - wanted).elements()), sorted((wanted - saved).elements())
      raise _ShapeMismatch(
        f"the checkpoint holds arrays of shapes {only_saved[:4]} where this state has {only_wanted[:4]}"
      )
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    return self._manager.restore(step, args=ocp.args.StandardRestore(abstract))

  def restore_latest(self, target: Any, advice: str) -> tuple[int, Any]:
    """`(step, state)`: the newest checkpoint that verifies and that Orbax reads, restored into `target`;
    `(0, target)` when there is none. Damaged checkpoints are moved aside with a warning, as in `latest_step`.
    A checkpoint that verifies but does not fit `target` (the config changed) is a ZooError ending with
    `advice`, as in `restore_or_explain`."""
    while (step := self.latest_step()) is not None:
      sealed = (self.directory / str(step) / MANIFEST).is_file()
      try:
        return step, self.restore(target, step)
      except Exception as e:
        if sealed or isinstance(e, _ShapeMismatch):  # Its files are as written: the config does not fit.
          if isinstance(e, (ValueError, TypeError, KeyError)):
            raise self._misfit(e, f"the checkpoint of step {step}", advice) from e
          raise
        # Written before manifests, so not verifiable: Orbax failing to read it is the only sign of damage.
        self._verified.discard(step)
        self._set_aside(step, f"Orbax cannot read it ({_first_line(e)})")
    return 0, target

  def restore_or_explain(self, target: Any, step: int, what: str, advice: str) -> Any:
    """`restore`, but a checkpoint that does not fit `target` closes the manager and raises a ZooError
    naming `what`, the directory and the reason, followed by `advice`."""
    try:
      return self.restore(target, step)
    except (ValueError, TypeError, KeyError) as e:
      raise self._misfit(e, what, advice) from e

  def _misfit(self, error: Exception, what: str, advice: str) -> ZooError:
    self.close(raise_errors=False)
    reason = _first_line(error)
    return ZooError(
      f"{what} in {self.directory} does not fit this config (was it changed?): {reason}. {advice}"
    )

  def verify(self, step: int) -> str | None:
    """Why checkpoint `step` cannot be trusted (naming the file), or None when it verifies."""
    return verify_step(self.directory, step)

  def wait(self) -> None:
    """Waits for the save under way; a disk that filled up during it is a ZooError."""
    self._finish()

  def close(self, *, raise_errors: bool = True) -> None:
    try:
      self._finish()
    except Exception:
      if raise_errors:
        raise
      log.exception("the last checkpoint save in %s failed", self.directory)
    finally:
      self._manager.close()

  def _finish(self) -> None:
    step = self._in_flight
    try:
      self._manager.wait_until_finished()
    except Exception as e:
      if step is not None and _disk_full(e):
        self._in_flight = None
        self._raise_disk_full(step, e)
      raise
    finally:
      self._in_flight = None
    if step is not None:
      self._verified.add(step)  # Its manifest was computed from the files as written.

  def _seal_in_flight(self) -> None:
    """Orbax's post-finalisation callback (in its save thread, on the primary process, after every process
    has written its part): the manifest of the step being written, in its temporary directory."""
    step = self._in_flight
    found = sorted(self.directory.glob(f"{step}{_ORBAX_TMP}*"), key=lambda p: p.stat().st_mtime)
    step_dir = found[-1] if found else self.directory / str(step)  # A file system without atomic rename.
    if step is None or not step_dir.is_dir():
      raise RuntimeError(
        f"cannot find the directory Orbax is writing checkpoint {step} into ({self.directory})"
      )
    write_manifest(step_dir)

  def _set_aside(self, step: int, problem: str) -> None:
    source = self.directory / str(step)
    target, n = self.directory / f"corrupt-{step}", 1
    while target.exists():
      target, n = self.directory / f"corrupt-{step}-{n}", n + 1
    log.warning(
      "the checkpoint of step %d in %s is damaged: %s. Moved it to %s; using the previous checkpoint.",
      step,
      self.directory,
      problem,
      target.name,
    )
    self._damaged[step] = problem
    if self._primary:
      try:
        source.rename(target)
      except FileNotFoundError:
        pass
    self._manager.reload()  # Orbax's list of steps, which max_to_keep counts, without it.

  def _raise_disk_full(self, step: int, error: Exception):
    for partial in self.directory.glob(f"{step}{_ORBAX_TMP}*"):  # Orbax would clean it at the next start.
      shutil.rmtree(partial, ignore_errors=True)
    self._manager.reload()
    older = [s for s in self.all_steps() if s < step and s not in self._damaged]
    if not older:
      previous = "there is no earlier checkpoint"
    elif (problem := verify_step(self.directory, older[-1])) is None:
      previous = f"the previous checkpoint at step {older[-1]} is intact"
    else:
      previous = f"the previous checkpoint, step {older[-1]}, does not verify either: {problem}"
    raise ZooError(
      f"no space left on the device while writing the checkpoint of step {step} in {self.directory} "
      f"({_first_line(error)}); {previous}. Free some space (or lower keep_checkpoints) and rerun the same "
      f"command to resume."
    ) from error


def write_manifest(step_dir: Path) -> None:
  """Writes `step_dir/zoo_checksums.json`: size and sha256 of every file under `step_dir` (atomically)."""
  files = {}
  for path in sorted(p for p in step_dir.rglob("*") if p.is_file()):
    name = path.relative_to(step_dir).as_posix()
    if name in (MANIFEST, MANIFEST + ".tmp", *_WRITTEN_AT_COMMIT):
      continue
    files[name] = {"size": path.stat().st_size, "sha256": _sha256(path)}
  _write_json_atomically(step_dir / MANIFEST, {"format": _FORMAT, "files": files})


def verify_step(directory: str | Path, step: int) -> str | None:
  """Why checkpoint `step` in `directory` cannot be trusted (a file missing, truncated or changed since it
  was written, no manifest where there must be one), naming the file; None when it verifies (or was
  written before checkpoints had manifests)."""
  step_dir = Path(directory) / str(step)
  manifest_path = step_dir / MANIFEST
  if not step_dir.is_dir():
    return f"there is no checkpoint of step {step}"
  if not manifest_path.is_file():
    if step < _checksummed_since(Path(directory)):
      return None  # Written before manifests: trusted as Orbax reads it.
    return f"its manifest {MANIFEST} is missing"
  try:
    files = json.loads(manifest_path.read_text())["files"]
    expected = {str(name): (int(e["size"]), str(e["sha256"])) for name, e in files.items()}
  except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as e:
    return f"its manifest {MANIFEST} is unreadable ({_first_line(e)})"
  for name, (size, digest) in sorted(expected.items()):
    path = step_dir / name
    try:
      actual = path.stat().st_size
    except OSError:
      return f"file {name} is missing"
    if actual != size:
      how = "truncated" if actual < size else "longer than written"
      return f"file {name} is {how} ({actual} bytes, {size} written)"
    if _sha256(path) != digest:
      return f"file {name} does not match its sha256 (changed on disk since it was written)"
  metadata = step_dir / _WRITTEN_AT_COMMIT[0]
  try:
    json.loads(metadata.read_text())
  except (OSError, UnicodeDecodeError, ValueError) as e:
    return f"Orbax's step metadata {metadata.name} is unreadable ({_first_line(e)})"
  return None


def _checksummed_since(directory: Path) -> float:
  """The first step that must have a manifest; infinity in a directory of checkpoints without any."""
  path = directory / CHECKSUMS_SINCE
  if not path.exists():
    return float("inf")
  try:
    return int(json.loads(path.read_text())["since_step"])
  except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
    return 0  # Damaged: every step must verify.


def _mark_checksummed(directory: Path) -> None:
  """Records, once per directory, that its steps from now on carry manifests (older ones are trusted)."""
  if (directory / CHECKSUMS_SINCE).exists():
    return
  steps = [int(p.name) for p in directory.iterdir() if p.name.isdigit()]
  _write_json_atomically(
    directory / CHECKSUMS_SINCE, {"format": _FORMAT, "since_step": max(steps, default=-1) + 1}
  )


def _write_json_atomically(path: Path, value: Any) -> None:
  # A reader (or a resumed run after a kill) sees the old file or the new one, never part of one.
  tmp = path.with_name(path.name + ".tmp")
  with tmp.open("w") as f:
    f.write(json.dumps(value, indent=1) + "\n")
    f.flush()
    os.fsync(f.fileno())
  tmp.replace(path)


def _sha256(path: Path) -> str:
  with path.open("rb") as f:
    return hashlib.file_digest(f, "sha256").hexdigest()


def _disk_full(error: BaseException | None) -> bool:
  """Whether `error` (or one it was raised from) says the disk is full: an OSError ENOSPC / EDQUOT, or the
  same message from TensorStore, which writes the arrays."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
      return True
    if "No space left on device" in str(error) or "Disk quota exceeded" in str(error):
      return True
    error = error.__cause__ or error.__context__
  return False


def _first_line(error: BaseException) -> str:
  text = str(error).strip()
  return text.splitlines()[0][:300] if text else type(error).__name__
