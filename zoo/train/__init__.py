"""Training: the state, the compiled steps, checkpoints, metric writers and the loop."""

from zoo.train.checkpoint import Checkpointer
from zoo.train.loop import Experiment, NonFiniteLossError, build, epoch_permutation, train_and_evaluate
from zoo.train.state import TrainState, count_params, create_train_state, init_variables
from zoo.train.steps import make_eval_fn, make_train_step
from zoo.train.writers import MetricWriter

__all__ = [
  "Checkpointer",
  "Experiment",
  "MetricWriter",
  "NonFiniteLossError",
  "TrainState",
  "build",
  "count_params",
  "create_train_state",
  "epoch_permutation",
  "init_variables",
  "make_eval_fn",
  "make_train_step",
  "train_and_evaluate",
]
