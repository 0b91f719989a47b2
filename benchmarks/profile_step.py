"""Where a benchmarks/speed.py workload's training step spends its time, per XLA operation.

    python benchmarks/profile_step.py WORKLOAD [--steps 3] [--top 30] [--hlo FILE]

Runs a few of the zoo's steps for the workload under `jax.profiler`, reads the trace it writes, and prints
the operations (XLA's fused kernels: `ynn_fusion.N` for YNNPACK matmuls, `transpose_copy_fusion.N`, ...)
by total milliseconds per step, with how often each runs per step (a scan body's kernels run once per time
step). Kernels may run concurrently on the cores, so the column does not add up to the step time.
`--hlo FILE` writes the compiled step's HLO text, to look the kernels' names up in.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

if __name__ == "__main__":
  from train import reexec_with_malloc_tuning

  reexec_with_malloc_tuning(sys.argv)  # The same process set-up as train.py, before JAX starts.

import jax  # noqa: E402

from benchmarks import speed  # noqa: E402


def profile(name: str, steps: int) -> list[tuple[str, float, int]]:
  """(operation, milliseconds per step, calls per step) of workload `name`'s step, costliest first."""
  built = speed.build_zoo(speed.WORKLOADS[name])
  run = speed.zoo_runner(built)
  run(3)  # compile and warm up
  with tempfile.TemporaryDirectory() as trace_dir:
    jax.profiler.start_trace(trace_dir)
    run(steps)
    jax.profiler.stop_trace()
    (trace,) = Path(trace_dir).rglob("*.trace.json.gz")
    events = json.loads(gzip.decompress(trace.read_bytes()))["traceEvents"]
  total, count = collections.Counter(), collections.Counter()
  for e in events:
    if e.get("ph") == "X" and e.get("dur") is not None:
      total[e["name"]] += e["dur"]
      count[e["name"]] += 1
  return [(op, us / steps / 1e3, count[op] // steps) for op, us in total.most_common()]


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("workload", choices=list(speed.WORKLOADS))
  parser.add_argument("--steps", type=int, default=3, help="profiled steps (default 3)")
  parser.add_argument("--top", type=int, default=30, help="operations printed (default 30)")
  parser.add_argument("--hlo", type=Path, help="write the compiled step's HLO text here")
  args = parser.parse_args()
  if args.steps < 1:
    parser.error("--steps must be at least 1")
  rows = profile(args.workload, args.steps)
  print(f"{'ms/step':>9s} {'calls/step':>10s}  operation")
  for op, ms, calls in rows[: args.top]:
    print(f"{ms:9.2f} {calls:10d}  {op[:100]}")
  if args.hlo:
    built = speed.build_zoo(speed.WORKLOADS[args.workload])
    args.hlo.write_text(built["step"].lower(built["state"], *built["args"]).compile().as_text())
  return 0


if __name__ == "__main__":
  sys.exit(main())
