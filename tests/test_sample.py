"""Restoring a trained run (zoo.train.restore.load_run) and sampling text from it (`python -m zoo sample`)."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest

from zoo.__main__ import main
from zoo.config import get_config
from zoo.models import create_model
from zoo.registry import ZooError
from zoo.train import train_and_evaluate
from zoo.train.restore import Run, encode, load_run, sample_text, sample_texts

DATA_DIR = os.environ.get("ZOO_DATA_DIR")  # tests/conftest.py points it at shared/data when that exists
pytestmark = pytest.mark.skipif(
  not (DATA_DIR and (Path(DATA_DIR) / "tiny_shakespeare" / "input.txt").is_file()),
  reason="the staged Tiny Shakespeare file is not here",
)
STEPS = 2


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """{"gpt" | "lstm": (workdir, train_and_evaluate's result)}: a few steps of each smoke config; the LSTM
  keeps an EMA of its weights (which load_run must prefer)."""
  runs = {}
  for key, name in (("gpt", "shakespeare_gpt"), ("lstm", "shakespeare_lstm")):
    config = get_config(name, smoke=True)
    config.data.data_dir = DATA_DIR
    config.steps = STEPS
    config.data.max_train_examples = 128
    config.data.max_test_examples = 64
    if key == "lstm":
      config.averaging.ema_decay = 0.5
    workdir = tmp_path_factory.mktemp(key)
    runs[key] = workdir, train_and_evaluate(config, workdir, progress=False)
  return runs


@pytest.fixture(scope="module")
def loaded(trained):
  return {key: load_run(workdir) for key, (workdir, _) in trained.items()}


def _assert_same_tree(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_load_run_restores_the_final_weights_and_the_ema_when_kept(trained, loaded):
  gpt, lstm = loaded["gpt"], loaded["lstm"]
  state = trained["gpt"][1]["state"]
  assert gpt.step == lstm.step == STEPS
  assert type(gpt.model).__name__ == "GPT" and gpt.model.vocab_size == len(gpt.vocab) == 65
  assert gpt.config.model.name == "gpt_tiny" and lstm.config.averaging.ema_decay == 0.5
  _assert_same_tree(gpt.variables, state.variables())
  lstm_state = trained["lstm"][1]["state"]
  _assert_same_tree(lstm.variables, lstm_state.averages["ema"])
  with pytest.raises(AssertionError):  # The EMA is not the raw weights: the test above can tell them apart.
    _assert_same_tree(lstm.variables, lstm_state.variables())
  with pytest.raises(ZooError, match=rf"no checkpoint of step 7; it has steps \[{STEPS}\]"):
    load_run(trained["gpt"][0], step=7)


@pytest.mark.parametrize("key", ["gpt", "lstm"])
def test_samples_are_seeded_as_long_as_asked_and_in_the_vocabulary(loaded, key):
  run = loaded[key]
  text = sample_text(run, "ROMEO:", 40, seed=1)
  assert text.startswith("ROMEO:") and len(text) == 6 + 40
  assert set(text) <= set(run.vocab)
  assert sample_text(run, "ROMEO:", 40, seed=1) == text
  assert sample_text(run, "ROMEO:", 40, seed=2) != text
  # An empty prompt: the texts start after a line break (not part of them).
  two = sample_texts(run, "", 40, num_samples=2, seed=1, top_k=5)
  assert len(two) == 2 and two[0] != two[1] and all(len(t) == 40 and set(t) <= set(run.vocab) for t in two)


def _argmax_by_hand(run: Run, prompt: str, steps: int, width: int) -> str:
  """Greedy decoding by a full forward over the last `width` tokens at each step: no KV cache, no carried
  state. The window is padded on the right to `width`, which a causal model's logits at the last real token
  never see, so that the forward compiles once."""
  forward = jax.jit(run.model.apply)
  tokens = list(encode(run.vocab, prompt))
  for _ in range(steps):
    window = tokens[-width:]
    padded = np.array(window + [0] * (width - len(window)), np.int32)[None]  # (1, width)
    tokens.append(int(np.argmax(forward(run.variables, padded)[0, len(window) - 1])))
  return prompt + "".join(run.vocab[t] for t in tokens[len(prompt) :])


LONG_PROMPT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak."


@pytest.mark.parametrize(
  "key, prompt, length",
  [
    ("gpt", "ROMEO:", 40),  # Within gpt_tiny's 64-token context: the KV cache all the way.
    ("gpt", LONG_PROMPT, 8),  # Longer than the context: the prompt's last 64 tokens, then a sliding window.
    ("lstm", "ROMEO:", 40),
  ],
)
def test_greedy_sampling_is_argmax_decoding(loaded, key, prompt, length):
  run = loaded[key]
  width = run.model.block_size if key == "gpt" else len(prompt) + length  # The LSTM reads every token.
  if prompt == LONG_PROMPT:
    assert len(prompt) > width
  assert sample_text(run, prompt, length, temperature=0.0) == _argmax_by_hand(run, prompt, length, width)


def test_the_cli_prints_the_prompt_and_its_continuation(trained, loaded, capsys):
  workdir = str(trained["gpt"][0])
  assert main(["sample", "--workdir", workdir, "--prompt", "ROMEO:", "--length", "40", "--seed", "1"]) == 0
  assert capsys.readouterr().out == sample_text(loaded["gpt"], "ROMEO:", 40, seed=1) + "\n"
  assert main(["sample", "--workdir", workdir, "--length", "40", "--num-samples", "2", "--top-k", "5"]) == 0
  one, two = sample_texts(loaded["gpt"], "", 40, num_samples=2, top_k=5)
  assert capsys.readouterr().out == f"--- sample 1 of 2 ---\n{one}\n--- sample 2 of 2 ---\n{two}\n"
  assert main(["sample", "--workdir", workdir, "--prompt", "Ωmega é", "--length", "5"]) == 2
  err = capsys.readouterr().err
  assert err.startswith("error: the prompt holds 2 character(s) not in the model's vocabulary: 'Ω' 'é'")


def test_errors_name_the_path_and_what_to_do(trained, loaded, tmp_path):
  absent = tmp_path / "absent"
  with pytest.raises(
    ZooError, match=rf"no run directory {re.escape(str(absent))}: .*python train.py --config NAME"
  ):
    load_run(absent)
  with pytest.raises(ZooError, match="has no config.json: it is not a training run's directory"):
    load_run(tmp_path)
  shutil.copy(trained["gpt"][0] / "config.json", tmp_path / "config.json")
  with pytest.raises(ZooError, match="has no model.json: run its training command"):
    load_run(tmp_path)
  shutil.copy(trained["gpt"][0] / "model.json", tmp_path / "model.json")
  with pytest.raises(ZooError, match="checkpoints holds no checkpoint"):
    load_run(tmp_path)
  with pytest.raises(ZooError, match="top_p"):
    sample_text(loaded["lstm"], "A", 3, top_p=0.9)
  gpt = loaded["gpt"]
  classifier = Run(gpt.workdir, gpt.config, create_model("mlp"), {}, 0, {**gpt.card, "model": "mlp"})
  with pytest.raises(ZooError, match="not a language model"):
    sample_text(classifier, "A", 3)
