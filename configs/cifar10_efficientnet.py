"""python train.py --config cifar10_efficientnet  # CIFAR-10 test accuracy: not run here

A small EfficientNet (efficientnet_tiny: B0's MBConv layout with squeeze-excitation at a quarter of its
width and half its depth, stride-1 stem; dropout 0.2 before the head and stochastic depth up to 0.2 as B0;
202k parameters) with the optimiser of the paper's reference code (Tan & Le 2019, "EfficientNet:
Rethinking Model Scaling for Convolutional Neural Networks"): RMSProp (decay 0.9, momentum 0.9, epsilon
1e-3 under the square root, the mean square starting at 1, as TF's RMSPropOptimizer), rate 0.016 per 256
examples, L2 weight decay 1e-5 on the kernels, label smoothing 0.1, 5 epochs of warmup. The reference's
decay (x0.97 every 2.4 epochs over 350 ImageNet epochs) becomes a cosine over 200 epochs. 4-pixel padding
with random 32x32 crops and horizontal flips, per-channel standardisation.
"""

from zoo.config import Config, shrink_for_smoke


def get_config(smoke: bool = False) -> Config:
  c = Config()
  c.model.name = "efficientnet_tiny"
  c.data.name = "cifar10"
  c.data.batch_size = 128
  c.data.normalization = "channel"
  c.data.augment = {"random_shift": {"pixels": 4}, "horizontal_flip": {}}
  c.task.kwargs = dict(label_smoothing=0.1)
  c.optimizer.name = "rmsprop"
  c.optimizer.learning_rate = 0.016 * 128 / 256
  c.optimizer.kwargs = dict(decay=0.9, momentum=0.9, eps=1e-3, initial_scale=1.0)
  c.regularization.l2 = 1e-5  # The reference's L2 term in the loss (through RMSProp), not decoupled decay.
  c.schedule.name = "warmup_cosine"
  c.schedule.kwargs = dict(warmup_epochs=5)
  c.epochs = 200
  return shrink_for_smoke(c) if smoke else c
