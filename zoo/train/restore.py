"""A trained run restored from its work directory (`load_run`); text sampled from its language model."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from zoo import config as config_lib
from zoo.models import create_model
from zoo.models.rnn import CharLM, sample_rnn
from zoo.models.transformer import GPT, generate
from zoo.registry import ZooError
from zoo.train.checkpoint import MANIFEST, verify_step

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Run:
  """A trained run: the model rebuilt from model.json and the variables of one checkpoint."""

  workdir: Path
  config: config_lib.Config
  model: Any  # The Flax module, as create_model(card["model"], **card["kwargs"]) builds it.
  variables: dict[str, Any]  # {"params": ..., **model_state}: the EMA's when the run kept one.
  step: int
  card: dict[str, Any]  # model.json: model, kwargs, vocab, mean, std, tokens.

  @property
  def vocab(self) -> str | list[str] | None:
    return self.card.get("vocab")


def load_run(workdir: str | Path, step: int | None = None) -> Run:
  """Loads the run that `python train.py ... --workdir DIR` left in `workdir`: its config, its model and the
  variables of checkpoint `step` (default: the newest; for a run with early_stopping.restore_best, the best
  evaluation's, which the run ended with).

  Only the step, parameters, model state and weight averages are read, not the optimiser's state, so any
  optimiser's run loads the same way. When the run kept an EMA of its weights, `variables` are the EMA's
  (those its evaluations used).

  The checkpoint's files are checked against their checksums first: without `step`, a damaged newest
  checkpoint is reported (a warning) and the newest one that verifies is loaded; a damaged `step` is a
  ZooError. Damaged checkpoints are left where they are (the run moves them aside when it resumes).
  """
  workdir = Path(workdir)
  train = f"`python train.py --config NAME --workdir {workdir}`"
  card_path, config_path, ckpt_dir = workdir / "model.json", workdir / "config.json", workdir / "checkpoints"
  if not workdir.is_dir():
    raise ZooError(f"no run directory {workdir}: train a run there first with {train}")
  if not config_path.is_file():
    raise ZooError(f"{workdir} has no config.json: it is not a training run's directory (train one: {train})")
  if not card_path.is_file():  # A run from before the loop wrote model.json.
    raise ZooError(
      f"{workdir} has no model.json: run its training command ({train}) again to write it; a finished run "
      f"only evaluates again, it does not train further"
    )
  card = json.loads(card_path.read_text())
  config = config_lib.from_dict(json.loads(config_path.read_text()))
  best_dir = workdir / "best_checkpoint"
  if step is None and config.early_stopping.restore_best and _checkpoint_steps(best_dir):
    ckpt_dir = best_dir  # The run ended with its best evaluation's parameters: those are the model.
  steps = _checkpoint_steps(ckpt_dir)
  if not steps:
    raise ZooError(f"{ckpt_dir} holds no checkpoint: train the run first ({train}; it saves one at its end)")
  if step is None:
    saved = _restore_newest_weights(ckpt_dir, steps)
  elif step not in steps:
    raise ZooError(f"{ckpt_dir} has no checkpoint of step {step}; it has steps {sorted(steps)}")
  elif (problem := verify_step(ckpt_dir, step)) is not None:
    raise ZooError(f"the checkpoint of step {step} in {ckpt_dir} is damaged: {problem}")
  else:
    saved = _restore_weights(ckpt_dir, step)
  if "ema" in saved.get("averages", {}):
    variables = dict(saved["averages"]["ema"])
  else:
    variables = {"params": saved["params"], **saved.get("model_state", {})}
  model = create_model(card["model"], **_tuples(card["kwargs"]))
  return Run(workdir, config, model, jax.device_put(variables), int(saved["step"]), card)


def _checkpoint_steps(directory: Path) -> list[int]:
  # Orbax names a complete checkpoint by its step; one still being written has a temporary name.
  return [int(p.name) for p in directory.iterdir() if p.name.isdigit()] if directory.is_dir() else []


def _restore_newest_weights(directory: Path, steps: list[int]) -> dict[str, Any]:
  """`_restore_weights` of the newest of `steps` that verifies against its checksums (and, written before
  checkpoints had them, that Orbax reads); the damaged ones on the way are logged."""
  damaged = []
  for step in sorted(steps, reverse=True):
    problem = verify_step(directory, step)
    if problem is None:
      try:
        return _restore_weights(directory, step)
      except Exception as e:
        if (directory / str(step) / MANIFEST).is_file():
          raise  # Its files are as written: not damage.
        problem = f"Orbax cannot read it ({str(e).strip().splitlines()[0][:300] if str(e).strip() else e!r})"
    log.warning(
      "the checkpoint of step %d in %s is damaged: %s; trying the previous one", step, directory, problem
    )
    damaged.append(f"step {step}: {problem}")
  raise ZooError(f"every checkpoint in {directory} is damaged ({'; '.join(damaged)})")


def _restore_weights(directory: Path, step: int) -> dict[str, Any]:
  """The saved TrainState's step, params, model_state and averages (as arrays), read without a target: their
  shapes come from the checkpoint's metadata, and the optimiser's state is left on disk."""
  options = ocp.CheckpointManagerOptions(create=False)
  manager = ocp.CheckpointManager(directory, options=options, item_handlers=ocp.PyTreeCheckpointHandler())
  try:
    tree = manager.item_metadata(step).tree
    wanted = {k: tree[k] for k in ("step", "params", "model_state", "averages") if k in tree}
    abstract = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), wanted)
    restore_args = ocp.checkpoint_utils.construct_restore_args(abstract)
    args = ocp.args.PyTreeRestore(abstract, restore_args=restore_args, partial_restore=True)
    return manager.restore(step, args=args)
  finally:
    manager.close()


def _tuples(value: Any) -> Any:
  # JSON turned the kwargs' tuples into lists; a Flax module is hashed (a jit static argument), a list is not.
  if isinstance(value, dict):
    return {k: _tuples(v) for k, v in value.items()}
  return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


# ---------------------------------------------------------------------------------------------------
# Sampling text.


def char_vocab(run: Run) -> str:
  """The run's character vocabulary (token i is its i-th character); ZooError for any other model or data."""
  if not isinstance(run.model, (GPT, CharLM)):
    raise ZooError(
      f"the model of {run.workdir} ({run.card['model']}, a {type(run.model).__name__}) is not a language "
      f"model: sampling needs a GPT or a CharLM run (e.g. configs shakespeare_gpt, shakespeare_lstm)"
    )
  vocab = run.vocab
  if vocab is None or any(len(t) != 1 for t in vocab):
    raise ZooError(f"the run in {run.workdir} was not trained on a character vocabulary: cannot encode text")
  return "".join(vocab)


def encode(vocab: str, text: str) -> np.ndarray:
  """(len(text),) int32 token ids; ZooError naming the characters that are not in `vocab`."""
  index = {c: i for i, c in enumerate(vocab)}
  if unknown := list(dict.fromkeys(c for c in text if c not in index)):  # In order of appearance.
    raise ZooError(
      f"the prompt holds {len(unknown)} character(s) not in the model's vocabulary: "
      f"{' '.join(repr(c) for c in unknown)} (the vocabulary: {vocab!r})"
    )
  return np.array([index[c] for c in text], np.int32)


def sample_texts(
  run: Run,
  prompt: str = "",
  length: int = 500,
  *,
  num_samples: int = 1,
  temperature: float = 1.0,
  top_k: int | None = None,
  top_p: float | None = None,
  seed: int = 0,
) -> list[str]:
  """`num_samples` texts, each `prompt` followed by `length` sampled characters (see `sample_text`)."""
  vocab = char_vocab(run)
  if length < 0 or num_samples < 1:
    raise ZooError(f"length must be >= 0 and num_samples >= 1, got {length} and {num_samples}")
  # An empty prompt conditions on a line break (the text starts a new line), which is not part of the output.
  context = encode(vocab, prompt) if prompt else encode(vocab, "\n" if "\n" in vocab else vocab[0])
  if length == 0:
    return [prompt] * num_samples
  tokens = np.broadcast_to(context, (num_samples, len(context)))  # (B, P)
  rng = jax.random.key(seed)
  if isinstance(run.model, GPT):  # It conditions on the prompt's last block_size tokens only.
    new = generate(run.model, run.variables, tokens, length, rng, temperature, top_k, top_p)
  else:
    if top_p is not None:
      raise ZooError("the recurrent model's sampler (sample_rnn) has temperature and top_k, not top_p")
    if temperature < 0:
      raise ZooError(f"temperature must be >= 0, got {temperature}")
    new = sample_rnn(run.model, run.variables, tokens, length, rng, temperature, top_k)
  return [prompt + "".join(vocab[t] for t in row) for row in np.asarray(new)]


def sample_text(
  run: Run,
  prompt: str = "",
  length: int = 500,
  *,
  temperature: float = 1.0,
  top_k: int | None = None,
  top_p: float | None = None,
  seed: int = 0,
) -> str:
  """`prompt` followed by `length` characters sampled from the run's language model.

  Args:
    run: a GPT or CharLM run on a character vocabulary (`load_run`).
    prompt: the text to continue; every character must be in the vocabulary. Empty: the model continues
      from a line break (not included in the result). A GPT reads only the prompt's last block_size
      characters (its context); a recurrent model reads all of it.
    length: how many characters to sample.
    temperature: divides the logits; 0 takes the most likely character each step (greedy).
    top_k: sample among the k most likely characters only.
    top_p: nucleus sampling (GPT only): among the most likely characters holding probability top_p.
    seed: the same seed gives the same text.
  """
  options = dict(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
  return sample_texts(run, prompt, length, **options)[0]
