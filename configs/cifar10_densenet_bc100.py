"""python train.py --config cifar10_densenet_bc100  # CIFAR-10 test error 4.51% in the paper (not run here)

DenseNet-BC with L=100, k=12 (densenet_bc100: three dense blocks of 16 bottleneck layers, compression 0.5,
a 3x3 stem of 24 channels; 769k parameters) trained as Huang et al. 2017, "Densely Connected Convolutional
Networks" (section 4.2, C10+): SGD with Nesterov momentum 0.9, batch 64, rate 0.1 divided by 10 at epochs
150 and 225 (50% and 75%), 300 epochs, L2 weight decay 1e-4, no dropout (the paper's dropout 0.2 is for
the runs without augmentation), 4-pixel padding with random 32x32 crops and horizontal flips, per-channel
standardisation. Deviation: the BatchNorm parameters and the head's bias are not decayed.
"""

from zoo.config import Config, shrink_for_smoke


def get_config(smoke: bool = False) -> Config:
  c = Config()
  c.model.name = "densenet_bc100"
  c.data.name = "cifar10"
  c.data.batch_size = 64
  c.data.normalization = "channel"
  c.data.augment = {"random_shift": {"pixels": 4}, "horizontal_flip": {}}
  c.optimizer.name = "nesterov"
  c.optimizer.learning_rate = 0.1
  # The paper's weight decay is an L2 term in the loss, whose gradient goes through the momentum; the
  # zoo's optimizer.weight_decay is SGDW's decoupled decay, which does not (it would need 1e-4 / (1 - 0.9)
  # to match). regularization.l2 = 1e-4 is exactly the paper's (and PyTorch's weight_decay=1e-4).
  c.regularization.l2 = 1e-4
  c.schedule.name = "step"
  c.schedule.kwargs = dict(boundaries_epochs=(150, 225), factor=0.1)
  c.epochs = 300
  if smoke:  # Two layers a dense block: the 48-layer network takes minutes to compile on a CPU.
    c.model.kwargs = dict(block_sizes=(2, 2, 2))
    shrink_for_smoke(c)
  return c
