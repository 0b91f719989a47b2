"""The zoo's train step compiles once with every optimiser, schedule and optimiser wrapper."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zoo.config import AveragingConfig, OptimizerConfig, ScheduleConfig
from zoo.models import create_model
from zoo.optim import OPTIMIZERS, SCHEDULES, create_optimizer, create_schedule
from zoo.tasks import create_task
from zoo.train.state import create_train_state
from zoo.train.steps import make_train_step

BATCH, SPE, TOTAL = 8, 4, 12


def _run(optimizer: OptimizerConfig, schedule: ScheduleConfig, averaging: AveragingConfig | None = None):
  """Trains a small MLP for TOTAL steps through the zoo's train step; returns (traces, loss, rates)."""
  rng = np.random.default_rng(0)
  data = {
    "input": jnp.asarray(rng.normal(size=(BATCH * SPE, 6)), jnp.float32),
    "label": jnp.asarray(rng.integers(0, 3, BATCH * SPE), jnp.int32),
  }
  model = create_model("mlp", hidden_sizes=(16,), batch_norm=True, num_classes=3)
  sched = create_schedule(schedule, 1e-2, TOTAL, SPE)
  tx = create_optimizer(optimizer, sched)
  state = create_train_state(model, tx, data["input"][:BATCH], jax.random.key(0), averaging)
  step = make_train_step(
    model, tx, create_task("classification"), sched, batch_size=BATCH, steps_per_epoch=SPE,
    preprocess=lambda x: x, averaging=averaging,
  )  # fmt: skip
  perm = jnp.arange(BATCH * SPE)
  rates = []
  for s in range(TOTAL):
    if s == TOTAL // 2:  # A changed plateau scale must not recompile.
      state = state.replace(lr_scale=jnp.float32(0.5))
    state, metrics = step(state, data, perm, jax.random.key(1))
    rates.append(float(metrics["learning_rate"]))
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(state.params))
  return step.traces(), rates, sched


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_every_optimizer_train_step_compiles_once(name):
  traces, _, _ = _run(OptimizerConfig(name=name, weight_decay=1e-4), ScheduleConfig("cosine"))
  assert traces == 1


# Arguments some schedules need (the others run with their defaults).
SCHEDULE_KWARGS = {
  "step": {"boundaries_steps": (4, 8)},
  "sgdr": {"period_steps": 4},
  "warmup_cosine": {"warmup_steps": 2},
  "exponential": {"decay_rate": 0.5, "transition_steps": 4},
}


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_every_schedule_train_step_compiles_once_and_logs_its_rate(name):
  schedule = ScheduleConfig(name, dict(SCHEDULE_KWARGS.get(name, {})))
  traces, rates, sched = _run(OptimizerConfig(name="sgd"), schedule)
  assert traces == 1
  want = [float(sched(s)) * (0.5 if s >= TOTAL // 2 else 1.0) for s in range(TOTAL)]
  np.testing.assert_allclose(rates, want, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize(
  "optimizer, averaging",
  [
    (OptimizerConfig(lookahead_steps=3), None),
    (OptimizerConfig(accumulate_steps=2, skip_nonfinite=True, max_norm=3.0), None),
    (OptimizerConfig(name="nesterov"), AveragingConfig(ema_decay=0.9, ema_warmup=True)),
    (OptimizerConfig(name="momentum"), AveragingConfig(swa_start_epoch=1)),
  ],
  ids=["lookahead", "accumulate-skip-maxnorm", "ema", "swa"],
)
def test_wrappers_train_step_compiles_once(optimizer, averaging):
  traces, rates, _ = _run(optimizer, ScheduleConfig("constant"), averaging)
  assert traces == 1
  assert rates[-1] == pytest.approx(0.5e-2)
