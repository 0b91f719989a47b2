"""python train.py --config imagenet_resnet50 --data-dir /path/with/imagenet  # ~76% top-1 expected (not run)

ResNet-50 (v1.5, torchvision's layout; 25.6M parameters) on ImageNet-1k, streamed from
<data-dir>/imagenet/{train,val}/<class>/*.JPEG: batch 1024, SGD with Nesterov momentum 0.9, peak rate 0.4
(Goyal et al. 2017's linear scaling rule, 0.1 x 1024/256) after their 5 epochs of linear warmup, then
cosine to zero (instead of their steps at epochs 30, 60, 80) over 90 epochs; label smoothing 0.1; the last
BatchNorm of each residual block starts at zero (the zoo's ResNet default, as Goyal et al.'s). The host
decodes 256x256 centre crops; the device takes Inception-style random resized crops to 224 and flips them;
evaluation uses the 224 centre crop of images resized to 256. Normalised with ImageNet's channel
statistics. bfloat16 compute, float32 parameters.

Weight decay: an L2 term of 1e-4 on the kernels (regularization.l2, PyTorch's weight_decay=1e-4), which goes
through the momentum as in the paper; the zoo's optimizer.weight_decay is SGDW's decoupled decay instead.

Expected: about 76% top-1 (Goyal et al.: 23.6-23.7% top-1 error after 90 epochs; torchvision's ResNet-50
v1.5 reference, 76.1%). Not measured: this machine has no ImageNet and no accelerator.
"""

from zoo.config import Config, shrink_for_smoke


def get_config(smoke: bool = False) -> Config:
  c = Config()
  c.model.name = "resnet50"
  c.model.kwargs = {"dtype": "bfloat16"}  # compute; parameters stay float32
  c.data.name = "imagenet"
  c.data.kwargs = {"image_size": 224}  # training images decoded at 256 (train_size's default)
  c.data.batch_size = 1024
  c.data.normalization = "imagenet"
  c.data.augment = {"random_resized_crop": {"size": 224}, "horizontal_flip": {}}
  c.task.kwargs = {"label_smoothing": 0.1}
  c.optimizer.name = "nesterov"
  c.optimizer.kwargs = {"momentum": 0.9}
  c.optimizer.learning_rate = 0.4
  c.regularization.l2 = 1e-4
  c.schedule.name = "warmup_cosine"
  c.schedule.kwargs = {"warmup_epochs": 5}
  c.epochs = 90
  if smoke:  # The tiny ResNet on 32x32 crops of whatever <data-dir>/imagenet holds (tests: a few images).
    c.model.name = "resnet_tiny"
    c.data.kwargs = {"image_size": 32}
    c.data.augment = {"random_resized_crop": {"size": 32}, "horizontal_flip": {}}
    c.data.batch_size = 8
    shrink_for_smoke(c)
  return c
