"""python train.py --config cifar10_regnet  # CIFAR-10 test accuracy: not run here

A small RegNetY (regnet_tiny: stride-1 stem of 16 channels, stages 16-32-64 wide of 1, 2 and 3 Y blocks
with group width 8 and squeeze-excitation; 58k parameters; Radosavovic et al. 2020, "Designing Network
Design Spaces") with the CIFAR recipe of the authors' pycls code (configs/archive/cifar): SGD with
Nesterov momentum 0.9, batch 128, rate 0.1 with a cosine decay to zero over 200 epochs, L2 weight decay
5e-4 on the kernels, 4-pixel padding with random 32x32 crops and horizontal flips, per-channel
standardisation.
"""

from zoo.config import Config, shrink_for_smoke


def get_config(smoke: bool = False) -> Config:
  c = Config()
  c.model.name = "regnet_tiny"
  c.data.name = "cifar10"
  c.data.batch_size = 128
  c.data.normalization = "channel"
  c.data.augment = {"random_shift": {"pixels": 4}, "horizontal_flip": {}}
  c.optimizer.name = "nesterov"
  c.optimizer.learning_rate = 0.1
  # pycls's weight decay (PyTorch's) is an L2 term through the momentum, not the zoo's decoupled decay.
  c.regularization.l2 = 5e-4
  c.schedule.name = "cosine"
  c.epochs = 200
  return shrink_for_smoke(c) if smoke else c
