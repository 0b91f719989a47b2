"""Six reference workloads' training steps in the zoo, side by side with PyTorch on the same machine.

    python benchmarks/speed.py [--workloads mlp,cnn,resnet18,vit,lstm,gpt] [--steps 20] [--rounds 7]
        [--no-torch] [--no-compile] [--json FILE]

Each workload is one float32 training step (forward, backward, AdamW update) of a fixed-size model:

  mlp       MLP 784-1024-1024-10 (ReLU), batch 256
  cnn       the Flax examples' MNIST CNN (conv 32 3x3, avg-pool 2, conv 64 3x3, avg-pool 2, dense 256,
            dense 10) on 28x28x1, batch 128
  resnet18  CIFAR-style ResNet-18 (3x3 stem, no max-pool, BatchNorm in training mode) on 32x32x3, batch 32
  vit       ViT, 4x4 patches on 32x32x3, width 192, depth 6, 3 heads, MLP 768, class token, batch 32
  lstm      character LSTM LM: vocabulary 65, embedding 128, one LSTM layer of 512, 128 steps, batch 32
  gpt       GPT: vocabulary 65, context 256, 6 pre-LN layers, 6 heads, width 384, tied embeddings, batch 8

The zoo side is the zoo's own model (from the registry) and its own train step, built by the same code as
`python train.py` builds a run's (zoo.train.loop.build / initial_state / make_step; random in-memory data
of the workload's shape on the device, AdamW at 1e-3 with weight decay 0.01 on every parameter, as
torch.optim.AdamW's default). With the `[bench]` extra installed (PyTorch), the same network is built in
PyTorch here, its trainable parameter count asserted equal to the zoo's, and its step (zero_grad,
forward, cross-entropy, backward, AdamW with foreach) timed in eager mode and under `torch.compile` (the
model and the optimiser step compiled). The frameworks alternate in one process: each of `--rounds`
rounds times `--steps` steps of each, after two untimed alternating rounds (the process's heap grows, with
page faults, until both have run side by side); medians over rounds are reported.

Printed per workload: ms/step, examples/s (sequences/s for the language models), GFLOP/s and the share of
the machine's matmul peak (`train_step.measure_matmul_peak`, measured here at the start), where the
FLOPs are the step's matrix-multiply and convolution FLOPs counted from the zoo step's jaxpr
(`matmul_flops`: forward and backward as executed, the same count for both frameworks), and the ratio
of the zoo's step time to the best PyTorch one (below 1: the zoo is faster).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

if __name__ == "__main__":  # Not when imported by a test: its process is set up.
  from train import reexec_with_malloc_tuning

  reexec_with_malloc_tuning(sys.argv)  # The same process set-up as train.py, before JAX starts.

import jax  # noqa: E402
import jax.extend  # noqa: E402
import numpy as np  # noqa: E402

VOCAB = "".join(chr(32 + i) for i in range(65))  # 65 distinct characters: the workloads' vocabulary


@dataclasses.dataclass(frozen=True)
class Workload:
  """A model from the zoo's registry with its kwargs, the shape of one example, the batch size; for a
  language model `seq_len` tokens of a 65-character vocabulary, else `input_shape` float32 inputs."""

  model: str
  kwargs: dict[str, Any]
  batch_size: int
  input_shape: tuple[int, ...] = ()
  seq_len: int | None = None
  num_classes: int = 10


WORKLOADS: dict[str, Workload] = {
  "mlp": Workload("mlp", dict(hidden_sizes=(1024, 1024), activation="relu"), 256, (784,)),
  "cnn": Workload(
    "bn_cnn",
    dict(features=(32, 64), convs_per_stage=1, hidden=256, norm="none", dropout=0.0, pool="avg"),
    128,
    (28, 28, 1),
  ),
  "resnet18": Workload("resnet18_cifar", {}, 32, (32, 32, 3)),
  "vit": Workload("vit_ti_p4", dict(depth=6), 32, (32, 32, 3)),
  "lstm": Workload("char_lstm", dict(num_layers=1, embed_dim=128, hidden_size=512), 32, seq_len=128),
  "gpt": Workload(
    "gpt_char",
    dict(block_size=256, width=384, depth=6, num_heads=6, dropout=0.0, attention_dropout=0.0),
    8,
    seq_len=256,
  ),
}


def dataset(w: Workload, n: int):
  """`n` random examples of the workload's shape (train and test alike)."""
  from zoo.data.datasets import Dataset

  rng = np.random.default_rng(0)
  if w.seq_len is not None:
    text = rng.integers(0, len(VOCAB), (n, w.seq_len + 1), dtype=np.int32)
    x, y = text[:, :-1], text[:, 1:]
    return Dataset("random", x, y, x, y, len(VOCAB), 1.0, tokens=True, vocab=VOCAB)
  x = rng.standard_normal((n, *w.input_shape), dtype=np.float32)
  y = rng.integers(0, w.num_classes, n, dtype=np.int32)
  return Dataset("random", x, y, x, y, w.num_classes, 1.0)


