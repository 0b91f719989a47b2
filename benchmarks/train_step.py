"""One config's real training step on the devices present: time per step, compile time, memory, FLOPs and MFU.

    python benchmarks/train_step.py --config NAME [--config.KEY=VALUE ...] [--steps 50] [--repeats 3]
        [--parallel data|fsdp|pmap|none] [--ensemble N]

Builds the train step exactly as `train_and_evaluate` does (the whole training split on the device, the
batch gathered there, the config's model, optimiser, schedule, augmentation, batch size and parallel mode;
with `--ensemble N`, or a `--config.sweep`, the vmapped step of zoo/train/ensemble.py), compiles it (the
seconds of `.lower().compile()`, with JAX's persistent compilation cache off unless `--compilation-cache`),
then times `--steps` steps after two warm-up steps (median of `--repeats`, waiting for the last step's
results). Prints a table and one JSON line:

- ms/step and examples/s (for an ensemble, model-examples: members x batch);
- compile seconds;
- peak memory: the devices' `peak_bytes_in_use` on GPU/TPU, the process's peak RSS on CPU (which includes
  the host's copy of the dataset and JAX itself), as the JSON's `peak_memory_kind` says;
- XLA's FLOP count of the step (`cost_analysis()`: the FLOPs XLA executes, recomputation included, not
  an analytic model count), the GFLOP/s achieved and the utilisation (MFU) = achieved / peak, where the
  peak is, on CPU, a float32 matmul rate measured here (`measure_matmul_peak`), and on GPU/TPU the
  published dense peak of the device for the config's `precision` (`published_peak_flops`; None, and no
  MFU, for a device or dtype not in the table).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

if __name__ == "__main__":  # Not when imported by another benchmark or a test: its process is set up.
  from train import reexec_with_malloc_tuning

  reexec_with_malloc_tuning(sys.argv)  # The same process set-up as train.py, before JAX starts.

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from train import split_config_overrides  # noqa: E402  (train.py's own parsing of --config.KEY=VALUE)

# Dense (no sparsity) peak TFLOP/s of one device by compute dtype, from the vendors' data sheets. Matched
# in order against the lower-cased `device_kind`: every word of an entry must occur in it (so "h100 pcie"
# before "h100", "tpu v5 lite" (v5e) before "tpu v5" (v5p)); an entry without the dtype means unknown.
# GPU float32 is plain FP32 (no TF32): XLA may use TF32 for float32 matmuls, so MFU can exceed it.
# TPU float32: JAX's default matmul precision on TPU multiplies float32 in single bfloat16 passes on the
# MXU, so its peak is the bfloat16 one.
PUBLISHED_PEAK_TFLOPS: tuple[tuple[tuple[str, ...], dict[str, float]], ...] = (
  (("h100", "pcie"), {"bfloat16": 756.0, "float16": 756.0, "float32": 51.0}),
  (("h100", "nvl"), {}),
  (("h100",), {"bfloat16": 989.0, "float16": 989.0, "float32": 67.0}),  # SXM
  (("h200",), {"bfloat16": 989.0, "float16": 989.0, "float32": 67.0}),  # the H100 SXM's compute
  (("a100",), {"bfloat16": 312.0, "float16": 312.0, "float32": 19.5}),
  (("tpu v4",), {"bfloat16": 275.0, "float32": 275.0}),
  (("tpu v5 lite",), {"bfloat16": 197.0, "float32": 197.0}),
  (("tpu v5e",), {"bfloat16": 197.0, "float32": 197.0}),
  (("tpu v5",), {"bfloat16": 459.0, "float32": 459.0}),  # v5p
  (("tpu v6 lite",), {"bfloat16": 918.0, "float32": 918.0}),
  (("tpu v6e",), {"bfloat16": 918.0, "float32": 918.0}),
)


def published_peak_flops(device_kind: str, dtype: str) -> float | None:
  """One device's published dense peak in FLOP/s for compute dtype `dtype`; None when not known."""
  kind = device_kind.lower()
  for words, peaks in PUBLISHED_PEAK_TFLOPS:
    if all(word in kind for word in words):
      return None if dtype not in peaks else peaks[dtype] * 1e12
  return None


def measure_matmul_peak(size: int = 2048, repeats: int = 30, devices: list | None = None) -> float:
  """The float32 matmul rate in FLOP/s of `devices` (default: every local device) together: the best of
  `repeats` timings of a jitted (size x size) @ (size x size) product on each device at once.

  On CPU this is the attainable peak that MFU is measured against there (no data sheet applies). With
  several (forced) CPU devices they share the cores, so they are measured together, not one times N.
  """
  devices = list(devices or jax.local_devices())
  sharding = NamedSharding(jax.sharding.Mesh(np.array(devices), ("d",)), P("d"))
  rng = np.random.default_rng(0)
  a, b = (
    jax.device_put(rng.standard_normal((len(devices), size, size), dtype=np.float32), sharding)
    for _ in range(2)
  )
  matmul = jax.jit(jnp.matmul, out_shardings=sharding)  # batched over the devices: no communication
  for _ in range(3):  # compile and warm up (the first calls page in their output buffers)
    jax.block_until_ready(matmul(a, b))
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(matmul(a, b))
    best = min(best, time.perf_counter() - start)
  return len(devices) * 2 * size**3 / best


