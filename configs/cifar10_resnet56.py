"""python train.py --config cifar10_resnet56  # CIFAR-10 test error 6.97% in the paper (not run here)

ResNet-56 (resnet56: 3 stages of 9 basic blocks, 16-32-64 channels, zero-padding shortcuts; 853k
parameters) with the CIFAR recipe of He et al. 2016, "Deep Residual Learning for Image Recognition"
(section 4.2): SGD with momentum 0.9, batch 128, rate 0.1 divided by 10 at 32k and 48k iterations, 64k
iterations in all (164 epochs), L2 weight decay 1e-4, 4-pixel padding with random 32x32 crops and
horizontal flips. Deviations: per-channel standardisation instead of the per-pixel mean, and no decay on
the BatchNorm parameters and the head's bias.
"""

from zoo.config import Config, shrink_for_smoke


def get_config(smoke: bool = False) -> Config:
  c = Config()
  c.model.name = "resnet56"
  c.data.name = "cifar10"
  c.data.batch_size = 128
  c.data.normalization = "channel"
  c.data.augment = {"random_shift": {"pixels": 4}, "horizontal_flip": {}}
  c.optimizer.name = "momentum"
  c.optimizer.learning_rate = 0.1
  c.optimizer.kwargs = dict(momentum=0.9)
  # The paper's weight decay is an L2 term in the loss, whose gradient goes through the momentum; the
  # zoo's optimizer.weight_decay is SGDW's decoupled decay, which does not (it would need 1e-4 / (1 - 0.9)
  # to match). regularization.l2 = 1e-4 is exactly the paper's (and PyTorch's weight_decay=1e-4).
  c.regularization.l2 = 1e-4
  c.schedule.name = "step"
  c.schedule.kwargs = dict(boundaries_steps=(32_000, 48_000), factor=0.1)
  c.steps = 64_000
  if smoke:  # The same recipe on ResNet-8 (one block a stage): the smoke run checks the wiring, fast.
    c.model.kwargs = dict(stage_sizes=(1, 1, 1))
    shrink_for_smoke(c)
  return c
