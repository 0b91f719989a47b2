"""python train.py --config mnist_lenet5  # MNIST test accuracy 0.994 after 10 epochs (~1 min on 2 CPU cores)

LeNet-5 (LeCun et al. 1998; tanh, average pooling, 61,706 parameters) on MNIST padded to 32x32, with
random shifts of up to 1 pixel (on the device), label smoothing 0.1, AdamW with a warmup-cosine schedule.
"""

from zoo.config import Config, shrink_for_smoke


def get_config(smoke: bool = False) -> Config:
  c = Config()
  c.model.name = "lenet5"
  c.data.name = "mnist"
  c.data.batch_size = 128
  c.data.augment = {"random_shift": {"pixels": 1}}
  c.task.kwargs = dict(label_smoothing=0.1)
  c.optimizer.name = "adamw"
  c.optimizer.learning_rate = 2e-3
  c.optimizer.weight_decay = 1e-4
  c.schedule.name = "warmup_cosine"
  c.schedule.kwargs = dict(warmup_epochs=0.5)
  c.epochs = 10
  return shrink_for_smoke(c) if smoke else c
