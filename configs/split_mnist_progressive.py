"""python train.py --config split_mnist_progressive  # 5 tasks: average accuracy 0.9963, BWT 0 (~17 s)

Progressive networks (Rusu et al. 2016) on split_mnist_ewc's task sequence: a new 784-256-256-2 column
per task, with linear lateral connections from the hidden layers of every earlier column (1,996,810
parameters for the five columns against the shared MLP's 269,322). The earlier columns are frozen, so an
earlier task's accuracy never changes: backward transfer 0 by construction.
"""

from zoo.config import Config
from zoo.config import get_config as named_config


def get_config(smoke: bool = False) -> Config:
  c = named_config("split_mnist_finetune", smoke=smoke)
  c.model.name = "progressive_mlp"
  c.task.kwargs["method"] = "progressive"
  return c
