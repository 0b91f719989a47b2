"""The experiment config: every key the trainer reads, with its default; loading by name; overrides.

A config file is `configs/<name>.py` with `get_config(smoke: bool = False) -> Config`. Its docstring
starts with the command that runs it and the result it reaches; `smoke=True` shrinks it for tests.

Overrides use one syntax everywhere: `section.key=value` (on the command line `--config.section.key=value`).
Values are Python literals (`3e-4`, `(256, 128)`, `True`, `None`, `'relu'`; bare words are strings; text that
opens with a bracket or a quote must be a whole literal) and are checked against the declared type of the
key. Keys under a `kwargs` dict are passed to the named model/optimiser/schedule/dataset, which checks them
against its own signature. A config file's values are checked the same way when it is loaded.
"""

from __future__ import annotations

import ast
import collections.abc
import dataclasses
import importlib.util
import json
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zoo.registry import ZooError, close_matches


@dataclass
class ModelConfig:
  name: str = "mlp"
  kwargs: dict[str, Any] = field(default_factory=dict)  # fields of the Flax module


@dataclass
class DataConfig:
  name: str = "digits"
  data_dir: str | None = None  # local dataset files; else $ZOO_DATA_DIR; else download into the cache
  batch_size: int = 128
  eval_batch_size: int = 1000
  # Input standardisation, fitted on the training split only: none | scale (to [0, 1]) |
  # channel (one mean/std per channel) | feature (one mean/std per input feature).
  normalization: str = "channel"
  kwargs: dict[str, Any] = field(default_factory=dict)  # arguments of the dataset loader
  # Use only the first N examples of a split (smoke runs, quick experiments); None uses all.
  max_train_examples: int | None = None
  max_test_examples: int | None = None
  # Carve this fraction of the training split out as a validation split (a seeded permutation, fixed
  # for a given `seed`); the best-checkpoint and early stopping watch it.
  validation_split: float = 0.0
  # On-device augmentation of training batches: name -> kwargs, applied in order (zoo/data/augment.py),
  # e.g. {"random_shift": {"pixels": 2}}; on the command line: data.augment.random_shift.pixels=2.
  augment: dict[str, Any] = field(default_factory=dict)


@dataclass
class OptimizerConfig:
  name: str = "adam"
  learning_rate: float = 1e-3  # the peak rate; the schedule scales it
  weight_decay: float = 0.0  # decoupled (AdamW-style, multiplied by the rate), masked below
  weight_decay_mask: str = "no_bias_no_norm"  # all | no_bias_no_norm
  grad_clip_norm: float | None = None  # clip gradients to this global norm
  grad_clip_value: float | None = None  # clip each gradient element to [-value, value]
  normalize_gradients: bool = False  # divide each gradient tensor by its own L2 norm
  accumulate_steps: int = 1  # average gradients over this many micro-batches per update
  skip_nonfinite: bool = False  # skip (and count) updates whose gradients hold NaN or inf
  # Max-norm constraint (Srivastava et al. 2014): after each update, every weight vector of the kernels
  # matching `max_norm_pattern` (its fan-in) is scaled back to this L2 norm when longer.
  max_norm: float | None = None
  max_norm_pattern: str = "*kernel"
  # Lookahead (Zhang et al. 2019) around the whole optimiser: every `lookahead_steps` updates the slow
  # weights move `lookahead_alpha` of the way to the fast ones, which restart from them. None: off.
  lookahead_steps: int | None = None
  lookahead_alpha: float = 0.5
  kwargs: dict[str, Any] = field(default_factory=dict)  # arguments of the named optimiser


@dataclass
class ScheduleConfig:
  name: str = "constant"
  # Arguments of the named schedule. Durations end in `_steps` or `_epochs` (converted to steps once).
  kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class RegularizationConfig:
  """Penalties added to the training loss, on the parameters whose '/'-joined path matches `pattern`
  (comma-separated shell patterns, e.g. 'Dense_*/kernel'): l1 * sum|w| + l2 / 2 * sum w^2 (elastic net
  when both are set)."""

  l1: float = 0.0
  l2: float = 0.0
  pattern: str = "*kernel"


