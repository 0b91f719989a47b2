"""Property tests of config overrides (`--config.KEY=VALUE`): whatever the key and the value, an override
either applies with the type its key declares, or fails with a ZooError naming the key and changes nothing;
no key is silently ignored, here or when the model, optimiser, schedule, task, dataset or augmentation
named by the config is built from its kwargs.

Hypothesis runs derandomized (the same examples on every run) with a few hundred examples a property.
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import json
import math
import string
import types
import typing
from typing import Any

import optax
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zoo import config as config_lib
from zoo.config import Config, apply_override, from_dict, get_config, to_dict, to_json
from zoo.data import create_augmentation, load_dataset
from zoo.models import create_model, model_fields
from zoo.optim import create_optimizer, create_schedule
from zoo.registry import ZooError
from zoo.tasks import create_task

FAST = settings(
  max_examples=250, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)


def _fields(cls: type, prefix: str = "") -> dict[str, Any]:
  """{dotted key: its annotation} of every leaf key of a config dataclass."""
  hints = typing.get_type_hints(cls)
  out = {}
  for f in dataclasses.fields(cls):
    if dataclasses.is_dataclass(hints[f.name]):
      out.update(_fields(hints[f.name], f"{prefix}{f.name}."))
    else:
      out[prefix + f.name] = hints[f.name]
  return out


ANNOTATIONS = _fields(Config)
KEYS = sorted(ANNOTATIONS)
DICT_KEYS = [k for k in KEYS if typing.get_origin(ANNOTATIONS[k]) is dict]  # model.kwargs, sweep, ...
SECTIONS = sorted({k.rsplit(".", 1)[0] for k in KEYS if "." in k})


# --- strategies ---------------------------------------------------------------------------------------------

_names = st.from_regex(r"[a-z_][a-z0-9_]{0,10}", fullmatch=True)


@st.composite
def _typo(draw, key: str) -> str:
  """`key` with one character deleted, doubled, replaced or two swapped."""
  i = draw(st.integers(0, len(key) - 1))
  how = draw(st.sampled_from(["delete", "double", "replace", "swap"]))
  if how == "delete":
    return key[:i] + key[i + 1 :]
  if how == "double":
    return key[:i] + key[i] + key[i:]
  if how == "replace":
    return key[:i] + draw(st.sampled_from(string.ascii_lowercase + "._- é=")) + key[i + 1 :]
  j = min(i + 1, len(key) - 1)
  return key[:i] + key[j] + key[i] + key[j + 1 :] if j > i else key


@st.composite
def _mutated(draw) -> str:
  key = draw(st.sampled_from(KEYS + SECTIONS))
  how = draw(st.sampled_from(["typo", "empty part", "edge dot", "case", "unicode", "prefix", "suffix"]))
  if how == "typo":
    return draw(_typo(key))
  if how == "empty part":
    parts = key.split(".")
    i = draw(st.integers(0, len(parts)))
    return ".".join([*parts[:i], "", *parts[i:]])
  if how == "edge dot":
    return draw(st.sampled_from([f".{key}", f"{key}.", f"{key}..", f" {key} ", f"\t{key}"]))
  if how == "case":
    return key.upper()
  if how == "unicode":
    return key + draw(st.sampled_from(["é", "\u200b", "\x00", "ー", "🦓", "\ud800"]))
  if how == "prefix":
    return draw(st.sampled_from(["--config.", "config.", "--", "---", "-"])) + key
  return f"{key}.{draw(_names)}"


_keys = st.one_of(
  st.sampled_from(KEYS),
  st.builds(
    lambda k, rest: ".".join([k, *rest]), st.sampled_from(DICT_KEYS), st.lists(_names, min_size=1, max_size=3)
  ),
  st.builds(lambda k: f"sweep.{k}", st.sampled_from(KEYS)),
  _mutated(),
  st.text(max_size=20),
)

_scalars = st.one_of(
  st.none(),
  st.booleans(),
  st.integers(),
  st.integers(min_value=2**62, max_value=2**70),
  st.floats(),  # nan and inf included
  st.text(string.printable, max_size=10),
)
_literals = st.recursive(
  _scalars,
  lambda inner: st.one_of(
    st.tuples(inner, inner),
    st.lists(inner, max_size=3),
    st.dictionaries(st.one_of(st.text(string.ascii_letters, max_size=5), st.integers()), inner, max_size=3),
    st.frozensets(st.integers(), max_size=3),
  ),
  max_leaves=6,
)
_malformed = st.one_of(
  st.sampled_from(
    [
      "(1, 2",
      "[1,",
      "'relu",
      '"relu',
      "relu'",
      "{'a': }",
      "{1: 2}",
      "{1, 2}",
      "b'x'",
      "1j",
      "...",
      "\x00",
      "1e999",
      "-1e999",
      "nan",
      "inf",
      "9" * 400,
      "9" * 5000,
      "0x10",
      "1_000",
      "()",
      "",
      " ",
      "None ",
      "True",
      "=",
      "a=b",
      "lambda: 0",
      "__import__('os').system('true')",
    ]
  ),
  st.builds(
    lambda n, m, c: c[0] * n + c[1] * m,
    st.integers(0, 300),
    st.integers(0, 300),
    st.sampled_from(["()", "[]", "{}"]),
  ),
)
_values = st.one_of(st.builds(repr, _literals), st.text(max_size=20), _malformed)
_assignments = st.one_of(
  st.builds(lambda k, v: f"{k}={v}", _keys, _values),
  _keys,  # no "=" at all
)


# --- what an applied override must look like ----------------------------------------------------------------


def _conforms(value: Any, annotation: Any) -> bool:
  """Whether `value` has the type `annotation` declares, as a config holds it."""
  origin, args = typing.get_origin(annotation), typing.get_args(annotation)
  if origin in (typing.Union, types.UnionType):
    return any(_conforms(value, a) for a in args)
  if annotation is type(None):
    return value is None
  if annotation is bool:
    return type(value) is bool
  if annotation is int:
    return type(value) is int and -(2**63) <= value < 2**63
  if annotation is float:
    return type(value) is float and math.isfinite(value)
  if annotation is str:
    return type(value) is str
  if origin is dict:
    return type(value) is dict and _plain(value)
  raise AssertionError(f"no check for the annotation {annotation}")


def _plain(value: Any) -> bool:
  """Whether config.json holds `value` and gives it back unchanged: JSON's types, tuples for lists."""
  if value is None or type(value) in (bool, int, str):
    return True
  if type(value) is float:
    return math.isfinite(value)
  if type(value) is tuple:
    return all(_plain(v) for v in value)
  if type(value) is dict:
    return all(type(k) is str and _plain(v) for k, v in value.items())
  return False


