"""python train.py --config mnist_lenet5  # MNIST test accuracy 0.994 after 10 epochs (~1 min on 2 CPU cores)

LeNet-5 (LeCun et al. 1998; tanh, average pooling, 61,706 parameters) on MNIST padded to 32x32, with
random shifts of up to 1 pixel (on the device), label smoothing 0.1, AdamW with a warmup-cosine schedule.
"""

from zoo.config import Config
from zoo.config import get_config as named_config


def get_config(smoke: bool = False) -> Config:
  c = named_config("mnist_cnn", smoke=smoke)  # mnist_cnn's recipe, for another network and 10 epochs.
  c.model.name = "lenet5"
  c.epochs = 10
  return c