@dataclass
class TaskConfig:
  name: str = "classification"
  kwargs: dict[str, Any] = field(default_factory=dict)  # e.g. label_smoothing


@dataclass
class EarlyStoppingConfig:
  """Watches one metric of the validation split (of the test split when there is none) at each evaluation."""

  patience: int | None = None  # stop after this many evaluations without improvement; None: never stop
  metric: str = "loss"
  mode: str = "min"  # min | max: whether a smaller or a larger value is better
  min_delta: float = 0.0  # an improvement must beat the best value by more than this
  restore_best: bool = False  # end the run with the best evaluation's parameters (kept in best_checkpoint/)


@dataclass
class PlateauConfig:
  """Reduce-on-plateau: multiply the learning rate by `factor` when the watched metric (as for early
  stopping: validation split, else test) has not improved for `patience` evaluations."""

  patience: int | None = None  # None: off
  factor: float = 0.2
  min_scale: float = 1e-3  # never below this fraction of the schedule's rate
  metric: str = "loss"
  mode: str = "min"
  min_delta: float = 0.0


@dataclass
class AveragingConfig:
  """Weight averaging. When on, evaluation, the best checkpoint's metric and the end-of-run report use the
  averaged weights; the checkpoints hold both."""

  # Exponential moving average of the parameters (Polyak & Juditsky 1992), and of the model state
  # (BatchNorm statistics), updated after every step: avg <- d avg + (1 - d) w.
  ema_decay: float | None = None
  ema_warmup: bool = False  # use min(d, (1 + t) / (10 + t)) at step t, as TensorFlow's num_updates does
  # Stochastic weight averaging (Izmailov et al. 2018): the equal-weight mean of the weights at the end of
  # each epoch from `swa_start_epoch` on; evaluation recomputes BatchNorm statistics for the mean.
  swa_start_epoch: int | None = None
  swa_lr: float | None = None  # constant learning rate from swa_start_epoch (None: the schedule goes on)
  swa_bn_batches: int | None = None  # training batches for the BatchNorm statistics (None: one epoch)


@dataclass
class Config:
  model: ModelConfig = field(default_factory=ModelConfig)
  data: DataConfig = field(default_factory=DataConfig)
  optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
  schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
  task: TaskConfig = field(default_factory=TaskConfig)
  regularization: RegularizationConfig = field(default_factory=RegularizationConfig)
  early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
  reduce_on_plateau: PlateauConfig = field(default_factory=PlateauConfig)
  averaging: AveragingConfig = field(default_factory=AveragingConfig)
  seed: int = 0
  epochs: int = 10
  steps: int | None = None  # total training steps; when set it replaces `epochs`
  log_every_steps: int = 100
  eval_every_epochs: int = 1
  checkpoint_every_steps: int = 1000  # and at every evaluation and at the end
  keep_checkpoints: int = 3
  # Stop with an error when the training loss is not finite.
  stop_on_nonfinite: bool = True
  # How training spreads over the devices (zoo/train/parallel.py): data (batch sharded over every device,
  # state replicated) | fsdp (parameters and optimiser state sharded too) | pmap | none (one device).
  parallel: str = "data"
  # Compute dtype: float32 | bfloat16 | float16 (with dynamic loss scaling). Parameters and optimiser state
  # stay float32; logits, softmax statistics, norms' statistics and the loss are computed in float32.
  precision: str = "float32"
  # Train this many models at once, differing in seed (seed, seed + 1, ...), in one vmapped step.
  ensemble: int = 1
  # One model per value of one numeric field, in one vmapped step: {"optimizer.learning_rate": (1e-4, 1e-3)}.
  sweep: dict[str, Any] = field(default_factory=dict)


