"""python train.py --config xor_mlp  # test accuracy 1.0 on the 4 XOR points (loss 0.0001), ~8 s on 2 CPUs

The reference documents' [2, 4, 1] network on XOR: 2 inputs, 4 hidden units, one output unit, trained on
the four points in one full batch. The output is a sigmoid unit with binary cross-entropy (the documents'
softmax over one unit is constantly 1 and learns nothing). With 4 hidden units XOR has poor local minima:
ReLU units die and leave 5-10% of seeds stuck below accuracy 1.0, tanh ~3%; SiLU units with Adam 0.1
reached accuracy 1.0 in 10,000 of 10,000 seeds within 300 steps. Most of the ~8 s is start-up,
compilation and the plots.
"""

from zoo.config import Config


def get_config(smoke: bool = False) -> Config:
  c = Config()
  c.model.name = "mlp"
  c.model.kwargs = dict(hidden_sizes=(4,), activation="silu", num_classes=1)
  c.data.name = "xor"
  c.data.normalization = "none"  # The inputs are 0 and 1 already.
  c.data.batch_size = 4
  c.data.eval_batch_size = 4
  c.task.name = "binary"
  c.optimizer.name = "adam"
  c.optimizer.learning_rate = 0.1
  c.epochs = 500  # One full-batch step per epoch.
  c.eval_every_epochs = 100
  c.log_every_steps = 50
  if smoke:
    c.epochs = 20
    c.eval_every_epochs = 20
  return c
