"""Predictions from a trained run: `zoo.load(workdir)(raw inputs)` applies the preprocessing the run trained
with, then the model in eval mode (images as uint8 arrays or files, feature arrays, strings for text models).
"""

from __future__ import annotations

import functools
import inspect
import json
import re
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from zoo.config import DataConfig
from zoo.data import ImageFolder, load_dataset
from zoo.data.datasets import DATASETS
from zoo.data.image_folder import load_image, resize_size
from zoo.data.text import PAD, UNK
from zoo.models import model_spec
from zoo.models.transformer import GPT
from zoo.registry import ZooError
from zoo.train.restore import Run, char_vocab, encode, load_run, sample_texts
from zoo.train.steps import normalizer

# What a training task's outputs are, for a prediction (other tasks' models are not served here).
TASK_OUTPUTS = {
  "classification": "classifier",
  "binary": "binary",
  "regression": "regression",
  "language_model": "language_model",
}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def load(workdir: str | Path, *, step: int | None = None, length: int = 20) -> Predictor:
  """A `Predictor` for the run trained in `workdir` (checkpoint `step`, default the newest; see `load_run`).

  `length`: how many characters a language model's greedy continuation has (see `Predictor`).
  """
  return Predictor(load_run(workdir, step), length=length)


class Predictor:
  """`predictor(batch) -> dict of NumPy arrays`, one entry per input, in the order given.

  Inputs, raw as the training data held them:
  - images or features: one example (H, W, C) / (D,), a batch (N, H, W, C) / (N, D), or a list of examples;
    uint8 pixel values for images. They are normalised as in training ((x - mean) / std of model.json).
  - text models: a string or a list of strings.

  Outputs by the task the run trained:
  - classification: `label` (N,) int64, `probability` (N,) float32 of that label, `probabilities` (N, K)
    float32 (softmax), `logits` (N, K) float32.
  - binary: the same with K = 2 (`probabilities[:, 1]` = sigmoid(logit)); `logits` (N,) float32.
  - regression: `output` (N,) or (N, T) float32.
  - language_model (GPT, CharLM on characters): `next` (N,) str, the most likely next character after each
    text; `probability` (N,) float32, its probability; `probabilities` (N, V) float32 over the vocabulary;
    `continuation` (N,) str, the `length` characters of greedy decoding (`restore.sample_texts` with
    temperature 0). An empty text starts at a line break, as `python -m zoo sample` does; a GPT reads only
    its last block_size characters.
  """

  def __init__(self, run: Run, *, length: int = 20, batch_size: int = 256):
    self.run = run
    self.length = length
    self.batch_size = batch_size
    name, task = run.card["model"], run.config.task.name
    kind = model_spec(name).kind
    self.task = TASK_OUTPUTS.get(task)
    if (
      self.task is None
      or kind not in ("classifier", "lm")
      or (kind == "lm") != (self.task == "language_model")
    ):
      raise ZooError(
        f"{run.workdir} holds a {name} trained for task {task!r}: predictions are served for "
        f"{', '.join(TASK_OUTPUTS)} runs of classifiers and language models"
      )
    self.reads_text = bool(run.card.get("tokens"))
    if self.reads_text and run.vocab is None:
      raise ZooError(
        f"{run.workdir}/model.json holds no vocabulary: its model's text inputs cannot be encoded"
      )
    card = run.card
    self._forward = _jitted_forward(
      run.model, self.reads_text, json.dumps(card["mean"]), json.dumps(card["std"])
    )
    self._checked: set[tuple[Any, ...]] = set()

  def __call__(self, batch: Any) -> dict[str, np.ndarray]:
    if self.task == "language_model":
      return self._continue(self._texts(batch))
    return self._interpret(self.outputs(self.prepare(batch)))

  def prepare(self, batch: Any) -> np.ndarray:
    """The model's input batch before normalisation: float32 (N, ...) arrays, or int32 token ids (N, T)."""
    if self.reads_text:
      return self._tokens(self._texts(batch))
    if isinstance(batch, (list, tuple)):
      if not batch:
        raise ZooError("nothing to predict: the list of inputs is empty")
      arrays = [np.asarray(a) for a in batch]
      if len({a.shape for a in arrays}) > 1:
        raise ZooError(f"the inputs differ in shape ({sorted({a.shape for a in arrays})}): a batch needs one")
      x = np.stack(arrays)
    else:
      x = np.asarray(batch)
      rank = self._example_rank()
      if x.ndim == rank:
        x = x[None]
      elif x.ndim != rank + 1:
        raise ZooError(
          f"the model of {self.run.workdir} takes examples of {rank} dimensions (a batch has {rank + 1}); "
          f"got an array of shape {x.shape}"
        )
    if x.dtype.kind not in "biuf" or x.size == 0:
      raise ZooError(f"inputs must be non-empty numeric arrays (uint8 images, float features), got {x.dtype}")
    # Statistics per channel must not broadcast one input channel into three (a grey image to an RGB model).
    stats = np.shape(self.run.card["mean"])
    if not _broadcasts_into(stats, x.shape[1:]):
      raise ZooError(
        f"inputs of shape {x.shape[1:]} do not fit the model of {self.run.workdir}: its normalisation has "
        f"statistics of shape {stats} (one per channel or feature of its training data)"
      )
    # float32 on the host: the compiled forward then matches an exported model's (python -m zoo export).
    return x.astype(np.float32)

  def outputs(self, x: np.ndarray) -> np.ndarray:
    """The model's raw outputs (logits) for a prepared batch (`prepare`), in chunks of `batch_size`."""
    key = (x.shape[1:], x.dtype.str)
    if key not in self._checked:
      spec = jax.ShapeDtypeStruct((1, *x.shape[1:]), x.dtype)
      try:
        jax.eval_shape(self._forward, self.run.variables, spec)
      except ZooError:
        raise
      except Exception as e:  # Flax's and XLA's shape errors: the model cannot take such inputs.
        reason = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise ZooError(
          f"the model of {self.run.workdir} ({self.run.card['model']}) cannot take inputs of shape "
          f"{x.shape[1:]}: {reason}"
        ) from e
      self._checked.add(key)
    chunks = [
      self._forward(self.run.variables, x[i : i + self.batch_size]) for i in range(0, len(x), self.batch_size)
    ]
    return np.concatenate([np.asarray(c) for c in chunks])

  def read_files(self, paths: Sequence[str | Path]) -> tuple[list[str], list[Any]]:
    """(names, inputs) read from files for `__call__`: images (PNG, JPEG, ... via Pillow) as uint8 arrays,
    `.npy` arrays (one example, or a batch named FILE[i]), `.csv` rows of features; for text models, each
    non-blank line of a text file (named FILE:LINE)."""
    names: list[str] = []
    inputs: list[Any] = []
    for path in map(Path, paths):
      if not path.is_file():
        raise ZooError(f"no input file {path}")
      suffix = path.suffix.lower()
      if self.reads_text:
        try:
          lines = path.read_text(encoding="utf-8").split("\n")
        except UnicodeDecodeError as e:
          raise ZooError(f"{path} is not UTF-8 text ({e}); the model reads text, one input per line") from e
        for i, line in enumerate(lines, 1):
          if line.strip():
            names.append(f"{path}:{i}")
            inputs.append(line.rstrip("\r"))
      elif suffix in IMAGE_SUFFIXES:
        names.append(str(path))
        inputs.append(self._read_image(path))
      elif suffix in (".npy", ".csv"):
        x = (
          np.load(path, allow_pickle=False) if suffix == ".npy" else np.loadtxt(path, delimiter=",", ndmin=2)
        )
        if x.ndim == self._example_rank():
          names.append(str(path))
          inputs.append(x)
        else:
          names += [f"{path}[{i}]" for i in range(len(x))]
          inputs += list(x)
      else:
        raise ZooError(
          f"{path}: the model reads arrays; give images ({', '.join(IMAGE_SUFFIXES)}), .npy or .csv files"
        )
    return names, inputs

  # ---------------------------------------------------------------------------------------------------

  def _example_rank(self) -> int:
    # Cheap first: a per-channel or per-feature mean has an example's rank; else model.json or the data.
    if self.run.card.get("input_shape") is None and (rank := np.ndim(self.run.card["mean"])):
      return rank
    return len(example_shape(self.run))

  def _interpret(self, outputs: np.ndarray) -> dict[str, np.ndarray]:
    if self.task == "regression":
      return {"output": outputs.astype(np.float32)}
    if self.task == "binary":
      logits = outputs.reshape(len(outputs)).astype(np.float32)
      p = np.asarray(jax.nn.sigmoid(logits))
      probabilities = np.stack([1 - p, p], axis=-1)
      label = (logits > 0).astype(np.int64)
    else:
      logits = outputs.astype(np.float32)
      probabilities = np.asarray(jax.nn.softmax(logits, axis=-1))
      label = np.argmax(logits, axis=-1).astype(np.int64)
    probability = np.take_along_axis(probabilities, label[:, None], axis=-1)[:, 0]
    return {"label": label, "probability": probability, "probabilities": probabilities, "logits": logits}

  def _texts(self, batch: Any) -> list[str]:
    texts = [batch] if isinstance(batch, str) else list(batch) if isinstance(batch, (list, tuple)) else None
    if isinstance(batch, np.ndarray) and batch.dtype.kind == "U":
      texts = [str(t) for t in batch.reshape(-1)]
    if texts is None or not all(isinstance(t, str) for t in texts):
      raise ZooError(
        f"the model of {self.run.workdir} reads text: give a string or a list of strings, not "
        f"{type(batch).__name__}"
      )
    if not texts:
      raise ZooError("nothing to predict: the list of texts is empty")
    return texts

  def _tokens(self, texts: list[str]) -> np.ndarray:
    vocab = self.run.vocab
    if isinstance(vocab, str):
      ids = [encode(vocab, t) for t in texts]
    else:
      index = {w: i for i, w in enumerate(vocab)}
      ids = [np.array([index.get(w, UNK) for w in sst_words(t, index)], np.int32) for t in texts]
    # Padded (or cut) to the length the run trained on, as its dataset padded; else to the longest text.
    width = sequence_length(self.run) or max(max(len(i) for i in ids), 1)
    tokens = np.full((len(ids), width), PAD, np.int32)
    for row, i in zip(tokens, ids, strict=True):
      row[: min(len(i), width)] = i[:width]
    return tokens

  def _continue(self, texts: list[str]) -> dict[str, np.ndarray]:
    run = self.run
    vocab = char_vocab(run)
    start = "\n" if "\n" in vocab else vocab[0]  # As sample_texts conditions an empty prompt.
    contexts = [encode(vocab, t or start) for t in texts]
    if isinstance(run.model, GPT):  # Its context: the last block_size characters.
      contexts = [c[-run.model.block_size :] for c in contexts]
    lengths = np.array([len(c) for c in contexts])
    tokens = np.zeros((len(contexts), lengths.max()), np.int32)  # Right padding: causal models never see it.
    for row, c in zip(tokens, contexts, strict=True):
      row[: len(c)] = c
    last = self.outputs(tokens)[np.arange(len(tokens)), lengths - 1].astype(np.float32)  # (N, V)
    probabilities = np.asarray(jax.nn.softmax(last, axis=-1))
    nxt = np.argmax(last, axis=-1)
    greedy = [sample_texts(run, t, self.length, temperature=0.0)[0][len(t) :] for t in texts]
    return {
      "next": np.array([vocab[i] for i in nxt]),
      "probability": probabilities[np.arange(len(nxt)), nxt],
      "probabilities": probabilities,
      "continuation": np.array(greedy),
    }

  def _read_image(self, path: Path) -> np.ndarray:
    shape = example_shape(self.run)
    if len(shape) != 3 or shape[-1] not in (1, 3):
      raise ZooError(f"{path}: the model of {self.run.workdir} takes inputs of shape {shape}, not images")
    from PIL import Image, UnidentifiedImageError

    try:
      if is_streamed(self.run.config.data):  # An image folder's evaluation decoding: resize, centre crop.
        return load_image(path, resize_size(shape[0]), shape[0])
      with Image.open(path) as img:
        pixels = np.asarray(img.convert("L" if shape[-1] == 1 else "RGB"), np.uint8)
    except (UnidentifiedImageError, OSError) as e:
      raise ZooError(f"{path} could not be read as an image: {e}") from e
    pixels = pixels.reshape(*pixels.shape[:2], -1)
    if pixels.shape != shape:
      raise ZooError(
        f"{path} is {pixels.shape[1]}x{pixels.shape[0]} pixels; the model of {self.run.workdir} was trained "
        f"on {shape[1]}x{shape[0]} images ({self.run.config.data.name}): resize it to that size first"
      )
    return pixels


