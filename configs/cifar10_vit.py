"""python train.py --config cifar10_vit  # CIFAR-10 test accuracy: not run here

ViT-Ti on 4x4 patches (vit_ti_p4: 64 tokens + CLS, width 192, depth 12, 3 heads, MLP 768; 5.4M parameters;
Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words") trained from scratch with DeiT's recipe
(Touvron et al. 2021, "Training data-efficient image transformers") without its heavy augmentation: AdamW
(weight decay 0.05 on the kernels), warmup of 5 epochs then cosine, label smoothing 0.1, stochastic depth
0.1, gradient clipping at global norm 1 (ViT's), 200 epochs at batch 128 with rate 1e-3 (DeiT's
5e-4 * batch / 512 would be 1.25e-4: too slow from scratch at this batch); 4-pixel padding with random
32x32 crops and horizontal flips, per-channel standardisation.
"""

from zoo.config import Config, shrink_for_smoke


def get_config(smoke: bool = False) -> Config:
  c = Config()
  c.model.name = "vit_ti_p4"
  c.model.kwargs = dict(drop_path=0.1)
  c.data.name = "cifar10"
  c.data.batch_size = 128
  c.data.normalization = "channel"
  c.data.augment = {"random_shift": {"pixels": 4}, "horizontal_flip": {}}
  c.task.kwargs = dict(label_smoothing=0.1)
  c.optimizer.name = "adamw"
  c.optimizer.learning_rate = 1e-3
  c.optimizer.weight_decay = 0.05  # Decoupled, as AdamW's in the paper (multiplied by the rate).
  c.optimizer.grad_clip_norm = 1.0
  c.schedule.name = "warmup_cosine"
  c.schedule.kwargs = dict(warmup_epochs=5)
  c.epochs = 200
  if smoke:  # The same recipe on two blocks: the smoke run checks the wiring, fast.
    c.model.kwargs = dict(c.model.kwargs, depth=2)
    shrink_for_smoke(c)
  return c
