"""python train.py --config mnist_cnn  # MNIST test accuracy 0.990+ after 5 epochs

The reference notebook's MNIST CNN (conv 32 3x3, max-pool 2, dense 128, dense 10; 693,962 parameters),
batch 128, 5 epochs as there; AdamW with a warmup-cosine schedule instead of a constant rate.
"""

from zoo.config import Config


def get_config(smoke: bool = False) -> Config:
  c = Config()
  c.model.name = "mnist_cnn"
  c.data.name = "mnist"
  c.data.batch_size = 128
  c.optimizer.name = "adamw"
  c.optimizer.learning_rate = 2e-3
  c.optimizer.weight_decay = 1e-4
  c.schedule.name = "warmup_cosine"
  c.schedule.kwargs = dict(warmup_epochs=0.5)
  c.epochs = 5
  if smoke:
    c.steps = 3
    c.data.max_train_examples = 512
    c.data.max_test_examples = 256
  return c