def _broadcasts_into(shape: tuple[int, ...], target: tuple[int, ...]) -> bool:
  try:
    return len(shape) <= len(target) and np.broadcast_shapes(shape, target) == target
  except ValueError:
    return False


def forward_fn(run: Run) -> Callable[[dict[str, Any], jax.Array], Any]:
  """`forward(variables, x)`: raw inputs (float32 as the data held them, or int32 token ids) -> the model's
  outputs in eval mode, after the normalisation the run trained with (none for token ids)."""
  return _forward(run.model, bool(run.card.get("tokens")), run.card["mean"], run.card["std"])


def _forward(model: Any, tokens: bool, mean: Any, std: Any) -> Callable[[dict[str, Any], jax.Array], Any]:
  if tokens:
    return lambda variables, x: model.apply(variables, x, train=False)
  preprocess = normalizer(np.asarray(mean, np.float32), np.asarray(std, np.float32))
  return lambda variables, x: model.apply(variables, preprocess(x), train=False)


@functools.lru_cache(maxsize=8)
def _jitted_forward(
  model: Any, tokens: bool, mean: str, std: str
) -> Callable[[dict[str, Any], jax.Array], Any]:
  # One compiled forward per model and normalisation (JSON), shared by every Predictor of a run: a new jit
  # of a new function would compile again.
  return jax.jit(_forward(model, tokens, json.loads(mean), json.loads(std)))


