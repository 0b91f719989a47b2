"""python train.py --config digits_mlp  # test accuracy 0.98+ on the 360 held-out digits, ~15 s on 2 CPU cores

The reference notebook's digits MLP: one hidden layer of 100 ReLU units on the 8x8 digits (1,797 images,
shipped inside the package; stratified 80/20 split), inputs standardised per feature on the training
split (as scikit-learn's StandardScaler), Adam.
"""

from zoo.config import Config


def get_config(smoke: bool = False) -> Config:
  c = Config()
  c.model.name = "mlp"
  c.model.kwargs = dict(hidden_sizes=(100,), activation="relu")
  c.data.name = "digits"
  c.data.normalization = "feature"
  c.data.batch_size = 32
  c.optimizer.name = "adam"
  c.optimizer.learning_rate = 1e-3
  c.epochs = 60
  c.eval_every_epochs = 10
  c.log_every_steps = 50
  if smoke:
    c.epochs = 1
    c.eval_every_epochs = 1
  return c
