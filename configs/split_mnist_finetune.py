"""python train.py --config split_mnist_finetune  # 5 tasks: average accuracy 0.9300, BWT -0.0822 (~6 s)

The baseline of split_mnist_ewc and split_mnist_progressive: the same MLP, heads and tasks, trained on
each task in turn with nothing protecting the earlier ones. Its backward transfer measures catastrophic
forgetting: task {2,3} falls from 0.9917 to 0.6920 by the end, task {0,1} to 0.755 after task {6,7}.
"""

from zoo.config import Config
from zoo.config import get_config as named_config


def get_config(smoke: bool = False) -> Config:
  c = named_config("split_mnist_ewc", smoke=smoke)
  kwargs = c.task.kwargs
  c.task.kwargs = dict(method="finetune", epochs_per_task=kwargs["epochs_per_task"], splits=kwargs["splits"])
  return c