def _same(got: Any, written: Any) -> bool:
  """Whether the value read back is the one written (ints as floats, lists as tuples, as documented)."""
  if isinstance(written, (list, tuple)):
    return type(got) in (tuple, list) and len(got) == len(written) and all(map(_same, got, written))
  if isinstance(written, dict):
    return type(got) is dict and got.keys() == written.keys() and all(_same(got[k], written[k]) for k in got)
  if isinstance(written, bool) or isinstance(got, bool):
    return type(got) is type(written) and got == written
  return got == written


def _written(text: str) -> Any:
  try:
    return ast.literal_eval(text)
  except Exception:
    return text


def _key_of(assignment: str) -> str:
  """The key as the documented syntax reads it: before the first '=', without --, config. or spaces."""
  key = assignment.partition("=")[0].strip()
  return key.removeprefix("--").removeprefix("config.")


def _read_back(config: Config, key: str) -> tuple[Any, Any]:
  """(the value at `key`, its annotation; None for a value inside a free-form dict)."""
  obj: Any = config
  parts = key.split(".")
  for i, part in enumerate(parts):
    if isinstance(obj, dict):
      if obj is config.sweep:
        return obj[".".join(parts[i:])], None
      obj = obj[part]
      continue
    obj = getattr(obj, part)
  return obj, ANNOTATIONS.get(key)


