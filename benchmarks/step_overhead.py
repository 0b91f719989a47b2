"""Does the trainer add overhead? The zoo's training loop against a minimal hand-written jitted step.

    python benchmarks/step_overhead.py --config mnist_cnn [--steps 300] [--repeats 3]

Measures, for one config's model, optimiser and batch size:
- zoo: steady-state steps/s of `train_and_evaluate` itself, read from the `steps_per_sec` it logs to
  metrics.jsonl (on-device batch gathering, normalisation, metrics, progress bookkeeping included;
  the first logging interval, which holds the compilation, is left out);
- minimal: a bare `jax.jit` step (same model, optax optimiser, one fixed pre-normalised batch, state
  donated) called in a Python loop.
Prints a table and one JSON line with examples/s, achieved GFLOP/s (XLA's cost analysis of the compiled
step) and the zoo's overhead in percent (the medians over `--repeats`, alternating the two).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train import reexec_with_malloc_tuning  # noqa: E402

reexec_with_malloc_tuning(sys.argv)  # The same process set-up as train.py, before JAX starts.

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

import zoo  # noqa: E402
from zoo.train.steps import apply_model  # noqa: E402


def zoo_steps_per_sec(config: zoo.Config, steps: int, log_every: int, dataset) -> float:
  config.steps = steps
  config.log_every_steps = log_every
  config.checkpoint_every_steps = 10**9
  with tempfile.TemporaryDirectory() as workdir:
    zoo.train_and_evaluate(config, workdir, progress=False, dataset=dataset)
    records = [json.loads(x) for x in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]
  rates = [r["steps_per_sec"] for r in records if r["split"] == "train"][1:]  # [0] holds the compile.
  return statistics.median(rates)


def minimal_step(exp: zoo.train.Experiment):
  """The smallest correct training step for the same model and optimiser."""
  model, tx, batch_size = exp.model, exp.tx, exp.config.data.batch_size
  x = exp.preprocess(jnp.asarray(exp.dataset.x_train[:batch_size]))
  y = jnp.asarray(exp.dataset.y_train[:batch_size])
  variables = jax.jit(partial(model.init, train=False))({"params": jax.random.key(0)}, x)
  params = variables.pop("params")
  model_state = dict(variables)
  opt_state = tx.init(params)

  @partial(jax.jit, donate_argnums=(0, 1, 2))
  def step(params, opt_state, model_state, x, y, rng):
    def loss_fn(p):
      logits, new_state = apply_model(model, {"params": p, **model_state}, x, train=True, rng=rng)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), new_state

    (loss, new_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, dict(new_state), loss

  return step, (params, opt_state, model_state), (x, y, jax.random.key(1))


def minimal_steps_per_sec(exp, steps: int) -> tuple[float, float]:
  step, state, batch = minimal_step(exp)
  flops = (step.lower(*state, *batch).compile().cost_analysis() or {}).get("flops", float("nan"))
  for _ in range(5):  # Compile and warm up.
    *state, loss = step(*state, *batch)
  jax.block_until_ready(loss)
  start = time.perf_counter()
  for _ in range(steps):
    *state, loss = step(*state, *batch)
  jax.block_until_ready(loss)
  return steps / (time.perf_counter() - start), flops


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", default="mnist_cnn")
  parser.add_argument("--steps", type=int, default=300)
  parser.add_argument("--log-every", type=int, default=50)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("overrides", nargs="*", help="config overrides, key=value")
  args = parser.parse_args()
  config = zoo.get_config(args.config, args.overrides)
  exp = zoo.build(config)
  dataset = exp.dataset
  zoo_rates, min_rates, flops = [], [], float("nan")
  for _ in range(args.repeats):
    zoo_rates.append(
      zoo_steps_per_sec(zoo.get_config(args.config, args.overrides), args.steps, args.log_every, dataset)
    )
    rate, flops = minimal_steps_per_sec(exp, args.steps)
    min_rates.append(rate)
  batch = config.data.batch_size
  zoo_rate, min_rate = statistics.median(zoo_rates), statistics.median(min_rates)
  result = {
    "config": args.config,
    "device": jax.devices()[0].device_kind,
    "batch_size": batch,
    "zoo_ms_per_step": 1e3 / zoo_rate,
    "minimal_ms_per_step": 1e3 / min_rate,
    "zoo_examples_per_sec": zoo_rate * batch,
    "minimal_examples_per_sec": min_rate * batch,
    "step_gflop": flops / 1e9,
    "zoo_gflops_per_sec": flops * zoo_rate / 1e9,
    "minimal_gflops_per_sec": flops * min_rate / 1e9,
    "zoo_overhead_percent": 100 * (min_rate / zoo_rate - 1),
  }
  print(f"{'':10s} {'ms/step':>9s} {'examples/s':>11s} {'GFLOP/s':>9s}")
  for name in ("zoo", "minimal"):
    print(
      f"{name:10s} {result[f'{name}_ms_per_step']:9.2f} {result[f'{name}_examples_per_sec']:11.0f} "
      f"{result[f'{name}_gflops_per_sec']:9.1f}"
    )
  print(f"zoo overhead: {result['zoo_overhead_percent']:+.1f}% (step: {result['step_gflop']:.3f} GFLOP)")
  print(json.dumps(result))


if __name__ == "__main__":
  main()