def example_shape(run: Run) -> tuple[int, ...]:
  """The shape of one model input as the run trained on it: an image's (H, W, C), a feature vector's (D,), a
  text's (T,) token ids. From model.json's `input_shape` when it holds one, else the data config (a text's
  length, an image folder's image_size), else the dataset itself, loaded for its shape."""
  if run.card.get("input_shape") is not None:
    return tuple(int(n) for n in run.card["input_shape"])
  if run.card.get("tokens") and (length := sequence_length(run)):
    return (length,)
  data = run.config.data
  if is_streamed(data):
    size = _loader_argument(data, "image_size")
    return (size, size, 3)
  try:
    dataset = load_dataset(data.name, data_dir=data.data_dir, **data.kwargs)
  except ZooError as e:
    raise ZooError(
      f"{run.workdir}/model.json does not record the model's input shape, and the run's dataset "
      f"{data.name!r} could not be read to find it: {e}"
    ) from e
  return tuple(dataset.x_train.shape[1:])


def sequence_length(run: Run) -> int | None:
  """The token length a text model trained on (its dataset's block_size or max_len), None when unknown."""
  if run.card.get("input_shape") is not None:
    return int(run.card["input_shape"][0])
  key = "block_size" if run.config.task.name == "language_model" else "max_len"
  length = _loader_argument(run.config.data, key)
  return length if isinstance(length, int) else None


