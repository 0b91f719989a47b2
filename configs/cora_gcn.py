"""python train.py --config cora_gcn  # Cora test accuracy: see README (paper: 81.5%)

Kipf & Welling (2017)'s GCN on Cora with the public Planetoid split (140 training nodes, 500 validation,
1,000 test): two graph convolutions with 16 hidden ReLU units, dropout 0.5, row-normalised features,
full-batch training (every step is the whole graph; the loss is over the 140 training nodes) with Adam at
0.01 for 200 epochs, and the paper's weight decay as an L2 term of 5e-4 on the first layer's weights.
"""

from zoo.config import Config, shrink_for_smoke


def get_config(smoke: bool = False) -> Config:
  c = Config()
  c.model.name = "gcn_cora"
  c.data.name = "cora"
  c.data.batch_size = 140  # all the training nodes: full-batch
  c.data.eval_batch_size = 1000
  c.optimizer.name = "adam"
  c.optimizer.learning_rate = 0.01
  c.regularization.l2 = 5e-4
  c.regularization.pattern = "GCNLayer_0/*kernel"
  c.epochs = 200
  c.eval_every_epochs = 20
  return shrink_for_smoke(c) if smoke else c