def shrink_for_smoke(
  config: Config, steps: int = 3, train_examples: int = 512, test_examples: int = 256
) -> Config:
  """The usual smoke variant of a config: a few steps on the first examples of each split."""
  config.steps = steps
  config.data.max_train_examples = train_examples
  config.data.max_test_examples = test_examples
  return config


def to_dict(config: Config) -> dict[str, Any]:
  return dataclasses.asdict(config)


def from_dict(d: dict[str, Any], cls: type = Config, prefix: str = "") -> Any:
  """Inverse of `to_dict`; unknown keys and values of the wrong type raise ZooError naming the key."""
  if not isinstance(d, dict):
    where = f"config key {prefix[:-1]!r}" if prefix else "a config"
    raise ZooError(f"{where} must be a mapping of keys to values, got {_short(d)} ({type(d).__name__})")
  hints = typing.get_type_hints(cls)
  names = {f.name for f in dataclasses.fields(cls)}
  kwargs = {}
  for key, value in d.items():
    if key not in names:
      raise ZooError(_unknown_key_message(prefix + str(key), [prefix + n for n in sorted(names)]))
    sub = hints[key]
    if dataclasses.is_dataclass(sub):
      kwargs[key] = from_dict(value, sub, f"{prefix}{key}.")
    else:
      kwargs[key] = check_type(_to_python(value), sub, prefix + key)
  return cls(**kwargs)


def _to_python(value: Any) -> Any:
  # JSON turns tuples into lists; keep literal values in the form the config file wrote them.
  if isinstance(value, dict):
    return {k: _to_python(v) for k, v in value.items()}
  return tuple(_to_python(v) for v in value) if isinstance(value, list) else value


def check_config(config: Config, where: str = "the config") -> Config:
  """Checks (and converts, as `check_type` does) every value of `config` against its key's type, and that
  no section holds an attribute that is not a key (`config.optimizer.learnig_rate = 0.1` in a config file
  would otherwise be ignored). Raises ZooError naming the key."""
  _check_section(config, "", where)
  return config


def _check_section(obj: Any, prefix: str, where: str) -> None:
  hints = typing.get_type_hints(type(obj))
  fields = [f.name for f in dataclasses.fields(obj)]
  for name in vars(obj):
    if name not in fields:
      message = _unknown_key_message(prefix + name, [prefix + f for f in fields])
      raise ZooError(f"{where} sets {prefix + name!r}, which is not a config key: {message}")
  for name in fields:
    value = getattr(obj, name)
    if dataclasses.is_dataclass(hints[name]):
      if not isinstance(value, hints[name]):
        raise ZooError(f"{where}: config key {prefix + name!r} must be a {hints[name].__name__} section")
      _check_section(value, f"{prefix}{name}.", where)
      continue
    try:
      setattr(obj, name, check_type(value, hints[name], prefix + name))
    except ZooError as e:
      raise ZooError(f"{where}: {e}") from None


def to_json(config: Config) -> str:
  return json.dumps(to_dict(config), indent=2, sort_keys=False)


# ---------------------------------------------------------------------------------------------------
# Overrides.


def parse_sweep(text: str) -> dict[str, tuple[Any, ...]]:
  """`KEY=V1,V2,...` (the --sweep flag) as the config's `sweep` field, {KEY: (V1, V2, ...)}."""
  key, sep, values = text.partition("=")
  parts = [v.strip() for v in values.split(",") if v.strip()]
  if not sep or not key.strip() or not parts:
    raise ZooError(f"--sweep {text!r}: expected KEY=V1,V2,... (e.g. optimizer.learning_rate=1e-4,3e-4,1e-3)")
  return {key.strip(): tuple(parse_value(v, key.strip()) for v in parts)}


