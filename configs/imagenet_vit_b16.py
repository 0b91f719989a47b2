"""python train.py --config imagenet_vit_b16 --data-dir /path/with/imagenet  # below DeiT-B's 81.8% (not run)

ViT-B/16 (Dosovitskiy et al. 2021; 86.6M parameters) trained from scratch on ImageNet-1k, streamed from
<data-dir>/imagenet/{train,val}/<class>/*.JPEG, with DeiT's optimisation (Touvron et al. 2021, "Training
data-efficient image transformers & distillation through attention"): batch 1024, AdamW with peak rate
1e-3 (5e-4 x 1024/512) after 5 epochs of linear warmup, then cosine to zero over 300 epochs; weight decay
0.05 (decoupled; on kernels, the patch and position embeddings and the CLS token, where DeiT spares the
last two); label smoothing 0.1; stochastic depth 0.1; gradients clipped to global norm 1.0 (the ViT
paper's; DeiT does not clip). The host decodes 256x256 centre crops; the device takes random resized crops
to 224 and flips them; evaluation uses the 224 centre crop of images resized to 256. bfloat16 compute,
float32 parameters.

Normalisation: 'imagenet' (ImageNet's channel statistics), as DeiT and timm's DeiT models use; the ViT
paper's code maps to [-1, 1] ('inception'), which matters only when loading its weights (none are here).

DeiT-B's 81.8% top-1 also needs RandAugment, Mixup, CutMix, random erasing and repeated augmentation,
which the zoo does not have; ViTs trained on ImageNet-1k without strong augmentation overfit, so expect
less. Not measured: this machine has no ImageNet and no accelerator.
"""

from zoo.config import Config, shrink_for_smoke


def get_config(smoke: bool = False) -> Config:
  c = Config()
  c.model.name = "vit_b16"
  c.model.kwargs = {"dtype": "bfloat16", "drop_path": 0.1}  # compute in bfloat16; parameters stay float32
  c.data.name = "imagenet"
  c.data.kwargs = {"image_size": 224}  # training images decoded at 256 (train_size's default)
  c.data.batch_size = 1024
  c.data.normalization = "imagenet"
  c.data.augment = {"random_resized_crop": {"size": 224}, "horizontal_flip": {}}
  c.task.kwargs = {"label_smoothing": 0.1}
  c.optimizer.name = "adamw"
  c.optimizer.learning_rate = 1e-3
  c.optimizer.weight_decay = 0.05
  c.optimizer.grad_clip_norm = 1.0
  c.schedule.name = "warmup_cosine"
  c.schedule.kwargs = {"warmup_epochs": 5}
  c.epochs = 300
  if smoke:  # The zoo's small ViT (7x7 patches of 28x28 crops) on whatever <data-dir>/imagenet holds.
    c.model.name = "vit_tiny_p7"
    c.data.kwargs = {"image_size": 28}
    c.data.augment = {"random_resized_crop": {"size": 28}, "horizontal_flip": {}}
    c.data.batch_size = 8
    shrink_for_smoke(c)
  return c
