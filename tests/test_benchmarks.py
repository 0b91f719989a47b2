"""Smoke tests of the scale benchmarks (benchmarks/train_step.py, benchmarks/ensemble.py): each runs end to
end on a tiny config and prints a JSON line with its fields present and positive."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest
from conftest import REPO


def _load_train_step():
  spec = importlib.util.spec_from_file_location("bench_train_step", REPO / "benchmarks" / "train_step.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


train_step = _load_train_step()


def run_json(script: str, *args: str) -> dict:
  """Runs a benchmark script; returns its JSON line (its last line of output)."""
  env = dict(os.environ, PYTHONPATH=str(REPO))
  done = subprocess.run(
    [sys.executable, str(REPO / "benchmarks" / script), *args],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert done.returncode == 0, done.stderr[-3000:]
  lines = done.stdout.strip().splitlines()
  assert len(lines) >= 2, done.stdout  # a table, then the JSON line
  return json.loads(lines[-1])


def assert_positive(result: dict, keys: list[str]) -> None:
  for key in keys:
    value = result[key]
    assert isinstance(value, (int, float)) and math.isfinite(value) and value > 0, (key, value)


STEP_FIELDS = [
  "ms_per_step", "examples_per_sec", "compile_s", "peak_memory_bytes", "gflop_per_step", "achieved_gflops",
  "devices", "params", "batch_size", "members",
]  # fmt: skip


def assert_step_fields(r: dict) -> None:
  assert_positive(r, STEP_FIELDS)
  assert r["platform"] and r["device_kind"] and r["jax_version"] and r["peak_memory_kind"]
  if r["platform"] == "cpu":  # the peak is measured there; elsewhere it is None for an unlisted device
    assert_positive(r, ["peak_gflops", "mfu"])
    assert r["peak_memory_kind"] == "process peak RSS" and r["peak_kind"].startswith("measured")
    assert r["mfu"] == pytest.approx(r["achieved_gflops"] / r["peak_gflops"])


@pytest.fixture(scope="module")
def single_step():
  return run_json("train_step.py", "--config", "digits_mlp", "--steps", "3", "--repeats", "2")


def test_train_step_benchmark_runs(single_step):
  r = single_step
  assert_step_fields(r)
  assert r["config"] == "digits_mlp" and r["batch_size"] == 32 and r["members"] == 1
  assert r["params"] == 64 * 100 + 100 + 100 * 10 + 10 and r["steps"] == 3 and r["repeats"] == 2
  assert r["examples_per_sec"] == pytest.approx(32 / (r["ms_per_step"] / 1e3))


def test_train_step_benchmark_of_an_ensemble_and_overrides(single_step):
  r = run_json(
    "train_step.py", "--config", "digits_mlp", "--steps", "2", "--repeats", "1", "--ensemble", "3",
    "--config.data.batch_size=16", "--parallel", "none",
  )  # fmt: skip
  assert_step_fields(r)
  assert r["members"] == 3 and r["batch_size"] == 16 and r["parallel"] == "none"
  assert r["params"] == single_step["params"]  # per member
  assert r["examples_per_sec"] == pytest.approx(3 * 16 / (r["ms_per_step"] / 1e3))
  # Three members of half the batch: about 1.5x the FLOPs of one (more: the update is per member).
  assert 1.2 < r["gflop_per_step"] / single_step["gflop_per_step"] < 3.0


@pytest.mark.benchmark  # two whole training runs per side (~14 s)
def test_ensemble_benchmark_runs():
  r = run_json(
    "ensemble.py", "--config", "digits_mlp", "--members", "2", "--config.steps=3",
    "--config.log_every_steps=1",
  )  # fmt: skip
  assert_positive(
    r,
    [
      "ensemble_wall_s", "sequential_wall_s", "ensemble_models_per_sec", "sequential_models_per_sec",
      "ensemble_model_steps_per_sec", "sequential_model_steps_per_sec", "models_per_sec_ratio",
      "model_steps_per_sec_ratio",
    ],
  )  # fmt: skip
  assert r["members"] == 2 and r["runs_as"] == "in-process" and r["overrides"][0] == "steps=3"
  assert r["ensemble_models_per_sec"] == pytest.approx(2 / r["ensemble_wall_s"])
  assert r["models_per_sec_ratio"] == pytest.approx(r["sequential_wall_s"] / r["ensemble_wall_s"])


@pytest.mark.benchmark  # two whole training runs per side (~14 s)
def test_ensemble_benchmark_with_processes():
  r = run_json(
    "ensemble.py", "--config", "digits_mlp", "--members", "1", "--processes", "--config.steps=2",
    "--config.log_every_steps=1",
  )  # fmt: skip
  assert r["runs_as"] == "processes"
  assert_positive(r, ["sequential_wall_s", "sequential_model_steps_per_sec", "models_per_sec_ratio"])


def test_ensemble_benchmark_rejects_an_unknown_argument():
  done = subprocess.run(
    [sys.executable, str(REPO / "benchmarks" / "ensemble.py"), "--members", "2", "--epochs=3"],
    cwd=REPO,
    capture_output=True,
    text=True,
  )
  assert done.returncode == 2 and "--config.epochs=3" in done.stderr


def test_published_peaks_by_device_kind_and_dtype():
  peak = train_step.published_peak_flops
  assert peak("NVIDIA H100 80GB HBM3", "bfloat16") == 989e12
  assert peak("NVIDIA H100 80GB HBM3", "float32") == 67e12
  assert peak("NVIDIA H100 PCIe", "bfloat16") == 756e12  # not the SXM part's
  assert peak("NVIDIA A100-SXM4-40GB", "float32") == 19.5e12
  assert peak("TPU v5 lite", "bfloat16") == 197e12  # v5e, not v5p
  assert peak("TPU v5", "bfloat16") == 459e12
  assert peak("TPU v6 lite", "bfloat16") == 918e12
  assert peak("TPU v4", "float16") is None
  assert peak("NVIDIA GeForce RTX 4090", "bfloat16") is None
  assert peak("cpu", "float32") is None


def test_matmul_peak_and_config_overrides():
  rate = train_step.measure_matmul_peak(size=128, repeats=2)
  assert math.isfinite(rate) and 1e8 < rate < 1e14
  import argparse

  parser = argparse.ArgumentParser()
  got = train_step.split_config_overrides(parser, ["--config.seed=3", "--config.data.batch_size", "64"])
  assert got == ["seed=3", "data.batch_size=64"]


# benchmarks/speed.py: the six reference workloads against PyTorch.
sys.path.insert(0, str(REPO))
from benchmarks import speed  # noqa: E402


def test_matmul_flops_counts_forward_backward_and_scans():
  b, i, h, k = 8, 12, 16, 5

  def loss(params, x):
    return jnp.sum(jnp.tanh(x @ params["w1"]) @ params["w2"])

  params = {"w1": jnp.ones((i, h)), "w2": jnp.ones((h, k))}
  jaxpr = jax.make_jaxpr(jax.grad(loss))(params, jnp.ones((b, i))).jaxpr
  # forward: both matmuls; backward: both weight gradients and the hidden layer's input gradient (not x's)
  assert (
    speed.matmul_flops(jaxpr) == 2 * (b * i * h + b * h * k) + 2 * (b * i * h + b * h * k) + 2 * b * h * k
  )

  def rnn(w, h0):
    return jax.lax.scan(lambda c, _: (jnp.tanh(c @ w), None), h0, None, length=7)[0]

  jaxpr = jax.make_jaxpr(rnn)(jnp.ones((h, h)), jnp.ones((b, h))).jaxpr
  assert speed.matmul_flops(jaxpr) == 7 * 2 * b * h * h

  conv = lambda x, w: jax.lax.conv_general_dilated(
    x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
  )
  jaxpr = jax.make_jaxpr(conv)(jnp.ones((2, 6, 6, 3)), jnp.ones((3, 3, 3, 4))).jaxpr
  assert speed.matmul_flops(jaxpr) == 2 * (2 * 6 * 6 * 4) * (3 * 3 * 3)


def _zoo_params(name: str) -> int:
  from zoo.models import create_model
  from zoo.train.state import count_params

  w = speed.WORKLOADS[name]
  extra = {"vocab_size": len(speed.VOCAB)} if w.seq_len else {"num_classes": w.num_classes}
  example = jnp.zeros((1, w.seq_len), jnp.int32) if w.seq_len else jnp.zeros((1, *w.input_shape))
  model = create_model(w.model, **w.kwargs, **extra)
  return count_params(jax.eval_shape(model.init, jax.random.key(0), example)["params"])


def test_speed_workloads_are_the_specified_networks():
  # MLP 784-1024-1024-10; the Flax examples' CNN (conv 32, conv 64, dense 256, dense 10, avg-pools); the
  # CIFAR ResNet-18 (11.17M); ViT 192 wide, 6 deep; char LSTM 128 -> 512 (one bias per gate); GPT 6 x 384
  # with 256 positions and tied embeddings (12 D^2 + 13 D per block).
  d = 384
  expected = {
    "mlp": 784 * 1024 + 1024 + 1024 * 1024 + 1024 + 1024 * 10 + 10,
    "cnn": 320 + 18_496 + 3136 * 256 + 256 + 2570,
    "resnet18": 11_173_962,
    "vit": 192 * 48 + 192 + 192 + 65 * 192 + 6 * (12 * 192**2 + 13 * 192) + 2 * 192 + 1930,
    "lstm": 65 * 128 + 4 * 512 * (128 + 512) + 4 * 512 + 512 * 65 + 65,
    "gpt": 65 * d + 256 * d + 6 * (12 * d * d + 13 * d) + 2 * d,
  }
  assert {name: _zoo_params(name) for name in speed.WORKLOADS} == expected


def test_speed_benchmark_runs_the_zoo_side(tmp_path):
  out = tmp_path / "speed.json"
  machine = run_json(
    "speed.py", "--workloads", "mlp", "--steps", "2", "--rounds", "1", "--no-torch", "--json", str(out)
  )
  assert machine["cores"] >= 1 and machine["matmul_peak_gflops"] > 0
  (r,) = json.loads(out.read_text())["results"]
  # The MLP step's matmuls: forward and weight gradients of the three layers, input gradients of the top two.
  layers = 784 * 1024 + 1024 * 1024 + 1024 * 10
  assert r["gflop"] * 1e9 == 2 * 256 * (2 * layers + 1024 * 1024 + 1024 * 10)
  assert_positive(r["zoo"], ["ms_per_step", "examples_per_sec", "gflops", "peak_share"])
  assert r["zoo_over_best_torch"] is None  # no PyTorch side was asked for


def test_profile_step_lists_the_steps_kernels():
  done = subprocess.run(
    [sys.executable, str(REPO / "benchmarks" / "profile_step.py"), "mlp", "--steps", "1", "--top", "50"],
    cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True, timeout=300,
  )  # fmt: skip
  assert done.returncode == 0, done.stderr[-3000:]
  rows = [line.split() for line in done.stdout.splitlines()[1:]]
  assert any(op.startswith(("ynn_fusion", "dot")) and float(ms) > 0 for ms, _, op, *_ in rows), done.stdout


@pytest.mark.parametrize("name", sorted(speed.WORKLOADS))
def test_pytorch_workloads_have_the_zoos_parameter_counts(name):
  pytest.importorskip("torch")  # the [bench] extra
  from benchmarks import torch_models

  model, x, y = torch_models.build(name, speed.WORKLOADS[name])
  params = sum(p.numel() for p in model.parameters() if p.requires_grad)
  assert params == _zoo_params(name)
  logits = model(x)
  assert logits.shape[-1] == (65 if speed.WORKLOADS[name].seq_len else 10)