def _check(assignment: str) -> None:
  config = Config()
  before = copy.deepcopy(to_dict(config))
  key = _key_of(assignment)
  try:
    apply_override(config, assignment)
  except ZooError as e:
    message = str(e)
    if "=" not in assignment or not key:
      assert "not of the form key=value" in message, (assignment, message)
    else:
      assert repr(key) in message, (assignment, message)
    assert to_dict(config) == before, f"{assignment!r} was refused but changed the config"
    return
  except Exception as e:
    raise AssertionError(f"{assignment!r} raised {type(e).__name__}: {e}") from e
  value, annotation = _read_back(config, key)  # a KeyError / AttributeError here: the key went elsewhere
  if annotation is not None:
    assert _conforms(value, annotation), (assignment, value, annotation)
  else:
    assert _plain(value), (assignment, value)
  assert _same(value, _written(assignment.partition("=")[2])), (assignment, value)
  changed = [k for k in before if json.dumps(before[k]) != json.dumps(to_dict(config)[k], default=repr)]
  assert len(changed) <= 1, changed  # One override, one section.
  assert from_dict(json.loads(to_json(config))) == config  # config.json gives back the same config


# --- the properties -----------------------------------------------------------------------------------------


@FAST
@given(_assignments)
def test_any_override_applies_typed_or_fails_naming_its_key(assignment):
  _check(assignment)


@FAST
@given(st.sampled_from(KEYS), _values)
def test_any_value_for_a_real_key_applies_typed_or_fails_naming_the_key(key, value):
  _check(f"{key}={value}")


@FAST
@given(st.lists(st.builds(lambda k, v: f"{k}={v}", st.sampled_from(KEYS), _values), max_size=6))
def test_a_sequence_of_overrides_keeps_every_key_typed(assignments):
  config = Config()
  for assignment in assignments:
    try:
      apply_override(config, assignment)
    except ZooError:
      pass
  for key, annotation in ANNOTATIONS.items():
    assert _conforms(_read_back(config, key)[0], annotation), key
  assert from_dict(json.loads(to_json(config))) == config


# --- the same, down to what is built from the kwargs --------------------------------------------------------

_kwarg_values = st.one_of(
  st.none(),
  st.booleans(),
  st.integers(-3, 8),
  st.floats(-2, 2),
  st.sampled_from(["relu", "gelu", "layer", "none", "x"]),
  st.tuples(st.integers(0, 8)),
  st.tuples(st.floats(0, 1), st.floats(0, 1)),
)


def _build_model(config: Config) -> Any:
  return create_model("mlp", **config.model.kwargs)


def _build_optimizer(config: Config) -> Any:
  return create_optimizer(dataclasses.replace(config.optimizer, name="adam"), optax.constant_schedule(1e-3))


def _build_schedule(config: Config) -> Any:
  return create_schedule(dataclasses.replace(config.schedule, name="cosine"), 1e-3, 100, 10)


def _build_task(config: Config) -> Any:
  return create_task("classification", **config.task.kwargs)


def _build_dataset(config: Config) -> Any:
  return load_dataset("xor", **config.data.kwargs)


def _build_augmentation(config: Config) -> Any:
  return create_augmentation(config.data.augment)


# section -> (the key prefix, its real argument names, the builder)
BUILDERS = {
  "model": ("model.kwargs", list(model_fields("mlp")), _build_model),
  "optimizer": ("optimizer.kwargs", ["b1", "b2", "eps", "eps_root"], _build_optimizer),
  # Names ending in _epochs are converted to _steps first (zoo/optim.py); those are tested apart below.
  "schedule": ("schedule.kwargs", ["alpha", "warmup_steps"], _build_schedule),  # warmup: any schedule
  "task": ("task.kwargs", ["label_smoothing", "class_weights"], _build_task),
  "dataset": ("data.kwargs", ["n_train", "n_test", "noise", "seed"], _build_dataset),
  "augmentation": ("data.augment.random_shift", ["pixels"], _build_augmentation),
}


@pytest.mark.parametrize("section", list(BUILDERS))
def test_kwargs_are_checked_by_name_and_type_when_built(section):
  prefix, real, build = BUILDERS[section]
  names = st.one_of(st.sampled_from(real), _names.filter(lambda n: not n.endswith("_epochs")))

  @settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
  @given(names, _kwarg_values)
  def check(name, value):
    config = Config()
    apply_override(config, f"{prefix}.{name}={value!r}")
    try:
      built = build(config)
    except ZooError as e:
      assert name in str(e), (name, value, str(e))
      return
    assert name in real, f"{prefix}.{name}={value!r} was ignored"  # built with an argument it lacks
    if section == "model":
      assert _same(getattr(built, name), value)

  check()


