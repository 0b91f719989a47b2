"""python train.py --config shakespeare_gpt  # Tiny Shakespeare held-out loss 1.603 nats/char in 12 min 18 s

A small character-level GPT (gpt_char: 4 pre-LN blocks, width 128, 4 heads, 128-character context, no
dropout; 818,048 parameters) on Tiny Shakespeare (first 90% of the text for training, last 10% held out),
as nanoGPT's shakespeare-char recipe scaled to 15 minutes of a 2-core CPU: AdamW (b2 0.99) at 2e-3 with
weight decay 0.1 on the kernels, 100 warmup steps then cosine to 1/10 over 1200 steps, batch 64 windows of
128 characters, gradient clipping at norm 1. The loss is in nats per character on the held-out 10%.
"""

from zoo.config import Config, shrink_for_smoke


def get_config(smoke: bool = False) -> Config:
  c = Config()
  c.model.name = "gpt_char"
  c.data.name = "tiny_shakespeare"
  c.data.kwargs = {"block_size": 128}
  c.data.batch_size = 64
  c.data.eval_batch_size = 256
  c.task.name = "language_model"
  c.optimizer.name = "adamw"
  c.optimizer.learning_rate = 2e-3
  c.optimizer.weight_decay = 0.1
  c.optimizer.kwargs = {"b2": 0.99}
  c.optimizer.grad_clip_norm = 1.0
  c.schedule.name = "warmup_cosine"
  c.schedule.kwargs = {"warmup_steps": 100, "alpha": 0.1}
  c.steps = 1200
  c.eval_every_epochs = 2
  if smoke:
    c.model.name = "gpt_tiny"
    c.data.kwargs = {"block_size": 32}
    shrink_for_smoke(c)
  return c
