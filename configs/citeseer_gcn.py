"""python train.py --config citeseer_gcn  # Citeseer test accuracy 0.724 (paper: 70.3%), ~20 s

Kipf & Welling (2017)'s GCN on Citeseer with the public Planetoid split (120 training nodes, 500 validation,
1,000 test; the test nodes missing from the graph file are isolated zero rows, as in the paper's code):
two graph convolutions with 16 hidden ReLU units, dropout 0.5, row-normalised features, full-batch training
(the loss over the 120 training nodes) with Adam at 0.01 for 200 epochs, and the paper's weight decay as
an L2 term of 5e-4 on the first layer's weights.
"""

from zoo.config import Config, shrink_for_smoke


def get_config(smoke: bool = False) -> Config:
  c = Config()
  c.model.name = "gcn_cora"  # the same model: sizes come from the data
  c.data.name = "citeseer"
  c.data.batch_size = 120  # all the training nodes: full-batch
  c.data.eval_batch_size = 1000
  c.optimizer.name = "adam"
  c.optimizer.learning_rate = 0.01
  c.regularization.l2 = 5e-4
  c.regularization.pattern = "GCNLayer_0/*kernel"
  c.epochs = 200
  c.eval_every_epochs = 20
  return shrink_for_smoke(c) if smoke else c
