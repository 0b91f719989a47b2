"""A trained run as serialized StableHLO (`jax.export`, the batch size symbolic) plus its variables, each file
checked by sha256 when loaded back: `export_run(workdir)`, then `load_exported(path)(x)` anywhere with JAX.

The directory (default RUN/export/):
  model.stablehlo   `jax.export`'s serialization of `forward(variables, x)`: the run's normalisation then its
                    model in eval mode; x is (b, *input_shape), b symbolic, float32 raw values (uint8 images'
                    pixels as 0..255) or int32 token ids, as the manifest's `input` says.
  variables.npz     the variables, one array per '/'-joined path ('params/Dense_0/kernel').
  manifest.json     the files' sha256 and sizes, input and output shapes and dtypes, the preprocessing
                    (mean, std, vocabulary), the model's name and kwargs, the checkpoint's step.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from zoo.interop.predict import example_shape, forward_fn
from zoo.models import model_spec
from zoo.registry import ZooError
from zoo.train.restore import load_run

FORMAT = "zoo-export"
FORMAT_VERSION = 1
MODEL_FILE = "model.stablehlo"
VARIABLES_FILE = "variables.npz"
MANIFEST_FILE = "manifest.json"
BATCH = "b"  # The symbolic batch dimension's name.


def export_run(
  workdir: str | Path,
  out_dir: str | Path | None = None,
  *,
  step: int | None = None,
  input_shape: Sequence[int] | None = None,
  batch_size: int | None = None,
  platforms: Sequence[str] | None = None,
) -> Path:
  """Writes the run's model as model.stablehlo, variables.npz and manifest.json into `out_dir` (default
  `workdir`/export) and returns that directory.

  Args:
    workdir: a training run's directory (or one `import_to_workdir` wrote).
    out_dir: where to write; created if absent; files of an earlier export there are replaced.
    step: the checkpoint (default: the newest, as `load_run`).
    input_shape: one example's shape, e.g. (28, 28, 1); by default the one the run trained on
      (`predict.example_shape`).
    batch_size: a fixed batch size instead of the symbolic one (for models that need a concrete one).
    platforms: e.g. ('cpu', 'cuda'); default: the platform JAX runs on here.
  """
  run = load_run(workdir, step)
  name = run.card["model"]
  if model_spec(name).kind not in ("classifier", "lm"):
    raise ZooError(f"{name} is a {model_spec(name).kind} model: export serves models of one input array")
  shape = tuple(int(n) for n in input_shape) if input_shape is not None else example_shape(run)
  tokens = bool(run.card.get("tokens"))
  dtype = np.dtype(np.int32 if tokens else np.float32)
  batch = jax.export.symbolic_shape(BATCH) if batch_size is None else (int(batch_size),)
  flat = _flatten(run.variables)
  variables = traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in flat.items()})
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), variables)
  x = jax.ShapeDtypeStruct((*batch, *shape), dtype)
  try:
    exported = jax.export.export(jax.jit(forward_fn(run)), platforms=platforms)(abstract, x)
  except ZooError:
    raise
  except Exception as e:  # A model that cannot trace with a symbolic batch, or not at this shape.
    reason = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
    hint = " (or export with a fixed --batch-size)" if batch_size is None else ""
    raise ZooError(
      f"{name} could not be exported for inputs {_shape_text(x.shape)} {dtype}: {reason}. Check the input "
      f"shape{hint}"
    ) from e
  try:
    blob = exported.serialize()
  except ImportError as e:  # jax.export serializes with flatbuffers, an optional dependency of JAX.
    raise ZooError(f"exporting needs the flatbuffers package: pip install flatbuffers ({e})") from e

  out = Path(out_dir) if out_dir is not None else run.workdir / "export"
  out.mkdir(parents=True, exist_ok=True)
  _write_atomic(out / MODEL_FILE, blob)
  tmp = out / (VARIABLES_FILE + ".tmp.npz")
  np.savez(tmp, **flat)
  os.replace(tmp, out / VARIABLES_FILE)
  mean, std = np.asarray(run.card["mean"], np.float32), np.asarray(run.card["std"], np.float32)
  manifest = {
    "format": FORMAT,
    "format_version": FORMAT_VERSION,
    "model": name,
    "kwargs": run.card["kwargs"],
    "step": run.step,
    "task": run.config.task.name,
    "workdir": str(run.workdir.resolve()),
    "input": {
      "shape": [BATCH if batch_size is None else int(batch_size), *shape],
      "dtype": dtype.name,
      "values": "int32 token ids (0 = padding)" if tokens else "raw values as the training data held them",
    },
    "outputs": [{"shape": [_dim(d) for d in a.shape], "dtype": str(a.dtype)} for a in exported.out_avals],
    "preprocessing": {
      "in_graph": "none: token ids go to the model as they are" if tokens else "(x - mean) / std",
      "mean": mean.tolist(),
      "std": std.tolist(),
      "vocab": run.card.get("vocab"),
      "tokens": tokens,
    },
    "platforms": list(exported.platforms),
    "jax_version": jax.__version__,
    "variables": {k: {"shape": list(v.shape), "dtype": v.dtype.name} for k, v in flat.items()},
    "files": {
      f: {"sha256": _sha256(out / f), "bytes": (out / f).stat().st_size} for f in (MODEL_FILE, VARIABLES_FILE)
    },
  }
  _write_atomic(out / MANIFEST_FILE, (json.dumps(manifest, indent=2) + "\n").encode())
  return out


@dataclasses.dataclass
class ExportedModel:
  """An exported model loaded back: `model(x)` -> its outputs (NumPy) for a batch `x` of the manifest's
  input shape (any batch size when it is symbolic)."""

  path: Path
  manifest: dict[str, Any]
  exported: jax.export.Exported
  variables: dict[str, Any]

  def __post_init__(self):
    self._call = jax.jit(self.exported.call)

  @property
  def input_shape(self) -> tuple[int | str, ...]:
    """The input's shape, the batch dimension first ('b' when symbolic)."""
    return tuple(self.manifest["input"]["shape"])

  def __call__(self, x: Any) -> Any:
    x = np.asarray(x)
    want = np.dtype(self.manifest["input"]["dtype"])
    example = tuple(self.input_shape[1:])
    batch = self.input_shape[0]
    if (
      x.shape[1:] != example
      or x.ndim != len(self.input_shape)
      or (isinstance(batch, int) and len(x) != batch)
    ):
      raise ZooError(f"the exported model in {self.path} takes inputs {self.input_shape}, got {x.shape}")
    if x.dtype != want:
      if not (x.dtype.kind in "biu" or (x.dtype.kind == "f" and want.kind == "f")):
        raise ZooError(f"the exported model in {self.path} takes {want} inputs, got {x.dtype}")
      x = x.astype(want)
    return jax.tree.map(np.asarray, self._call(self.variables, x))


