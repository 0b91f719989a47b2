"""python train.py --config mnist_vae  # binarised MNIST test negative ELBO 99.6 nats after 50 epochs (~2 min)

Kingma & Welling (2014)'s VAE on MNIST: one hidden layer of 500 tanh units in the encoder and the decoder,
a 20-dimensional Gaussian latent, a Bernoulli decoder, one reparameterised sample per example. The data is
MNIST binarised once with a fixed seed (binarized_mnist), so the negative ELBO is a bound on -log p(x) in
nats. Adam at 1e-3, batch 100; the paper's minibatch size was 100 too. Writes samples.png (prior samples)
and scores.npy (each test example's negative ELBO as an anomaly score).
"""

from zoo.config import Config, shrink_for_smoke


def get_config(smoke: bool = False) -> Config:
  c = Config()
  c.model.name = "vae_mlp"
  c.data.name = "binarized_mnist"
  c.data.normalization = "scale"
  c.data.batch_size = 100
  c.data.eval_batch_size = 1000
  c.task.name = "vae"
  c.optimizer.name = "adam"
  c.optimizer.learning_rate = 1e-3
  c.epochs = 50
  c.eval_every_epochs = 5
  if smoke:
    c.model.name = "vae_mlp_tiny"
    shrink_for_smoke(c)
  return c
