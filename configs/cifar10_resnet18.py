"""python train.py --config cifar10_resnet18  # CIFAR-10 test accuracy: not run here

The CIFAR-style ResNet-18 (resnet18_cifar: He et al. 2016's ResNet-18 with a 3x3 stride-1 stem and no
max-pool, stages 64-128-256-512; 11.2M parameters) with the usual CIFAR recipe for it (kuangliu/
pytorch-cifar's, with Nesterov momentum): SGD with Nesterov momentum 0.9, batch 128, rate 0.1 with a
cosine decay to zero over 200 epochs, L2 weight decay 5e-4 on the kernels, 4-pixel padding with random
32x32 crops and horizontal flips, per-channel standardisation.
"""

from zoo.config import Config, shrink_for_smoke


def get_config(smoke: bool = False) -> Config:
  c = Config()
  c.model.name = "resnet18_cifar"
  c.data.name = "cifar10"
  c.data.batch_size = 128
  c.data.normalization = "channel"
  c.data.augment = {"random_shift": {"pixels": 4}, "horizontal_flip": {}}
  c.optimizer.name = "nesterov"
  c.optimizer.learning_rate = 0.1
  # PyTorch's weight_decay=5e-4: an L2 term through the momentum, not the zoo's decoupled (SGDW) decay.
  c.regularization.l2 = 5e-4
  c.schedule.name = "cosine"
  c.epochs = 200
  return shrink_for_smoke(c) if smoke else c
