"""python train.py --config shakespeare_lstm  # Tiny Shakespeare held-out loss 1.579 nats/char (1,500 steps, ~18 min)

A character-level LSTM language model (char_lstm with one layer of 512 cells, 128-dimensional character
embeddings: 1,354,433 parameters) on Tiny Shakespeare (first 90% for training, last 10%
held out): Adam 2e-3 with cosine decay, batch 64 windows of 128 characters, gradient clipping at norm 5
(Karpathy's char-rnn clips at 5). The loss is in nats per character.
"""

from zoo.config import Config, shrink_for_smoke


def get_config(smoke: bool = False) -> Config:
  c = Config()
  c.model.name = "char_lstm"
  c.model.kwargs = {"num_layers": 1}  # one layer: sized for about 15 minutes on 2 CPU cores
  c.data.name = "tiny_shakespeare"
  c.data.kwargs = {"block_size": 128}
  c.data.batch_size = 64
  c.data.eval_batch_size = 256
  c.task.name = "language_model"
  c.optimizer.name = "adam"
  c.optimizer.learning_rate = 2e-3
  c.optimizer.grad_clip_norm = 5.0
  c.schedule.name = "cosine"
  c.steps = 1500
  c.eval_every_epochs = 2
  if smoke:
    c.model.name = "char_lstm_tiny"
    c.data.kwargs = {"block_size": 32}
    shrink_for_smoke(c)
  return c
