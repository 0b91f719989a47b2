"""python train.py --config fashion_mnist_densenet  # test accuracy 0.895 after 5 epochs (~109 min)

A small DenseNet-BC (densenet_tiny: growth rate 8, three dense blocks of 2 bottleneck layers, compression
0.5, the CIFAR stem; 20k parameters) on Fashion-MNIST with the paper's optimiser (Huang et al. 2017,
"Densely Connected Convolutional Networks"): SGD with Nesterov momentum 0.9, rate 0.1 divided by 10 at 50%
and 75% of the run, L2 weight decay 1e-4 on the kernels; random shifts of up to 2 pixels and horizontal
flips. Timed on the 2-core development machine while several other jobs shared it; at the README's idle
throughput (151 ms a step) its 2340 steps take about 6 minutes.
"""

from zoo.config import Config, shrink_for_smoke


def get_config(smoke: bool = False) -> Config:
  c = Config()
  c.model.name = "densenet_tiny"
  c.data.name = "fashion_mnist"
  c.data.batch_size = 128
  c.data.augment = {"random_shift": {"pixels": 2}, "horizontal_flip": {}}
  c.optimizer.name = "nesterov"
  c.optimizer.learning_rate = 0.1
  # The paper's weight decay is an L2 term in the loss, which goes through the momentum; the zoo's
  # optimizer.weight_decay is SGDW's decoupled decay, which does not (it would need 1e-4 / (1 - 0.9)).
  c.regularization.l2 = 1e-4
  c.schedule.name = "step"
  c.schedule.kwargs = dict(boundaries_epochs=(2.5, 3.75), factor=0.1)
  c.epochs = 5
  return shrink_for_smoke(c) if smoke else c