@pytest.mark.parametrize(
  "section, name, value, message",
  [
    ("model", "hiden_sizes", (8,), r"model 'mlp' has no field 'hiden_sizes'; did you mean: hidden_sizes"),
    ("model", "hidden_sizes", "wide", r"config key 'model.kwargs.hidden_sizes' expects tuple\[int, ...\]"),
    ("model", "dropout", float("inf"), r"'model.kwargs.dropout' .*not a finite number"),
    ("optimizer", "beta1", 0.9, r"optimizer 'adam' takes no argument 'beta1'"),
    ("optimizer", "b1", "high", r"config key 'optimizer.kwargs.b1' expects float"),
    ("schedule", "alpa", 0.1, r"schedule 'cosine' takes no argument 'alpa'; did you mean: alpha"),
    ("task", "label_smothing", 0.1, r"task 'classification' takes no argument 'label_smothing'"),
    ("task", "class_weights", (1, "a"), r"config key 'task.kwargs.class_weights' expects"),
    ("dataset", "n_trian", 4, r"dataset 'xor' takes no argument 'n_trian'; did you mean: n_train"),
    ("dataset", "n_train", 2**64, r"config key 'data.kwargs.n_train' expects int.*64-bit"),
    (
      "augmentation",
      "pixel",
      2,
      r"augmentation 'random_shift' takes no argument 'pixel'; did you mean: pixels",
    ),
  ],
)
def test_a_bad_kwarg_is_refused_at_build_time_naming_it(section, name, value, message):
  prefix, _, build = BUILDERS[section]
  config = Config()
  obj: Any = config
  *path, last = f"{prefix}.{name}".split(".")
  for part in path:
    obj = getattr(obj, part) if not isinstance(obj, dict) else obj.setdefault(part, {})
  obj[last] = value  # as a config file would write it, bypassing the override parser's checks
  with pytest.raises(ZooError, match=message):
    build(config)


# --- bugs found, kept as examples ---------------------------------------------------------------------------


@pytest.mark.parametrize(
  "assignment, message",
  [
    ("optimizer.learning_rate=" + "9" * 400, "too large for a float"),  # was an OverflowError
    ("optimizer.learning_rate=1e999", "not a finite number"),  # was inf, accepted
    ("seed=18446744073709551616", "outside the 64-bit integer range"),  # JAX's PRNG key would overflow
    ("model.kwargs={1: 2}", "the key 1 of {1: 2} is not a string"),  # create_model(**{1: 2}): a TypeError
    ("sweep={1: 2}", "the key 1 of {1: 2} is not a string"),  # an AttributeError in the ensemble trainer
    ("model.kwargs.=3", "'' is not a valid argument name"),  # was a kwarg named ''
    ("data.augment.random-shift.pixels=2", "'random-shift' is not a valid argument name"),
    ("model.kwargs.a={1, 2}", "not a value a config can hold"),  # to_json: a TypeError at the run's start
    ("data.kwargs.x=b'x'", "not a value a config can hold"),
    ("model.kwargs.x=...", "not a value a config can hold"),
    ("model.kwargs.x=1j", "not a value a config can hold"),
    ("model.name='mlp", "not a valid Python literal"),  # was the string "'mlp"
    ("model.kwargs.hidden_sizes=(256, 128", "not a valid Python literal"),  # was the string "(256, 128"
    ("model.kwargs.hidden_sizes=" + "[" * 300, "not a valid Python literal"),
    ("sweep.=(1, 2)", "'' is not a valid argument name"),
  ],
)
def test_overrides_that_were_accepted_wrongly_or_crashed(assignment, message):
  config = Config()
  with pytest.raises(ZooError, match=message) as err:
    apply_override(config, assignment)
  assert repr(_key_of(assignment)) in str(err.value)
  assert config == Config()


