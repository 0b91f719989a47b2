"""Checkpoints with Orbax: every N steps and at the end, the newest few kept, resumed automatically."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from zoo.registry import ZooError

log = logging.getLogger(__name__)


class Checkpointer:
  """A thin wrapper over `ocp.CheckpointManager` for one pytree (the TrainState).

  Orbax writes each checkpoint into a temporary directory and renames it once complete, so a run killed
  while writing never leaves a half-written checkpoint that looks complete.
  """

  def __init__(self, directory: str | Path, *, keep: int = 3):
    self.directory = Path(directory).resolve()
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, cleanup_tmp_directories=True)
    self._manager = ocp.CheckpointManager(
      self.directory, options=options, item_handlers=ocp.StandardCheckpointHandler()
    )

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any) -> None:
    """Starts writing `state` as checkpoint `step` (asynchronously; `wait` or `close` to finish)."""
    self._manager.save(step, args=ocp.args.StandardSave(state), force=True)

  def restore(self, target: Any, step: int | None = None) -> Any:
    """Restores checkpoint `step` (default: the newest) into `target`'s structure, dtypes, shardings."""
    step = self.latest_step() if step is None else step
    # Compare shapes first: a restore into the wrong shapes fails deep inside Orbax's async readers.
    saved = Counter(tuple(m.shape) for m in jax.tree.leaves(self._manager.item_metadata(step).tree))
    wanted = Counter(tuple(x.shape) for x in jax.tree.leaves(target))
    if saved != wanted:
      only_saved, only_wanted = sorted((saved - wanted).elements()), sorted((wanted - saved).elements())
      raise ValueError(
        f"the checkpoint holds arrays of shapes {only_saved[:4]} where this state has {only_wanted[:4]}"
      )
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    return self._manager.restore(step, args=ocp.args.StandardRestore(abstract))

  def restore_or_explain(self, target: Any, step: int, what: str, advice: str) -> Any:
    """`restore`, but a checkpoint that does not fit `target` closes the manager and raises a ZooError
    naming `what`, the directory and the reason, followed by `advice`."""
    try:
      return self.restore(target, step)
    except (ValueError, TypeError, KeyError) as e:
      self.close()
      reason = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
      raise ZooError(
        f"{what} in {self.directory} does not fit this config (was it changed?): {reason}. {advice}"
      ) from e

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()