# Text that opens like a Python literal must be one: `(256, 128` or `'relu` is a typo, not a string.
_LITERAL_OPENERS = ("(", "[", "{", "'", '"')


def parse_value(text: str, key: str | None = None) -> Any:
  """A Python literal, or the text itself when it is not one (`relu` -> 'relu').

  Text that starts with a bracket or a quote but is no literal (`(256, 128`, `'relu`) raises ZooError
  (naming `key` when given) rather than passing as a string; quote such a string: `'[ab]*'`.
  """
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as e:
    if not text.strip().startswith(_LITERAL_OPENERS):
      return text
    what = f"config key {key!r}: " if key is not None else ""
    why = "nested too deeply" if isinstance(e, (MemoryError, RecursionError)) else f"{type(e).__name__}: {e}"
    raise ZooError(
      f"{what}{_short(text)} is not a valid Python literal ({why}); a string that starts with a bracket or "
      "a quote must itself be quoted, e.g. '[ab]*'"
    ) from None


def check_type(value: Any, annotation: Any, key: str) -> Any:
  """Returns `value` converted to `annotation` (int -> float, list -> tuple), or raises ZooError.

  Floats must be finite and ints fit in 64 bits (what numpy and JAX take); a dict's keys are checked
  against the annotation's key type too (`dict[str, Any]`: strings).
  """
  converted = _convert(value, annotation)
  if isinstance(converted, _Mismatch):
    why = f": {converted.why}" if converted.why else ""
    got = f"{_short(value)} ({type(value).__name__}){why}"
    raise ZooError(f"config key {key!r} expects {_type_name(annotation)}, got {got}")
  return converted


@dataclass(frozen=True)
class _Mismatch:
  why: str = ""  # what is wrong beyond the type, e.g. "not finite"


_MISMATCH = _Mismatch()
_INT64 = 2**63


def _convert(value: Any, annotation: Any) -> Any:
  if annotation is Any or annotation is typing.Any:
    return value
  origin = typing.get_origin(annotation)
  args = typing.get_args(annotation)
  if origin in (typing.Union, types.UnionType):
    if value is None and type(None) in args:
      return None
    failures = []
    for arg in args:
      if arg is type(None):
        continue
      out = _convert(value, arg)
      if not isinstance(out, _Mismatch):
        return out
      failures.append(out)
    return next((f for f in failures if f.why), _MISMATCH)
  if origin is typing.Literal:
    return value if value in args else _MISMATCH
  if annotation is type(None):
    return None if value is None else _MISMATCH
  if annotation is bool:
    return value if isinstance(value, bool) else _MISMATCH
  if annotation is int:
    if not isinstance(value, int) or isinstance(value, bool):
      return _MISMATCH
    return value if -_INT64 <= value < _INT64 else _Mismatch("outside the 64-bit integer range")
  if annotation is float:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
      return _MISMATCH
    try:
      value = float(value)
    except OverflowError:  # An int of more than about 308 digits.
      return _Mismatch("too large for a float")
    return value if math.isfinite(value) else _Mismatch("not a finite number")
  if annotation is str:
    return value if isinstance(value, str) else _MISMATCH
  if origin in (tuple, list, typing.Sequence, collections.abc.Sequence) or annotation in (tuple, list):
    if not isinstance(value, (tuple, list)):
      return _MISMATCH
    if args and not (len(args) == 2 and args[1] is Ellipsis) and origin is tuple:
      if len(args) != len(value):
        return _MISMATCH
      items = [_convert(v, a) for v, a in zip(value, args, strict=True)]
    else:
      items = [_convert(v, args[0]) if args else v for v in value]
    if bad := next((i for i in items if isinstance(i, _Mismatch)), None):
      return bad
    return list(items) if (origin or annotation) is list else tuple(items)
  if origin is dict or annotation is dict:
    if not isinstance(value, dict):
      return _MISMATCH
    if not args:
      return value
    out = {}
    for k, v in value.items():
      k2, v2 = _convert(k, args[0]), _convert(v, args[1])
      if isinstance(k2, _Mismatch):
        return _Mismatch(f"its key {_short(k)} is not a {_type_name(args[0])}")
      if isinstance(v2, _Mismatch):
        return _Mismatch(f"its value for {_short(k)}, {_short(v)}, is not a {_type_name(args[1])}")
      out[k2] = v2
    return out
  if isinstance(annotation, type):
    return value if isinstance(value, annotation) else _MISMATCH
  return value  # An annotation we cannot check (a callable, a forward reference): accept.