def zoo_config(w: Workload):
  from zoo.config import Config

  c = Config()
  c.model.name, c.model.kwargs = w.model, dict(w.kwargs)
  c.data.name, c.data.batch_size, c.data.normalization = "random", w.batch_size, "none"
  c.task.name = "language_model" if w.seq_len is not None else "classification"
  c.optimizer.name, c.optimizer.learning_rate = "adamw", 1e-3
  c.optimizer.weight_decay, c.optimizer.weight_decay_mask = 0.01, "all"  # torch.optim.AdamW's default
  c.schedule.name = "constant"
  c.steps = 10**6
  return c


def build_zoo(w: Workload) -> dict[str, Any]:
  """The zoo's step for workload `w` and its arguments (benchmarks/train_step.build_single on random data)."""
  from benchmarks.train_step import build_single

  return build_single(zoo_config(w), dataset(w, 4 * w.batch_size))


def _prod(xs) -> int:
  return math.prod(int(x) for x in xs)


def matmul_flops(jaxpr) -> float:
  """Multiply-add FLOPs (2 per multiply-accumulate) of every dot_general and convolution in `jaxpr` and
  the jaxprs it calls; a scan's body counts `length` times, a cond its costliest branch."""
  total = 0.0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "dot_general":
      (contract, _), _ = eqn.params["dimension_numbers"]
      lhs = eqn.invars[0].aval
      total += 2.0 * _prod(eqn.outvars[0].aval.shape) * _prod(lhs.shape[d] for d in contract)
    elif name == "conv_general_dilated":
      rhs, spec = eqn.invars[1].aval, eqn.params["dimension_numbers"].rhs_spec
      # Each output element is a dot over the kernel's input features (per group) and its window.
      total += 2.0 * _prod(eqn.outvars[0].aval.shape) * _prod(rhs.shape[d] for d in spec[1:])
    inner = jax.extend.core.jaxprs_in_params(eqn.params)
    if name == "cond":
      total += max((matmul_flops(s) for s in inner), default=0.0)
    else:
      total += (eqn.params["length"] if name == "scan" else 1) * sum(matmul_flops(s) for s in inner)
  return total


def step_flops(built: dict[str, Any]) -> float:
  return matmul_flops(built["step"].trace(built["state"], *built["args"]).jaxpr.jaxpr)


def zoo_runner(built: dict[str, Any]):
  """A function running `n` of the zoo's steps and waiting for the last."""
  run, args = built["run"], built["args"]
  holder = {"state": built["state"]}

  def steps(n: int) -> None:
    state = holder["state"]
    for _ in range(n):
      state, metrics = run(state, *args)
    jax.block_until_ready((state, metrics))
    holder["state"] = state

  return steps


def _median_times(
  runners: dict[str, Any], steps: int, rounds: int, warmup: int
) -> dict[str, tuple[float, float]]:
  """(median seconds, median page faults) per step of each runner, the runners alternating within every
  round, after `warmup` untimed alternating rounds: the frameworks share the process's heap, which grows
  (page faults) until both have run a few times side by side."""
  times: dict[str, list[float]] = {name: [] for name in runners}
  faults: dict[str, list[float]] = {name: [] for name in runners}
  for r in range(warmup + rounds):
    for name, run in runners.items():
      start, minflt = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt
      run(steps)
      if r >= warmup:
        times[name].append((time.perf_counter() - start) / steps)
        faults[name].append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - minflt) / steps)
  return {name: (statistics.median(times[name]), statistics.median(faults[name])) for name in runners}


