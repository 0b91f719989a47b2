"""python train.py --config mnist_autoencoder  # MNIST test reconstruction error: see README

A denoising convolutional autoencoder on MNIST (Vincent et al. 2008's masking noise, 25% of the pixels
zeroed in training): the reconstruction error of the clean image, Bernoulli NLL in nats per image, is
each test example's anomaly score (scores.npy, per-class means in report.txt). Adam at 1e-3, batch 128.
"""

from zoo.config import Config, shrink_for_smoke


def get_config(smoke: bool = False) -> Config:
  c = Config()
  c.model.name = "conv_autoencoder"
  c.model.kwargs = {"noise_kind": "mask", "noise_level": 0.25}
  c.data.name = "mnist"
  c.data.normalization = "scale"
  c.data.batch_size = 128
  c.data.eval_batch_size = 1000
  c.task.name = "autoencoder"
  c.optimizer.name = "adam"
  c.optimizer.learning_rate = 1e-3
  c.epochs = 10
  c.eval_every_epochs = 2
  if smoke:
    c.model.name = "conv_autoencoder_tiny"
    shrink_for_smoke(c)
  return c