def is_streamed(data: DataConfig) -> bool:
  """Whether the dataset is an image folder streamed from disk (its images decoded at image_size)."""
  try:
    return typing.get_type_hints(DATASETS.get(data.name)).get("return") is ImageFolder
  except (NameError, TypeError):
    return False


def _loader_argument(data: DataConfig, key: str) -> Any:
  """The dataset loader's argument `key` as the config gave it, else the loader's default (None if none)."""
  if key in data.kwargs:
    return data.kwargs[key]
  parameter = inspect.signature(DATASETS.get(data.name)).parameters.get(key)
  return None if parameter is None or parameter.default is inspect.Parameter.empty else parameter.default


# ---------------------------------------------------------------------------------------------------------
# Text as the Stanford Sentiment Treebank's tokens.

_CONTRACTION = re.compile(r"^(.+?)(n't|'s|'re|'ve|'ll|'d|'m)$")
_OPENING = ('"', "``", "`", "(", "[", "{", "'")
_CLOSING = ("...", '"', "''", ".", ",", ";", ":", "?", "!", ")", "]", "}", "'")
_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}


def sst_words(text: str, vocab: Mapping[str, int] | Sequence[str] = ()) -> list[str]:
  """`text` as SST's tokens (Penn Treebank style, lower-cased): punctuation split off, contractions split
  (don't -> do n't), brackets as -lrb- / -rrb-, double quotes as `` and '', '/' and '*' escaped. A chunk
  the vocabulary holds whole (mr., e.t., coming-of-age) is kept whole."""
  words = []
  for chunk in text.lower().replace("/", "\\/").replace("*", "\\*").split():
    lead, trail = [], []
    while chunk not in vocab:  # Peel punctuation off either end until a known word (or none) remains.
      opening = next((p for p in _OPENING if chunk.startswith(p) and len(chunk) > len(p)), None)
      closing = next((p for p in _CLOSING if chunk.endswith(p) and len(chunk) > len(p)), None)
      if opening:
        lead.append("``" if opening == '"' else opening)
        chunk = chunk[len(opening) :]
      elif closing:
        trail.insert(0, "''" if closing == '"' else closing)
        chunk = chunk[: -len(closing)]
      else:
        break
    match = _CONTRACTION.match(chunk) if chunk not in vocab else None
    core = [match[1], match[2]] if match else [chunk]
    words += [_BRACKETS.get(w, w) for w in (*lead, *core, *trail)]
  return words


def format_predictions(names: Sequence[str], predictions: Mapping[str, np.ndarray]) -> str:
  """Tab-separated lines, a header then one line per input: input, label, probability (classifiers); input,
  output (regression); input, next, probability, continuation (language models; strings JSON-quoted)."""
  if "continuation" in predictions:
    rows = [("input", "next", "probability", "continuation")]
    for name, nxt, p, text in zip(
      names, predictions["next"], predictions["probability"], predictions["continuation"], strict=True
    ):
      rows.append(
        (
          name,
          json.dumps(str(nxt), ensure_ascii=False),
          f"{p:.4f}",
          json.dumps(str(text), ensure_ascii=False),
        )
      )
  elif "label" in predictions:
    rows = [("input", "label", "probability")]
    rows += [
      (n, str(y), f"{p:.4f}")
      for n, y, p in zip(names, predictions["label"], predictions["probability"], strict=True)
    ]
  else:
    rows = [("input", "output")]
    rows += [
      (n, ",".join(f"{v:.6g}" for v in np.atleast_1d(o)))
      for n, o in zip(names, predictions["output"], strict=True)
    ]
  return "\n".join("\t".join(row) for row in rows)
