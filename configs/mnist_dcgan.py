"""python train.py --config mnist_dcgan  # samples: 0.57 confident, entropy 2.27 nats, IS 6.4 (see below)

DCGAN (Radford et al. 2016) at 28x28: G projects z ~ U(-1, 1) of 100 to 7x7x128, then two stride-2 5x5
transposed convolutions (64 channels, then 1) with batch norm and ReLU, tanh out; D two stride-2 5x5
convolutions (64, 128) with LeakyReLU 0.2 and batch norm on the second, then one logit (1,046,978
parameters). The paper's recipe: Adam 2e-4, b1 0.5, batch 128, weights from N(0, 0.02), real images scaled
to [-1, 1] ('symmetric'); the non-saturating generator loss. Writes samples.png and samples.npz (10,000
samples) for `python -m zoo score-samples --samples RUN/samples.npz --classifier runs/mnist_cnn`.

Measured (5 epochs, 14.7 min on the 2 shared CPU cores): of 10,000 samples, scored by mnist_cnn trained
without label smoothing, 0.57 have a top probability >= 0.9, the class histogram's
entropy is 2.27 nats (uniform: 2.30), the Inception Score formula gives 6.4. The test split's
D metrics are of D in eval mode, whose batch-norm averages mix real and fake batches: not meaningful.
"""

from zoo.config import Config, shrink_for_smoke


def get_config(smoke: bool = False) -> Config:
  c = Config()
  c.model.name = "dcgan"
  c.data.name = "mnist"
  c.data.normalization = "symmetric"
  c.data.batch_size = 128
  c.data.eval_batch_size = 1000
  c.task.name = "gan"
  c.optimizer.name = "adam"
  c.optimizer.learning_rate = 2e-4
  c.optimizer.kwargs = {"b1": 0.5}
  c.epochs = 5
  if smoke:
    c.model.name = "dcgan_tiny"
    c.task.kwargs = {"saved_samples": 500}
    shrink_for_smoke(c)
  return c
