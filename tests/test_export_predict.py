"""Export (jax.export StableHLO + variables, reloaded bit for bit in a fresh process), predictions from raw
inputs (zoo.interop.predict), and PyTorch weights imported as a run directory (zoo.interop.workdir)."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch_reference
from conftest import REPO
from PIL import Image

from zoo import config as config_lib
from zoo.__main__ import main
from zoo.data.datasets import FIXED_RGB_STATS
from zoo.interop import load_pytorch_weights
from zoo.interop.export import MODEL_FILE, VARIABLES_FILE, export_run, load_exported
from zoo.interop.predict import Predictor, load, sst_words
from zoo.interop.tensorfile import write_safetensors
from zoo.interop.workdir import import_to_workdir
from zoo.models import create_model
from zoo.registry import ZooError
from zoo.train import train_and_evaluate
from zoo.train.checkpoint import Checkpointer
from zoo.train.restore import load_run, sample_text

# jax.export serializes with flatbuffers, which JAX does not install itself.
needs_flatbuffers = pytest.mark.skipif(
  importlib.util.find_spec("flatbuffers") is None, reason="jax.export's serialization needs flatbuffers"
)

IMAGE = (8, 8, 1)


@pytest.fixture(scope="module")
def classifier(tmp_path_factory) -> Path:
  """A run of the MLP with BatchNorm (so the export carries batch_stats) on 8x8 synthetic images."""
  c = config_lib.Config()
  c.model.kwargs = {"hidden_sizes": (32,), "norm": "batch"}
  c.data.name = "synthetic_images"
  c.data.kwargs = {"n_train": 64, "n_test": 32, "image_size": IMAGE[0], "channels": IMAGE[2]}
  c.data.batch_size = c.data.eval_batch_size = 32
  c.steps = 3
  workdir = tmp_path_factory.mktemp("mlp")
  train_and_evaluate(c, workdir, progress=False)
  return workdir


def images(n: int, seed: int, shape: tuple[int, ...] = IMAGE) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, 256, (n, *shape), dtype=np.uint8)


def write_run(workdir: Path, config: config_lib.Config, kwargs: dict, vocab, seed: int = 0) -> Path:
  """A run directory as the training loop leaves one (config.json, model.json, checkpoints/1), with the
  model's initial weights: the prediction tests need a run, not a trained one."""
  model = create_model(config.model.name, **kwargs)
  example = jnp.zeros((1, 8), jnp.int32)
  variables = jax.jit(lambda key: model.init(key, example, train=False))(jax.random.key(seed))
  workdir.mkdir()
  (workdir / "config.json").write_text(config_lib.to_json(config))
  card = {
    "model": config.model.name,
    "kwargs": kwargs,
    "vocab": vocab,
    "mean": 0.0,
    "std": 1.0,
    "tokens": True,
  }
  (workdir / "model.json").write_text(json.dumps(card))
  state = {"step": jnp.ones((), jnp.int32), "params": variables["params"], "model_state": {}}
  checkpointer = Checkpointer(workdir / "checkpoints")
  checkpointer.save(1, state)
  checkpointer.close()
  return workdir


# --- export -------------------------------------------------------------------------------------------------

RELOAD = """
import sys
import numpy as np
from zoo.interop.export import load_exported
model = load_exported(sys.argv[1])
with np.load(sys.argv[2]) as inputs:
  np.savez(sys.argv[3], **{k: model(inputs[k]) for k in inputs.files})
"""


@needs_flatbuffers
def test_an_export_reloads_in_a_fresh_process_with_the_same_predictions(classifier, tmp_path):
  out = export_run(classifier, tmp_path / "export")
  assert sorted(p.name for p in out.iterdir()) == ["manifest.json", MODEL_FILE, VARIABLES_FILE]
  manifest = json.loads((out / "manifest.json").read_text())
  assert manifest["input"] == {**manifest["input"], "shape": ["b", *IMAGE], "dtype": "float32"}
  assert manifest["outputs"] == [{"shape": ["b", 10], "dtype": "float32"}]
  assert set(manifest["variables"]) == {
    "batch_stats/BatchNorm_0/mean",
    "batch_stats/BatchNorm_0/var",
    "params/BatchNorm_0/bias",
    "params/BatchNorm_0/scale",
    "params/Dense_0/kernel",
    "params/Dense_1/bias",
    "params/Dense_1/kernel",
  }
  # Batch sizes other than training's (32) and each other's: the export's batch dimension is symbolic.
  inputs = {"one": images(1, 1), "five": images(5, 2)}
  np.savez(tmp_path / "inputs.npz", **inputs)
  script = [
    sys.executable,
    "-c",
    RELOAD,
    str(out),
    str(tmp_path / "inputs.npz"),
    str(tmp_path / "outputs.npz"),
  ]
  subprocess.run(script, check=True, cwd=REPO, timeout=120)
  predictor = load(classifier)
  with np.load(tmp_path / "outputs.npz") as reloaded:
    for key, x in inputs.items():
      logits = predictor(x)["logits"]
      assert reloaded[key].shape == (len(x), 10)
      assert np.array_equal(reloaded[key], logits), key
  # (The fresh process was given uint8 pixels, which the exported model takes as float32.) A wrong example
  # shape is refused before running.
  exported = load_exported(out / "manifest.json")
  with pytest.raises(ZooError, match=r"takes inputs \('b', 8, 8, 1\), got \(2, 8, 8, 3\)"):
    exported(images(2, 0, (8, 8, 3)))