def _short(value: Any, limit: int = 200) -> str:
  """repr(value), cut to `limit` characters: error messages stay one readable paragraph."""
  text = repr(value)
  return text if len(text) <= limit else f"{text[: limit - 20]}... ({len(text):,} characters)"


def _type_name(annotation: Any) -> str:
  if isinstance(annotation, type):
    return annotation.__name__
  return str(annotation).replace("typing.", "")


def _unknown_key_message(key: str, known: list[str]) -> str:
  matches = close_matches(key.rsplit(".", 1)[-1], [k.rsplit(".", 1)[-1] for k in known])
  full = [k for k in known if k.rsplit(".", 1)[-1] in matches]
  hint = f"did you mean: {', '.join(full)}?" if full else f"known keys: {', '.join(known)}"
  return f"unknown config key {key!r}; {hint}"


def _keys(obj: Any, prefix: str = "") -> list[str]:
  out = []
  for f in dataclasses.fields(obj):
    value = getattr(obj, f.name)
    name = prefix + f.name
    out += _keys(value, name + ".") if dataclasses.is_dataclass(value) else [name]
  return out


def apply_override(config: Config, assignment: str) -> None:
  """Applies one `a.b.c=value` override to `config` in place, checking the key and the value's type.

  Below a free-form dict (`model.kwargs`, `data.augment`, ...) each part of the key must be a Python name,
  and the value must be one that config.json can hold (None, bool, int, finite float, str, and tuples,
  lists and str-keyed dicts of them; lists become tuples, as config files write them): the consumer checks
  the names and types when it is built. `sweep.KEY=(v1, v2)` sets `sweep[KEY]`, KEY being a dotted key.
  """
  key, sep, text = assignment.partition("=")
  key = key.strip()
  if key.startswith("--"):
    key = key[2:]
  key = key.removeprefix("config.")
  if not sep or not key:
    raise ZooError(
      f"config override {_short(assignment)} is not of the form key=value (e.g. optimizer.learning_rate=3e-4)"
    )
  parts = key.split(".")
  obj: Any = config
  for i, part in enumerate(parts):
    if isinstance(obj, dict):  # A free-form dict (kwargs, augment, sweep): the consumer checks the names.
      _set_in_dict(obj, parts[i:], text, key, dotted=obj is config.sweep)
      return
    if not dataclasses.is_dataclass(obj) or part not in {f.name for f in dataclasses.fields(obj)}:
      raise ZooError(_unknown_key_message(key, _keys(config)))
    if i == len(parts) - 1:
      annotation = typing.get_type_hints(type(obj))[part]
      if dataclasses.is_dataclass(annotation):
        raise ZooError(f"config key {key!r} is a section; set one of its keys, e.g. {key}.name=...")
      # As from_dict reads config.json: plain values first (lists as tuples), then the key's type.
      setattr(obj, part, check_type(_plain(parse_value(text, key), key), annotation, key))
      return
    obj = getattr(obj, part)


