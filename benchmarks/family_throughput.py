"""Training throughput of each model family on this machine: examples/s of the zoo's compiled train step.

    python benchmarks/family_throughput.py [--models resnet20,vit_tiny_p7,...] [--batch 128] [--steps 20]

For each model (default: each family's small variant at its registered input shape, plus a few models
people train on 28-32 px images): builds the zoo's own train step (`make_train_step`: on-device batch
gather, AdamW, cross-entropy, metrics), compiles it, then times `--steps` steps after two warm-up steps
(median of 3 repeats). Prints a table and one JSON line per model: examples/s, ms/step, compile seconds,
parameters, XLA's FLOP count of the step and the GFLOP/s achieved.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train import reexec_with_malloc_tuning  # noqa: E402

reexec_with_malloc_tuning(sys.argv)  # The same process set-up as train.py, before JAX starts.

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import zoo  # noqa: E402
from zoo.models import model_input_shape  # noqa: E402
from zoo.train.state import count_params, create_train_state  # noqa: E402
from zoo.train.steps import make_train_step  # noqa: E402

DEFAULT_MODELS = (
  "mnist_cnn,bn_cnn,resnet_tiny,resnet20,resnet18_cifar,wrn16_4,densenet_tiny,efficientnet_tiny,"
  "vit_tiny_p7,vit_hybrid_tiny,mixer_tiny_p7,regnet_tiny,mobilenet_small,vgg_small"
)


def measure(name: str, batch: int, steps: int) -> dict:
  model = zoo.create_model(name, num_classes=10)
  shape = model_input_shape(name)
  rng = np.random.default_rng(0)
  n = batch * 4
  data = {
    "input": jnp.asarray(rng.normal(size=(n, *shape)), jnp.float32),
    "label": jnp.asarray(rng.integers(0, 10, n), jnp.int32),
  }
  schedule = optax.constant_schedule(1e-3)
  tx = optax.adamw(schedule)
  state = create_train_state(model, tx, data["input"][:batch], jax.random.key(0))
  step = make_train_step(
    model,
    tx,
    zoo.create_task("classification"),
    schedule,
    batch_size=batch,
    steps_per_epoch=4,
    preprocess=lambda x: x,
  )
  perm, key = jnp.arange(n), jax.random.key(1)
  start = time.perf_counter()
  compiled = step.lower(state, data, perm, key).compile()
  compile_s = time.perf_counter() - start
  flops = float((compiled.cost_analysis() or {}).get("flops", 0.0))
  for _ in range(2):
    state, metrics = step(state, data, perm, key)
  jax.block_until_ready(metrics)
  times = []
  for _ in range(3):
    start = time.perf_counter()
    for _ in range(steps):
      state, metrics = step(state, data, perm, key)
    jax.block_until_ready(metrics)
    times.append((time.perf_counter() - start) / steps)
  per_step = statistics.median(times)
  return {
    "model": name,
    "input": "x".join(map(str, shape)),
    "batch": batch,
    "params": count_params(state.params),
    "ms_per_step": 1e3 * per_step,
    "examples_per_sec": batch / per_step,
    "compile_s": compile_s,
    "gflop_per_step": flops / 1e9,
    "gflops": flops / per_step / 1e9,
  }


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--models", default=DEFAULT_MODELS, help="comma-separated registered model names")
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--steps", type=int, default=20)
  args = parser.parse_args()
  print(f"{'model':18s} {'input':>9s} {'params':>11s} {'ms/step':>9s} {'examples/s':>11s} {'GFLOP/s':>8s}")
  for name in args.models.split(","):
    r = measure(name, args.batch, args.steps)
    print(
      f"{r['model']:18s} {r['input']:>9s} {r['params']:>11,} {r['ms_per_step']:>9.1f} "
      f"{r['examples_per_sec']:>11.0f} {r['gflops']:>8.1f}",
      flush=True,
    )
    print(json.dumps(r), file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main())
