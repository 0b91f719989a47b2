"""Token datasets and the language-model task: windows, the Dataset's token checks, the metrics."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import pytest

from zoo.data import Dataset
from zoo.data.text import token_windows
from zoo.tasks import create_task
from zoo.train.loop import build


def test_token_windows_cover_the_stream_once_with_next_token_labels():
  tokens = np.arange(23, dtype=np.int32)
  x, y = token_windows(tokens, 5)
  assert x.shape == y.shape == (4, 5) and x.dtype == np.int32
  np.testing.assert_array_equal(x.ravel(), tokens[:20])
  np.testing.assert_array_equal(y, x + 1)


def _tokens_dataset(**kw) -> Dataset:
  rng = np.random.default_rng(0)
  x = rng.integers(0, 7, (40, 6)).astype(np.int32)
  y = np.roll(x, -1, axis=1)
  args = dict(tokens=True, vocab="abcdefg", **kw)
  return Dataset("toy", x[:32], y[:32], x[32:], y[32:], 7, 0.0, **args)


def test_token_datasets_need_int32_ids_and_a_vocab_and_may_label_every_position():
  ds = _tokens_dataset()
  assert ds.y_train.shape == (32, 6)
  with pytest.raises(ValueError, match="vocab"):
    Dataset("toy", ds.x_train, ds.y_train, ds.x_test, ds.y_test, 7, 0.0, tokens=True)
  with pytest.raises(ValueError, match="inconsistent"):  # Per-position labels only for token inputs.
    Dataset("toy", ds.x_train.astype(np.float32), ds.y_train, ds.x_test.astype(np.float32), ds.y_test, 7, 0.0)
  with pytest.raises(ValueError, match="together"):
    _tokens_dataset(x_val=ds.x_test)


def test_language_model_metrics_are_per_token_and_summaries_follow():
  task = create_task("language_model")
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(3, 4, 5)).astype(np.float32)
  labels = rng.integers(0, 5, (3, 4)).astype(np.int32)
  mask = np.array([1.0, 1.0, 0.0], np.float32)  # The third row is padding.
  sums = task.eval_metrics(jnp.asarray(logits), {"label": labels, "mask": mask})
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  nll = -np.take_along_axis(logp, labels[..., None], -1)[..., 0]
  assert float(sums["count"]) == 8
  np.testing.assert_allclose(float(sums["loss"]), nll[:2].sum(), rtol=1e-5)
  summary = task.summarize({"loss": 1.5, "accuracy": 0.5})
  assert summary["bits_per_token"] == pytest.approx(1.5 / math.log(2))
  assert summary["perplexity"] == pytest.approx(math.exp(1.5))
  loss, _ = task.loss(jnp.asarray(logits), {"label": labels})
  np.testing.assert_allclose(float(loss), nll.mean(), rtol=1e-5)


def test_token_inputs_reach_the_model_as_ids_and_the_vocabulary_sizes_it(tiny_config):
  config = tiny_config(model__name="char_lstm_tiny", task__name="language_model", data__batch_size=8)
  config.model.kwargs = {}
  exp = build(config, dataset=_tokens_dataset())
  assert exp.model.vocab_size == 7
  ids = jnp.asarray(exp.dataset.x_train[:2])
  assert exp.preprocess(ids) is ids
  config.data.augment = {"horizontal_flip": {}}
  with pytest.raises(Exception, match="token ids"):
    build(config, dataset=_tokens_dataset())


def test_a_dataset_validation_split_is_the_validation_split(tiny_config):
  ds = _tokens_dataset(x_val=np.zeros((4, 6), np.int32), y_val=np.zeros((4, 6), np.int32))
  config = tiny_config(model__name="char_lstm_tiny", task__name="language_model", data__batch_size=8)
  config.model.kwargs = {}
  assert build(config, dataset=ds).validation[0].shape == (4, 6)
  config.data.validation_split = 0.1
  with pytest.raises(Exception, match="its own validation split"):
    build(config, dataset=ds)