def load_exported(path: str | Path) -> ExportedModel:
  """The model `export_run` wrote into directory `path` (or its manifest.json), after checking each file's
  sha256 against the manifest: a damaged or replaced file is refused with a ZooError naming it."""
  path = Path(path)
  directory = path.parent if path.name == MANIFEST_FILE else path
  manifest_path = directory / MANIFEST_FILE
  if not manifest_path.is_file():
    raise ZooError(f"{directory} holds no {MANIFEST_FILE}: export a run there first (python -m zoo export)")
  try:
    manifest = json.loads(manifest_path.read_text())
    records = {f: manifest["files"][f] for f in (MODEL_FILE, VARIABLES_FILE)}
  except (ValueError, KeyError, TypeError) as e:
    raise ZooError(
      f"{manifest_path} is damaged (not a zoo export manifest): {e}; export the run again"
    ) from e
  if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
    raise ZooError(
      f"{manifest_path} is not a {FORMAT} version {FORMAT_VERSION} manifest "
      f"(format {manifest.get('format')!r}, version {manifest.get('format_version')!r})"
    )
  for name, record in records.items():
    file = directory / name
    if not file.is_file():
      raise ZooError(f"{file} is missing: the export in {directory} is incomplete; export the run again")
    digest = _sha256(file)
    if digest != record.get("sha256"):
      raise ZooError(
        f"{file} is damaged: its sha256 is {digest}, but {manifest_path} records {record.get('sha256')}; "
        f"export the run again"
      )
  try:
    exported = jax.export.deserialize(bytearray((directory / MODEL_FILE).read_bytes()))
  except ImportError as e:
    raise ZooError(f"loading an export needs the flatbuffers package: pip install flatbuffers ({e})") from e
  with np.load(directory / VARIABLES_FILE, allow_pickle=False) as stored:
    flat = {}
    for key, spec in manifest.get("variables", {}).items():
      value = stored[key]
      wanted = jnp.dtype(spec["dtype"])
      flat[tuple(key.split("/"))] = value.view(wanted) if value.dtype != wanted else value  # bfloat16 is V2
  variables = jax.device_put(traverse_util.unflatten_dict(flat))
  return ExportedModel(directory, manifest, exported, variables)


def _flatten(variables: dict[str, Any]) -> dict[str, np.ndarray]:
  """'/'-joined paths -> host arrays, empty collections dropped (so the export's and the reload's trees
  agree)."""
  flat = traverse_util.flatten_dict(jax.tree.map(np.asarray, dict(variables)), sep="/")
  return {k: np.asarray(v) for k, v in flat.items()}


def _sha256(path: Path) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def _write_atomic(path: Path, data: bytes) -> None:
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_bytes(data)
  os.replace(tmp, path)


def _dim(d: Any) -> int | str:
  return str(d) if jax.export.is_symbolic_dim(d) else int(d)


def _shape_text(shape: tuple[Any, ...]) -> str:
  return "(" + ", ".join(str(_dim(d)) for d in shape) + ")"