def run_workload(
  name: str, steps: int, rounds: int, torch_modes: tuple[str, ...], peak: float
) -> dict[str, Any]:
  from zoo.train.state import count_params

  w = WORKLOADS[name]
  built = build_zoo(w)
  flops = step_flops(built)
  params = count_params(built["state"].params)
  runners = {"zoo": zoo_runner(built)}
  if torch_modes:
    from benchmarks import torch_models

    for mode in torch_modes:
      runner, torch_params = torch_models.runner(name, w, mode)
      if torch_params != params:
        raise AssertionError(
          f"{name}: PyTorch's model has {torch_params:,} trainable parameters, the zoo's {params:,}"
        )
      runners[f"torch_{mode}"] = runner
  per_step = _median_times(runners, steps, rounds, warmup=2)
  examples = w.batch_size
  result: dict[str, Any] = {
    "workload": name,
    "params": params,
    "batch_size": w.batch_size,
    "gflop": flops / 1e9,
  }
  for fw, (t, faults) in per_step.items():
    result[fw] = {
      "ms_per_step": 1e3 * t, "examples_per_sec": examples / t, "gflops": flops / t / 1e9,
      "peak_share": flops / t / peak, "page_faults_per_step": faults,
    }  # fmt: skip
  torch_times = [per_step[k][0] for k in per_step if k.startswith("torch_")]
  result["zoo_over_best_torch"] = per_step["zoo"][0] / min(torch_times) if torch_times else None
  return result


def print_table(results: list[dict[str, Any]], peak: float) -> None:
  print(f"matmul peak (measured, float32 2048x2048): {peak / 1e9:.0f} GFLOP/s")
  head = (
    f"{'workload':9s} {'framework':14s} {'ms/step':>9s} {'examples/s':>11s} {'GFLOP/s':>8s} {'% peak':>7s}"
  )
  print(head + f" {'faults/step':>11s} {'zoo / best torch':>17s}")
  for r in results:
    frameworks = [k for k in r if isinstance(r[k], dict)]
    for i, fw in enumerate(frameworks):
      m = r[fw]
      ratio = "" if i or r["zoo_over_best_torch"] is None else f"{r['zoo_over_best_torch']:17.2f}"
      print(
        f"{r['workload'] if i == 0 else '':9s} {fw:14s} {m['ms_per_step']:9.2f} "
        f"{m['examples_per_sec']:11.0f} "
        f"{m['gflops']:8.1f} {100 * m['peak_share']:7.1f} {m['page_faults_per_step']:11.0f} {ratio}"
      )


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workloads", default=",".join(WORKLOADS), help="comma-separated (default: all six)")
  parser.add_argument("--steps", type=int, default=20, help="steps per timing (default 20)")
  parser.add_argument(
    "--rounds", type=int, default=7, help="alternating rounds; medians reported (default 7)"
  )
  parser.add_argument("--no-torch", action="store_true", help="the zoo only")
  parser.add_argument("--no-compile", action="store_true", help="PyTorch eager only (no torch.compile)")
  parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
  args = parser.parse_args()
  names = [n for n in args.workloads.split(",") if n]
  unknown = [n for n in names if n not in WORKLOADS]
  if unknown:
    parser.error(f"unknown workload(s) {unknown}; known: {', '.join(WORKLOADS)}")
  if args.steps < 1 or args.rounds < 1:
    parser.error("--steps and --rounds must be at least 1")
  torch_modes: tuple[str, ...] = ()
  if not args.no_torch:
    try:
      import torch
    except ImportError:
      print("PyTorch is not installed (pip install -e '.[bench]'): timing the zoo only", file=sys.stderr)
    else:
      torch_modes = ("eager",) if args.no_compile else ("eager", "compile")
  from benchmarks.train_step import measure_matmul_peak

  peak = measure_matmul_peak()
  results = []
  for name in names:
    results.append(run_workload(name, args.steps, args.rounds, torch_modes, peak))
    print(json.dumps(results[-1]), flush=True)
  machine = {
    "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "jax": jax.__version__,
    "device": jax.devices()[0].device_kind, "xla_flags": os.environ.get("XLA_FLAGS", ""),
    "matmul_peak_gflops": peak / 1e9,
  }  # fmt: skip
  if torch_modes:
    import torch

    machine["torch"] = torch.__version__
    machine["torch_threads"] = torch.get_num_threads()
  print_table(results, peak)
  print(json.dumps(machine))
  if args.json:
    args.json.write_text(json.dumps({"machine": machine, "results": results}, indent=1))
  return 0


if __name__ == "__main__":
  sys.exit(main())
