"""python train.py --config cifar10_mixer  # CIFAR-10 test accuracy: not run here

A small MLP-Mixer on 4x4 patches (mixer_tiny_p4: 64 tokens, width 128, depth 6, token MLP 64, channel MLP
256; 456k parameters) with the optimiser of Tolstikhin et al. 2021, "MLP-Mixer: An all-MLP Architecture
for Vision": Adam with decoupled weight decay (AdamW, 0.05 on the kernels), linear warmup (5 epochs) then
cosine, gradient clipping at global norm 1; label smoothing 0.1, 200 epochs at batch 128 with rate 1e-3;
4-pixel padding with random 32x32 crops and horizontal flips, per-channel standardisation.
"""

from zoo.config import Config, shrink_for_smoke


def get_config(smoke: bool = False) -> Config:
  c = Config()
  c.model.name = "mixer_tiny_p4"
  c.data.name = "cifar10"
  c.data.batch_size = 128
  c.data.normalization = "channel"
  c.data.augment = {"random_shift": {"pixels": 4}, "horizontal_flip": {}}
  c.task.kwargs = dict(label_smoothing=0.1)
  c.optimizer.name = "adamw"
  c.optimizer.learning_rate = 1e-3
  c.optimizer.weight_decay = 0.05  # Decoupled, as AdamW's (multiplied by the rate).
  c.optimizer.grad_clip_norm = 1.0
  c.schedule.name = "warmup_cosine"
  c.schedule.kwargs = dict(warmup_epochs=5)
  c.epochs = 200
  return shrink_for_smoke(c) if smoke else c
