"""python train.py --config cifar100_wrn28_10  # CIFAR-100 test error 18.85% in the paper (not run here)

Wide ResNet 28-10 (wrn28_10: pre-activation basic blocks, 4 per stage, widths 160-320-640; 36.5M
parameters with the 100-way head) with dropout 0.3 between the convolutions of each block, trained as
Zagoruyko & Komodakis 2016, "Wide Residual Networks": SGD with Nesterov momentum 0.9, batch 128, rate 0.1
multiplied by 0.2 at epochs 60, 120 and 160, 200 epochs, L2 weight decay 5e-4, 4-pixel padding with random
32x32 crops and horizontal flips, per-channel standardisation. Deviations: the padding is zeros (the paper
reflects the image), and the BatchNorm parameters and the head's bias are not decayed.
"""

from zoo.config import Config, shrink_for_smoke


def get_config(smoke: bool = False) -> Config:
  c = Config()
  c.model.name = "wrn28_10"
  c.model.kwargs = dict(dropout=0.3)
  c.data.name = "cifar100"
  c.data.batch_size = 128
  c.data.normalization = "channel"
  c.data.augment = {"random_shift": {"pixels": 4}, "horizontal_flip": {}}
  c.optimizer.name = "nesterov"
  c.optimizer.learning_rate = 0.1
  # The paper's weight decay is an L2 term in the loss, whose gradient goes through the momentum; the
  # zoo's optimizer.weight_decay is SGDW's decoupled decay, which does not (it would need 5e-4 / (1 - 0.9)
  # to match). regularization.l2 = 5e-4 is exactly the paper's (and PyTorch's weight_decay=5e-4).
  c.regularization.l2 = 5e-4
  c.schedule.name = "step"
  c.schedule.kwargs = dict(boundaries_epochs=(60, 120, 160), factor=0.2)
  c.epochs = 200
  if smoke:  # The same recipe on WRN-10-1 (one block a stage, 16-32-64 wide): 36.5M parameters are slow.
    c.model.kwargs = dict(c.model.kwargs, stage_sizes=(1, 1, 1), width=16)
    shrink_for_smoke(c)
  return c
