"""python train.py --config cora_gat  # Cora test accuracy: see README (paper: 83.0%)

Velickovic et al. (2018)'s GAT on Cora with the public Planetoid split: 8 attention heads of 8 ELU units,
then one head to the 7 classes, dropout 0.6 on every layer's input and on the attention coefficients,
full-batch training with Adam at 0.005 and an L2 term of 5e-4 on every weight (kernels and attention
vectors). As in the paper, training stops once the validation accuracy has not improved for 100 epochs, and
ends with the parameters of its best validation accuracy.
"""

from zoo.config import Config, shrink_for_smoke


def get_config(smoke: bool = False) -> Config:
  c = Config()
  c.model.name = "gat_cora"
  c.data.name = "cora"
  c.data.batch_size = 140  # all the training nodes: full-batch
  c.data.eval_batch_size = 1000
  c.optimizer.name = "adam"
  c.optimizer.learning_rate = 0.005
  c.regularization.l2 = 5e-4
  c.regularization.pattern = "*kernel"
  c.epochs = 1000
  c.eval_every_epochs = 5
  c.early_stopping.patience = 20  # evaluations: 100 epochs
  c.early_stopping.metric = "accuracy"
  c.early_stopping.mode = "max"
  c.early_stopping.restore_best = True
  return shrink_for_smoke(c) if smoke else c
