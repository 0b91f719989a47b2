"""Train a registered config: `python train.py --config NAME [--workdir DIR] [--config.KEY=VALUE ...]`.

`--find-lr` runs the learning-rate range test instead of training (zoo.find_lr): it writes lr_find.png and
lr_find.json into the workdir (default runs/<config>_lr_find) and prints the suggested rate.

Every config field can be overridden with `--config.KEY=VALUE` (e.g. `--config.optimizer.learning_rate=3e-4
--config.epochs=3`); values are Python literals checked against the field's type. `python -m zoo list`
lists the configs, models, optimisers and schedules.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

# glibc hands large freed blocks back to the kernel at once (mmap/munmap), so every training step pays
# page faults for buffers of the size it freed a moment before. XLA CPU allocates each step's temporary
# buffers from its worker threads, whose glibc arenas serve any block over 64 MiB with a fresh mmap whatever
# the thresholds: arena_max=1 puts them in the main heap, where freed memory is kept. With these settings
# the MNIST CNN's step ran ~1.9x faster here and the LSTM workload's 1.3x, with no page faults left in the
# step (README, "Performance"; benchmarks/speed.py). glibc reads them only at start-up, so the command-line
# faces re-execute themselves once with them, before importing anything heavy.
MALLOC_TUNABLES = (
  "glibc.malloc.arena_max=1:glibc.malloc.mmap_threshold=4294967295:glibc.malloc.trim_threshold=4294967295"
)


def reexec_with_malloc_tuning(argv: list[str]) -> None:
  """Restarts this process with MALLOC_TUNABLES unless set already, opted out (ZOO_NO_MALLOC_TUNING=1),
  or not on Linux."""
  if (
    sys.platform != "linux" or os.environ.get("ZOO_NO_MALLOC_TUNING") == "1" or "GLIBC_TUNABLES" in os.environ
  ):
    return
  try:
    os.execve(sys.executable, [sys.executable, *argv], dict(os.environ, GLIBC_TUNABLES=MALLOC_TUNABLES))
  except OSError:
    pass  # Carry on untuned rather than fail.


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", default="digits_mlp", help="config name in configs/ (default: digits_mlp)")
  parser.add_argument("--workdir", help="run directory (default: runs/<config>); rerunning resumes from it")
  parser.add_argument("--data-dir", help="local dataset files (default: $ZOO_DATA_DIR, else download)")
  parser.add_argument("--accelerator", default="auto", choices=["auto", "cpu", "gpu", "tpu"])
  parser.add_argument(
    "--parallel",
    help="data (default: batch sharded over every device) | fsdp (state sharded too) | pmap | none",
  )
  parser.add_argument(
    "--precision", help="float32 (default) | bfloat16 | float16 compute; parameters stay float32"
  )
  parser.add_argument(
    "--ensemble", type=int, metavar="N", help="train N models (seeds seed..seed+N-1) at once"
  )
  parser.add_argument(
    "--sweep",
    metavar="KEY=V1,V2,...",
    help="one model per value of a numeric field, e.g. optimizer.learning_rate=1e-4,1e-3",
  )
  dist = parser.add_argument_group("several processes (hosts)")
  dist.add_argument("--coordinator", metavar="HOST:PORT", help="process 0's address, in every process")
  dist.add_argument("--num-processes", type=int, metavar="N")
  dist.add_argument("--process-id", type=int, metavar="I")
  dist.add_argument(
    "--distributed", action="store_true", help="join a TPU pod slice / SLURM / MPI launch (detected by JAX)"
  )
  parser.add_argument("--smoke", action="store_true", help="the config's tiny variant, for a quick check")
  parser.add_argument("--no-progress", action="store_true", help="no progress bar")
  parser.add_argument("--find-lr", action="store_true", help="run the LR range test instead of training")
  parser.add_argument("--find-lr-steps", type=int, default=100, metavar="N", help="rates tried (default 100)")
  args, rest = parser.parse_known_args(argv)
  return args, split_config_overrides(parser, rest)


def split_config_overrides(parser: argparse.ArgumentParser, rest: list[str]) -> list[str]:
  """`--config.a.b=v` or `--config.a.b v` arguments as overrides `a.b=v`; anything else is a usage error."""
  overrides, i = [], 0
  while i < len(rest):
    arg = rest[i]
    if not arg.startswith("--config."):
      parser.error(f"unrecognised argument {arg!r} (config overrides look like --config.epochs=3)")
    if "=" not in arg and i + 1 < len(rest):
      arg, i = f"{arg}={rest[i + 1]}", i + 1
    overrides.append(arg.removeprefix("--config."))
    i += 1
  return overrides


def _flag_overrides(args: argparse.Namespace) -> list[str]:
  """The scale flags as config overrides (checked like any other)."""
  out = [
    f"{key}={getattr(args, key)!r}" for key in ("parallel", "precision") if getattr(args, key) is not None
  ]
  if args.ensemble is not None:
    out.append(f"ensemble={args.ensemble}")
  if args.sweep is not None:
    from zoo.config import parse_sweep

    out.append(f"sweep={parse_sweep(args.sweep)!r}")
  return out


def main(argv: list[str] | None = None) -> int:
  if argv is None:
    reexec_with_malloc_tuning(sys.argv)
  args, overrides = parse_args(sys.argv[1:] if argv is None else argv)
  logging.basicConfig(level=logging.INFO, format="%(message)s")
  for noisy in ("absl", "jax._src", "orbax"):
    logging.getLogger(noisy).setLevel(logging.WARNING)
  import zoo
  from zoo.train.loop import TrainingInterrupted

  try:
    zoo.initialize_distributed(args.coordinator, args.num_processes, args.process_id, auto=args.distributed)
    zoo.select_accelerator(args.accelerator)
    overrides += _flag_overrides(args)
    config = zoo.get_config(args.config, overrides, smoke=args.smoke)
    if args.data_dir:
      config.data.data_dir = args.data_dir
    suffix = ("_smoke" if args.smoke else "") + ("_lr_find" if args.find_lr else "")
    workdir = args.workdir or f"runs/{args.config}{suffix}"
    from tqdm.contrib.logging import logging_redirect_tqdm

    with logging_redirect_tqdm():  # Log lines appear above the progress bar, not through it.
      if args.find_lr:
        found = zoo.find_lr(config, workdir, steps=args.find_lr_steps, progress=not args.no_progress)
      else:
        result = zoo.train_and_evaluate(config, workdir, progress=not args.no_progress)
  except zoo.ZooError as e:
    print(f"error: {e}", file=sys.stderr)
    if args.coordinator or args.distributed:  # Do not wait for the other processes at shutdown.
      sys.stderr.flush()
      os._exit(2)
    return 2
  except TrainingInterrupted as e:  # SIGTERM or SIGINT in the training loop, after a checkpoint of its step.
    print(e, file=sys.stderr)
    return e.exit_code
  except KeyboardInterrupt:  # Ctrl-C before the loop started (or in another trainer).
    resume = "" if args.find_lr else "; rerun the same command to resume from the last checkpoint"
    print(f"interrupted{resume}", file=sys.stderr)
    return 130
  if args.find_lr:
    print(zoo.train.lr_finder.summary_line(args.config, found))
    return 0
  metrics = ", ".join(f"{k} {v:.4f}" for k, v in result["test"].items())
  print(f"{args.config}: test {metrics} after {result['step']} steps (workdir {workdir})")
  return 0


if __name__ == "__main__":
  sys.exit(main())