def test_a_refused_override_below_a_dict_creates_nothing():
  config = Config()
  for assignment in ("data.augment.random_shift.pix-els=2", "model.kwargs.a.b=(1", "model.kwargs.a.b={1}"):
    with pytest.raises(ZooError):
      apply_override(config, assignment)
  assert config == Config()
  apply_override(config, "model.kwargs.a=1")
  with pytest.raises(ZooError, match=r"'model.kwargs.a' is not a mapping"):
    apply_override(config, "model.kwargs.a.b=2")
  assert config.model.kwargs == {"a": 1}


def test_a_sweep_key_is_one_dotted_key():
  from zoo.train.ensemble import member_configs

  config = Config()
  apply_override(config, "sweep.optimizer.learning_rate=(1e-4, 1e-3)")
  assert config.sweep == {"optimizer.learning_rate": (1e-4, 1e-3)}
  members, labels = member_configs(config)
  assert [m.optimizer.learning_rate for m in members] == [1e-4, 1e-3] and labels == [
    "learning_rate=0.0001",
    "learning_rate=0.001",
  ]


def test_lists_are_kept_as_tuples_so_config_json_round_trips():
  config = Config()
  apply_override(config, "model.kwargs.hidden_sizes=[64, 32]")
  apply_override(config, "data.augment={'random_shift': {'pixels': 2}, 'crop': {'size': [8, 8]}}")
  assert config.model.kwargs["hidden_sizes"] == (64, 32)
  assert config.data.augment["crop"]["size"] == (8, 8)
  assert from_dict(json.loads(to_json(config))) == config


# --- config files and config.json ---------------------------------------------------------------------------


def test_a_config_file_that_sets_a_misspelt_or_mistyped_key_is_refused(tmp_path):
  path = tmp_path / "mine.py"
  body = (
    '"""python train.py --config mine"""\nfrom zoo.config import Config\n\n\ndef get_config(smoke=False):\n'
  )
  path.write_text(body + "  c = Config()\n  c.optimizer.learnig_rate = 0.1\n  return c\n")
  with pytest.raises(
    ZooError, match=r"sets 'optimizer.learnig_rate', which is not a config key.*learning_rate"
  ):
    get_config(str(path))
  path.write_text(body + "  c = Config()\n  c.epochs = '10'\n  return c\n")
  with pytest.raises(ZooError, match=r"config '.*mine.py': config key 'epochs' expects int, got '10'"):
    get_config(str(path))
  path.write_text(body + "  c = Config()\n  c.optimizer.learning_rate = 1\n  return c\n")
  assert type(get_config(str(path)).optimizer.learning_rate) is float  # converted, as an override would be


@pytest.mark.parametrize(
  "change, message",
  [
    (lambda d: d.update(epochs="ten"), r"config key 'epochs' expects int, got 'ten'"),
    (lambda d: d.update(model=3), r"config key 'model' must be a mapping"),
    (lambda d: d["model"].update(nme="mlp"), r"unknown config key 'model.nme'; did you mean: model.name"),
    (lambda d: d["optimizer"].update(learning_rate=None), r"'optimizer.learning_rate' expects float"),
    (lambda d: d["data"].update(kwargs=[1]), r"'data.kwargs' expects dict"),
  ],
)
def test_a_damaged_config_json_is_refused_naming_the_key(change, message):
  d = json.loads(to_json(Config()))
  change(d)
  with pytest.raises(ZooError, match=message):
    from_dict(d)


def test_every_config_file_passes_the_checks():
  for name in config_lib.list_configs():
    config = get_config(name, smoke=True)
    assert from_dict(json.loads(to_json(config))) == config, name


def test_schedule_epochs_too_large_and_options_of_an_optionless_function_are_named():
  from zoo.optim import _epochs_to_steps
  from zoo.registry import call_with_checked_kwargs

  with pytest.raises(ZooError, match="warmup_epochs=1e\\+308 is too many epochs"):
    _epochs_to_steps({"warmup_epochs": 1e308}, 10)

  def takes_nothing():
    return None

  with pytest.raises(ZooError, match="foo.*takes no options"):
    call_with_checked_kwargs("optimizer", "plain", takes_nothing, {"foo": 1})