def _set_in_dict(mapping: dict[str, Any], names: list[str], text: str, key: str, dotted: bool) -> None:
  """mapping[names[0]][names[1]]... = the value of `text`, creating the dicts on the way. Everything is
  checked before anything is created, so a refused override leaves the config as it was."""
  if bad := [n for n in names if not n.isidentifier()]:
    raise ZooError(f"config key {key!r}: {bad[0]!r} is not a valid argument name (a Python identifier)")
  if dotted:  # The sweep's keys are whole dotted config keys.
    names = [".".join(names)]
  value = _plain(parse_value(text, key), key)
  obj = mapping
  for i, name in enumerate(names[:-1]):
    if name not in obj:
      obj[name] = {}
    obj = obj[name]
    if not isinstance(obj, dict):
      prefix = key[: len(key) - len(".".join(names[i + 1 :])) - 1]
      raise ZooError(f"config key {prefix!r} is not a mapping, so {key!r} cannot be set")
  obj[names[-1]] = value


def _plain(value: Any, key: str) -> Any:
  """`value` with lists as tuples, if config.json can hold it and give it back unchanged; else ZooError."""
  if value is None or isinstance(value, (bool, int, str)):
    return value
  if isinstance(value, float):
    if not math.isfinite(value):
      raise ZooError(f"config key {key!r}: {value!r} is not a finite number")
    return value
  if isinstance(value, (tuple, list)):
    return tuple(_plain(v, key) for v in value)
  if isinstance(value, dict):
    for k in value:
      if not isinstance(k, str):
        raise ZooError(f"config key {key!r}: the key {_short(k)} of {_short(value)} is not a string")
    return {k: _plain(v, key) for k, v in value.items()}
  raise ZooError(
    f"config key {key!r}: {_short(value)} ({type(value).__name__}) is not a value a config can hold; use "
    "None, True/False, numbers, strings, or tuples, lists and dicts of them"
  )


def apply_overrides(config: Config, assignments: list[str]) -> Config:
  for assignment in assignments:
    apply_override(config, assignment)
  return config


# ---------------------------------------------------------------------------------------------------
# Config files.


def config_dirs() -> list[Path]:
  """Where configs are found: $ZOO_CONFIG_PATH (os.pathsep-separated), then the repository's `configs/`."""
  dirs = [Path(p) for p in os.environ.get("ZOO_CONFIG_PATH", "").split(os.pathsep) if p]
  return dirs + [Path(__file__).resolve().parent.parent / "configs"]


def list_configs(pattern: str = "*") -> list[str]:
  import fnmatch

  pattern = pattern if any(c in pattern for c in "*?[") else f"*{pattern}*"
  names = {p.stem for d in config_dirs() if d.is_dir() for p in d.glob("*.py") if not p.stem.startswith("_")}
  return sorted(n for n in names if fnmatch.fnmatch(n, pattern))


def config_path(name: str) -> Path:
  if name.endswith(".py") and Path(name).is_file():
    return Path(name)
  for d in config_dirs():
    if (d / f"{name}.py").is_file():
      return d / f"{name}.py"
  matches = close_matches(name, list_configs())
  hint = f"did you mean: {', '.join(matches)}?" if matches else f"known: {', '.join(list_configs())}"
  raise ZooError(f"unknown config {name!r}; {hint}")


def _load_module(name: str) -> types.ModuleType:
  path = config_path(name)
  spec = importlib.util.spec_from_file_location(f"zoo_config_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ZooError(f"config file {path} defines no get_config()")
  return module


def get_config(name: str, overrides: list[str] = (), smoke: bool = False) -> Config:
  """Loads `configs/<name>.py` (or a path to a .py file), applies `overrides`, returns the Config."""
  config = _load_module(name).get_config(smoke=smoke)
  if not isinstance(config, Config):
    raise ZooError(
      f"config {name!r}: get_config() must return zoo.config.Config, got {type(config).__name__}"
    )
  check_config(config, f"config {name!r}")
  return apply_overrides(config, list(overrides))


def describe_config(name: str) -> str:
  """The first paragraph of the config file's docstring (its command and result)."""
  doc = _load_module(name).__doc__ or ""
  return doc.strip().split("\n\n")[0]