def peak_memory() -> tuple[int | None, str]:
  """(bytes, what they are): the largest `peak_bytes_in_use` of the local accelerators, or on CPU the
  process's peak resident set size."""
  devices = jax.local_devices()
  if devices[0].platform == "cpu":
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss * (1 if sys.platform == "darwin" else 1024), "process peak RSS"
  peaks = [(d.memory_stats() or {}).get("peak_bytes_in_use") for d in devices]
  if any(p is None for p in peaks):
    return None, "unavailable"
  return max(peaks), "device peak_bytes_in_use (max over devices)"


def _cost_flops(compiled) -> float | None:
  """XLA's FLOP count of a compiled program (of one device's part of it when partitioned)."""
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older JAX: one dict per program
    cost = cost[0] if cost else None
  flops = (cost or {}).get("flops")
  return None if flops is None or flops <= 0 else float(flops)


def build_single(config, dataset=None) -> dict[str, Any]:
  """The run's own train step for `config` (`train_and_evaluate`'s set-up: zoo.train.loop.initial_state and
  make_step) and its first arguments, for a dataset in memory (`dataset`, default the config's)."""
  from zoo.registry import ZooError
  from zoo.train import loop
  from zoo.train import parallel as parallel_lib
  from zoo.train.state import count_params

  exp = loop.build(config, dataset)
  cfg, ds = exp.config, exp.dataset
  if exp.streaming:
    raise ZooError(
      f"dataset {cfg.data.name!r} is streamed from disk: this benchmark times the step on in-memory splits"
    )
  par = parallel_lib.create(cfg.parallel)
  par.check_batch_size(cfg.data.batch_size)
  init_rng, data_rng, dropout_rng = jax.random.split(jax.random.key(cfg.seed), 3)
  context = loop._device_context(ds, par)
  state = loop.initial_state(exp, par, init_rng, context)
  params = count_params(state.params)
  state = par.to_devices(state)
  step = loop.make_step(exp, par)
  data = loop._with_context(par.put_replicated({"input": ds.x_train, "label": ds.y_train}), context)
  perm = loop.epoch_permutation(data_rng, 0, len(ds.x_train))
  return dict(
    step=step, run=par.synced(step), state=state, args=(data, perm, dropout_rng), par=par, members=1,
    params=params, batch_size=cfg.data.batch_size,
  )  # fmt: skip


def build_ensemble(config) -> dict[str, Any]:
  """The vmapped step of an ensemble or sweep and its first arguments, as `train_ensemble` builds them
  (zoo.train.ensemble.Setup)."""
  from zoo.train import ensemble, loop
  from zoo.train.state import count_params

  setup = ensemble.Setup.of(config)
  n, ds = len(setup.configs), setup.exp.dataset
  init_rngs, data_rngs, dropout_rngs = setup.rngs()
  state = setup.initial_state(init_rngs)
  step = setup.make_step()
  data = setup.par.put_replicated({"input": ds.x_train, "label": ds.y_train})
  permutations = jax.jit(jax.vmap(loop.epoch_permutation, in_axes=(0, None, None)), static_argnums=2)
  perms = permutations(data_rngs, 0, len(ds.x_train))
  batch_size = setup.exp.config.data.batch_size
  return dict(
    step=step, run=setup.par.synced(step), state=state, args=(data, perms, dropout_rngs, jnp.arange(n)),
    par=setup.par, members=n, params=count_params(state.params) // n, batch_size=batch_size,
  )  # fmt: skip


def time_step(
  built: dict[str, Any], steps: int, repeats: int
) -> tuple[float, float, float | None, int | None]:
  """(compile seconds, median seconds per step, XLA FLOPs of the step on one device, the compiled step's
  temporary buffers in bytes: its activations and workspace, what rematerialisation shrinks)."""
  step, run, state, args = built["step"], built["run"], built["state"], built["args"]
  start = time.perf_counter()
  compiled = step.lower(state, *args).compile()
  compile_s = time.perf_counter() - start
  flops = _cost_flops(compiled)
  memory = compiled.memory_analysis()
  temp_bytes = None if memory is None else int(memory.temp_size_in_bytes)
  for _ in range(2):  # The call's own compilation (or cache hit) and a warm-up step.
    state, metrics = run(state, *args)
  jax.block_until_ready((state, metrics))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    for _ in range(steps):
      state, metrics = run(state, *args)
    jax.block_until_ready((state, metrics))
    times.append((time.perf_counter() - start) / steps)
  return compile_s, statistics.median(times), flops, temp_bytes