@needs_flatbuffers
@pytest.mark.parametrize("damaged", [MODEL_FILE, VARIABLES_FILE])
def test_a_damaged_export_file_is_refused_by_name(classifier, tmp_path, damaged):
  out = export_run(classifier, tmp_path / "export")
  load_exported(out)  # Intact, it loads.
  path = out / damaged
  data = bytearray(path.read_bytes())
  data[len(data) // 2] ^= 0x10  # One bit.
  path.write_bytes(bytes(data))
  with pytest.raises(
    ZooError, match=rf"{path} is damaged: its sha256 is [0-9a-f]{{64}}, but .*manifest.json"
  ):
    load_exported(out)
  path.unlink()
  with pytest.raises(ZooError, match=rf"{path} is missing"):
    load_exported(out)
  with pytest.raises(ZooError, match="holds no manifest.json"):
    load_exported(tmp_path)


# --- predictions --------------------------------------------------------------------------------------------


def test_load_applies_the_training_normalisation_then_the_model(classifier):
  predictor = load(classifier)
  run = load_run(classifier)
  x = images(5, 4)
  mean, std = np.asarray(run.card["mean"], np.float32), np.asarray(run.card["std"], np.float32)
  assert mean.shape == (1, 1, 1) and 50 < mean.item() < 200  # Channel statistics of uint8 pixels.
  by_hand = np.asarray(run.model.apply(run.variables, (x.astype(np.float32) - mean) / std, train=False))
  out = predictor(x)
  np.testing.assert_array_equal(out["label"], np.argmax(by_hand, axis=-1))
  np.testing.assert_allclose(out["logits"], by_hand, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(out["probabilities"].sum(-1), 1.0, rtol=1e-6)
  np.testing.assert_array_equal(out["probability"], out["probabilities"].max(-1))
  assert out["label"].dtype == np.int64 and out["probability"].dtype == np.float32
  # One example, a list of examples, and raw float pixels give the same (a batch of another size may round
  # differently: its matrix products are other kernels).
  single = predictor(x[2])
  assert single["label"].shape == (1,) and single["label"][0] == out["label"][2]
  np.testing.assert_allclose(single["logits"][0], out["logits"][2], rtol=1e-5, atol=1e-6)
  assert np.array_equal(predictor(list(x))["logits"], out["logits"])
  assert np.array_equal(predictor(x.astype(np.float64))["logits"], out["logits"])
  with pytest.raises(ZooError, match=r"cannot take inputs of shape \(9, 9, 1\)"):
    predictor(images(2, 0, (9, 9, 1)))
  with pytest.raises(ZooError, match="differ in shape"):
    predictor([x[0], images(1, 0, (9, 9, 1))[0]])


def test_the_predict_command_prints_labels_of_png_files(classifier, tmp_path, capsys):
  x = images(3, 5)
  paths = []
  for i, image in enumerate(x):
    paths.append(str(tmp_path / f"digit{i}.png"))
    Image.fromarray(image[..., 0]).save(paths[-1])
  np.save(tmp_path / "two.npy", x[:2])
  assert main(["predict", "--workdir", str(classifier), *paths, str(tmp_path / "two.npy")]) == 0
  lines = capsys.readouterr().out.splitlines()
  assert lines[0] == "input\tlabel\tprobability"
  expected = load(classifier)(x)
  rows = [line.split("\t") for line in lines[1:]]
  assert [r[0] for r in rows] == [*paths, f"{tmp_path / 'two.npy'}[0]", f"{tmp_path / 'two.npy'}[1]"]
  assert [int(r[1]) for r in rows] == [*expected["label"], *expected["label"][:2]]
  assert [float(r[2]) for r in rows[:3]] == pytest.approx(expected["probability"], abs=1e-4)
  Image.fromarray(np.zeros((10, 12), np.uint8)).save(tmp_path / "big.png")
  assert main(["predict", "--workdir", str(classifier), str(tmp_path / "big.png")]) == 2
  assert "big.png is 12x10 pixels; the model of" in capsys.readouterr().err
  assert main(["predict", "--workdir", str(classifier), str(tmp_path / "absent.png")]) == 2
  assert capsys.readouterr().err.startswith("error: no input file")


def test_a_language_model_predicts_the_next_character_and_a_greedy_continuation(tmp_path, capsys):
  vocab = "\n !,.:;?ABCDEFGHIJKLMNOPRSTUWYabcdefghiklmnoprstuvwy"
  config = config_lib.get_config("shakespeare_lstm", smoke=True)
  kwargs = {"vocab_size": len(vocab), "num_layers": 1}
  workdir = write_run(tmp_path / "lm", config, kwargs, vocab)
  predictor = load(workdir, length=6)
  texts = ["ROMEO:", "", "JULIET"]  # Prompts of one length share a compiled sampler.
  out = predictor(texts)
  assert out["next"].shape == out["probability"].shape == out["continuation"].shape == (3,)
  run = load_run(workdir)
  for i, text in enumerate(texts):
    assert out["continuation"][i] == sample_text(run, text, 6, temperature=0.0)[len(text) :]
    assert out["next"][i] == out["continuation"][i][0]
  # The next character's probability from the model applied by hand to the whole text.
  tokens = np.array([[vocab.index(c) for c in texts[2]]], np.int32)
  logits = np.asarray(jax.jit(run.model.apply)(run.variables, tokens))[0, -1]
  p = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
  assert out["next"][2] == vocab[np.argmax(p)]
  np.testing.assert_allclose(out["probability"][2], p.max(), rtol=1e-5)
  np.testing.assert_allclose(out["probabilities"].sum(-1), 1.0, rtol=1e-5)
  with pytest.raises(ZooError, match="not in the model's vocabulary: 'Ω'"):
    predictor("Ωmega")
  with pytest.raises(ZooError, match="reads text: give a string or a list of strings"):
    predictor(np.zeros((2, 5), np.int32))
  # The command: a text file's non-blank lines (a blank one cannot be a prompt there), then --text.
  (tmp_path / "prompts.txt").write_text("ROMEO:\n\nJULIET\n")
  command = [
    "predict",
    "--workdir",
    str(workdir),
    str(tmp_path / "prompts.txt"),
    "--text",
    "",
    "--length",
    "6",
  ]
  assert main(command) == 0
  lines = capsys.readouterr().out.splitlines()
  assert lines[0] == "input\tnext\tprobability\tcontinuation"
  rows = [line.split("\t") for line in lines[1:]]
  assert [r[0] for r in rows] == [
    f"{tmp_path / 'prompts.txt'}:1",
    f"{tmp_path / 'prompts.txt'}:3",
    "--text 1",
  ]
  assert [json.loads(r[1]) for r in rows] == [out["next"][i] for i in (0, 2, 1)]
  assert [json.loads(r[3]) for r in rows] == [out["continuation"][i] for i in (0, 2, 1)]


def test_a_text_classifier_reads_sentences_as_sst_tokens(tmp_path, capsys):
  vocab = [
    "<pad>",
    "<unk>",
    ".",
    "the",
    ",",
    "a",
    "film",
    "'s",
    "n't",
    "is",
    "good",
    "it",
    "bad",
    "-lrb-",
    "-rrb-",
  ]
  config = config_lib.get_config("sst_lstm", smoke=True)
  kwargs = {"vocab_size": len(vocab), "num_classes": 2}
  workdir = write_run(tmp_path / "sst", config, kwargs, vocab)
  texts = ["It's a good film.", "The film isn't (very) good, it's BAD"]
  assert sst_words(texts[1], {w: i for i, w in enumerate(vocab)}) == [
    "the", "film", "is", "n't", "-lrb-", "very", "-rrb-", "good", ",", "it", "'s", "bad",
  ]  # fmt: skip
  assert sst_words('"Mr. Smith\'s" e.t. don\'t', {"mr.": 0, "e.t.": 1}) == [
    "``", "mr.", "smith", "'s", "''", "e.t.", "do", "n't",
  ]  # fmt: skip
  predictor = load(workdir)
  tokens = predictor.prepare(texts)
  assert tokens.shape == (2, 56)  # sst_lstm's smoke config pads to max_len 56, as its dataset does.
  index = {w: i for i, w in enumerate(vocab)}
  assert tokens[0, :7].tolist() == [index[w] for w in ("it", "'s", "a", "good", "film", ".")] + [0]
  assert tokens[1, 5] == 1  # "very" is unknown.
  run = load_run(workdir)
  by_hand = np.asarray(jax.jit(run.model.apply)(run.variables, tokens))
  out = predictor(texts)
  np.testing.assert_array_equal(out["label"], np.argmax(by_hand, -1))
  np.testing.assert_allclose(out["logits"], by_hand, rtol=1e-5, atol=1e-6)
  assert main(["predict", "--workdir", str(workdir), "--text", texts[0], "--text", texts[1]]) == 0
  rows = [line.split("\t") for line in capsys.readouterr().out.splitlines()[1:]]
  assert [(r[0], int(r[1])) for r in rows] == [("--text 1", out["label"][0]), ("--text 2", out["label"][1])]


def test_runs_of_other_tasks_are_refused(classifier, tmp_path):
  shutil.copytree(classifier, tmp_path / "run")
  config = json.loads((tmp_path / "run" / "config.json").read_text())
  config["task"]["name"] = "autoencoder"
  (tmp_path / "run" / "config.json").write_text(json.dumps(config))
  with pytest.raises(ZooError, match="trained for task 'autoencoder': predictions are served for"):
    load(tmp_path / "run")
  assert isinstance(load(classifier), Predictor)


# --- PyTorch weights as a run -------------------------------------------------------------------------------


@needs_flatbuffers
def test_imported_weights_make_a_run_that_predicts_as_the_converted_model(tmp_path, capsys):
  layout, _ = torch_reference.load_fixture("resnet18_torchvision")
  weights = torch_reference.fake_weights(layout)
  weights["fc.weight"], weights["fc.bias"] = weights["fc.weight"][:7], weights["fc.bias"][:7]  # 7 classes
  path = tmp_path / "resnet18.safetensors"
  write_safetensors(path, weights)
  workdir = tmp_path / "imported"
  assert main(["import-weights", "resnet18", str(path), "--workdir", str(workdir)]) == 0
  assert capsys.readouterr().out.startswith(f"wrote {workdir}: resnet18")

  run = load_run(workdir)
  assert run.step == 0 and run.card["kwargs"] == {"num_classes": 7} and run.card["vocab"] is None
  assert run.config.model.name == "resnet18" and run.config.data.normalization == "imagenet"
  mean, std = (np.asarray(s, np.float32) * 255 for s in FIXED_RGB_STATS["imagenet"])
  np.testing.assert_array_equal(np.asarray(run.card["mean"]).reshape(3), mean)
  np.testing.assert_array_equal(np.asarray(run.card["std"]).reshape(3), std)
  model, variables = load_pytorch_weights("resnet18", weights)
  assert jax.tree.structure(run.variables) == jax.tree.structure(variables)
  for a, b in zip(jax.tree.leaves(run.variables), jax.tree.leaves(variables), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

  x = images(2, 6, (64, 64, 3))  # Global pooling: a smaller image than the 224 it is meant for is quicker.
  out = load(workdir)(x)
  by_hand = np.asarray(jax.jit(model.apply)(variables, (x.astype(np.float32) - mean) / std))
  np.testing.assert_array_equal(out["label"], np.argmax(by_hand, -1))
  np.testing.assert_allclose(out["logits"], by_hand, rtol=1e-4, atol=1e-4 * np.abs(by_hand).max())
  with pytest.raises(
    ZooError, match=r"inputs of shape \(64, 64, 1\) do not fit .* statistics of shape \(1, 1, 3\)"
  ):
    load(workdir)(x[..., :1])  # Grey images would broadcast into the RGB statistics.

  manifest = json.loads((export_run(workdir, tmp_path / "export") / "manifest.json").read_text())
  assert manifest["input"]["shape"] == ["b", 224, 224, 3] and manifest["outputs"][0]["shape"] == ["b", 7]

  with pytest.raises(ZooError, match="not an empty directory"):
    import_to_workdir("resnet18", weights, workdir)
  with pytest.raises(ZooError, match="'channel' is fitted on a training split"):
    import_to_workdir("resnet18", weights, tmp_path / "other", normalization="channel")
  assert not (tmp_path / "other").exists()