def measure(config, steps: int, repeats: int) -> dict[str, Any]:
  """Builds, compiles and times `config`'s train step; the result's fields as the JSON line has them."""
  from zoo.train import ensemble as ens

  built = build_ensemble(config) if ens.is_ensemble(config) else build_single(config)
  par = built["par"]
  compile_s, per_step, flops, temp_bytes = time_step(built, steps, repeats)
  memory, memory_kind = peak_memory()
  device = jax.local_devices()[0]
  num_devices = par.num_devices
  if device.platform == "cpu":  # on the devices the step runs on (one thread each when several)
    devices = [device] if par.mesh is None else list(par.mesh.devices.flat)
    peak, peak_kind = measure_matmul_peak(devices=devices), "measured float32 2048x2048 matmul"
  else:
    one = published_peak_flops(device.device_kind, config.precision)
    peak = None if one is None else one * num_devices
    peak_kind = f"published dense {config.precision} peak" if one is not None else "unknown"
  # A partitioned (or pmapped) step's cost analysis is one device's program: the devices together run
  # num_devices times it.
  total_flops = None if flops is None else flops * num_devices
  achieved = None if total_flops is None else total_flops / per_step
  examples = built["members"] * built["batch_size"]
  return {
    "platform": device.platform,
    "device_kind": device.device_kind,
    "devices": num_devices,
    "jax_version": jax.__version__,
    "parallel": par.mode,
    "precision": config.precision,
    "members": built["members"],
    "batch_size": built["batch_size"],
    "params": built["params"],
    "steps": steps,
    "repeats": repeats,
    "ms_per_step": 1e3 * per_step,
    "examples_per_sec": examples / per_step,
    "compile_s": compile_s,
    "peak_memory_bytes": memory,
    "peak_memory_kind": memory_kind,
    "step_temp_bytes": temp_bytes,
    "gflop_per_step": None if total_flops is None else total_flops / 1e9,
    "achieved_gflops": None if achieved is None else achieved / 1e9,
    "peak_gflops": None if peak is None else peak / 1e9,
    "peak_kind": peak_kind,
    "mfu": None if achieved is None or peak is None else achieved / peak,
  }


def _fmt(value: float | None, spec: str) -> str:
  return "n/a" if value is None else format(value, spec)


def print_table(r: dict[str, Any]) -> None:
  what = f"{r['config']} x{r['members']}" if r["members"] > 1 else r["config"]
  mib = None if r["peak_memory_bytes"] is None else r["peak_memory_bytes"] / 2**20
  mfu = None if r["mfu"] is None else 100 * r["mfu"]
  temp = None if r["step_temp_bytes"] is None else r["step_temp_bytes"] / 2**20
  print(
    f"{'config':20s} {'devices':>12s} {'ms/step':>9s} {'examples/s':>11s} {'compile s':>9s} "
    f"{'peak MiB':>9s} {'step temp MiB':>13s} {'GFLOP/step':>10s} {'GFLOP/s':>9s} {'peak GF/s':>9s} "
    f"{'MFU %':>6s}"
  )
  print(
    f"{what:20s} {str(r['devices']) + ' ' + r['platform']:>12s} {r['ms_per_step']:9.2f} "
    f"{r['examples_per_sec']:11.0f} {r['compile_s']:9.2f} {_fmt(mib, '9.0f'):>9s} {_fmt(temp, '13.1f'):>13s} "
    f"{_fmt(r['gflop_per_step'], '10.3f'):>10s} {_fmt(r['achieved_gflops'], '9.1f'):>9s} "
    f"{_fmt(r['peak_gflops'], '9.0f'):>9s} {_fmt(mfu, '6.1f'):>6s}"
  )
  print(f"(peak memory: {r['peak_memory_kind']}; peak FLOP/s: {r['peak_kind']}; {r['device_kind']})")


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", default="mnist_mlp", help="config name in configs/ (default: mnist_mlp)")
  parser.add_argument("--steps", type=int, default=50, help="steps per timing (default 50)")
  parser.add_argument("--repeats", type=int, default=3, help="timings; the median is reported (default 3)")
  parser.add_argument("--parallel", choices=["data", "fsdp", "pmap", "none"], help="default: the config's")
  parser.add_argument("--ensemble", type=int, metavar="N", help="the vmapped step of N members")
  parser.add_argument(
    "--compilation-cache", action="store_true", help="keep JAX's persistent compilation cache on"
  )
  args, rest = parser.parse_known_args()
  overrides = split_config_overrides(parser, rest)
  if args.steps < 1 or args.repeats < 1:
    parser.error("--steps and --repeats must be at least 1")
  if not args.compilation_cache:  # A cache hit would make the compile time a load time.
    os.environ.setdefault("ZOO_NO_COMPILATION_CACHE", "1")
  import zoo

  try:
    if args.parallel is not None:
      overrides.append(f"parallel={args.parallel!r}")
    if args.ensemble is not None:
      overrides.append(f"ensemble={args.ensemble}")
    config = zoo.get_config(args.config, overrides)
    result = {"config": args.config, "overrides": overrides, **measure(config, args.steps, args.repeats)}
  except zoo.ZooError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print_table(result)
  print(json.dumps(result))
  return 0


if __name__ == "__main__":
  sys.exit(main())
