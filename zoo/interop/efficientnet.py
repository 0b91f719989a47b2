"""timm's `efficientnet_b0`..`b3` and torchvision's `efficientnet_b0`..`b3` (EfficientNet, Tan & Le 2019)
-> zoo.models.efficientnet, the naming scheme told from the keys.

timm: conv_stem/bn1, blocks.S.I.{conv_pw/bn1 (expansion), conv_dw/bn2, se.conv_reduce/conv_expand,
conv_pwl/bn3}, or for the unexpanded first stage blocks.0.I.{conv_dw/bn1, se, conv_pw/bn2}; conv_head/bn2,
classifier. torchvision: features.0.{0,1} stem, features.S.I.block.{0: expansion, 1: depthwise, 2: SE
fc1/fc2, 3: projection} (without the expansion: 0, 1, 2 = depthwise, SE, projection), each conv-BN a
Conv2dNormActivation .{0, 1}; features.8.{0,1} head, classifier.1.

Both libraries' models were trained in PyTorch: symmetric k//2 padding and BatchNorm epsilon 1e-5
(torchvision sets 1e-3 for EfficientNetV2 only), where the zoo's defaults are the TF reference's SAME
padding and 1e-3, so the converter asks for `padding='symmetric', bn_epsilon=1e-5`. timm's `tf_efficientnet_*`
ports of the TF weights have the same key names as its `efficientnet_*` but need the zoo's defaults; the keys
cannot tell the two apart, so this converter serves the PyTorch-trained ones only.
"""

from __future__ import annotations

from typing import Any

from zoo.interop.pytorch import WeightMap, register_converter
from zoo.registry import ZooError

# What PyTorch-trained EfficientNets (timm's `efficientnet_b*`, torchvision's v1) are built with.
PYTORCH_ARCH = {"padding": "symmetric", "bn_epsilon": 1e-5}


def _indices(w: WeightMap, prefix: str, position: int) -> list[int]:
  """The distinct integers at dot-separated `position` of the keys starting with `prefix`, ascending."""
  return sorted({int(k.split(".")[position]) for k in w.keys(prefix)})


def _timm(w: WeightMap) -> int:
  w.conv("params/stem_conv/kernel", "conv_stem.weight")
  w.batch_norm("stem_norm", "bn1")
  for stage in _indices(w, "blocks.", 1):
    for i in _indices(w, f"blocks.{stage}.", 2):
      src, dst = f"blocks.{stage}.{i}", f"stage{stage + 1}_block{i + 1}"
      if f"{src}.conv_pwl.weight" in w:  # InvertedResidual: 1x1 expansion, depthwise, SE, 1x1 projection
        w.conv(f"params/{dst}/expand_conv/kernel", f"{src}.conv_pw.weight")
        w.batch_norm(f"{dst}/expand_norm", f"{src}.bn1")
        dw_bn, project, project_bn = "bn2", "conv_pwl", "bn3"
      else:  # DepthwiseSeparableConv (expansion ratio 1): depthwise, SE, 1x1 projection
        dw_bn, project, project_bn = "bn1", "conv_pw", "bn2"
      w.conv(f"params/{dst}/depthwise_conv/kernel", f"{src}.conv_dw.weight")
      w.batch_norm(f"{dst}/depthwise_norm", f"{src}.{dw_bn}")
      for flax_name, torch_name in (("reduce", "conv_reduce"), ("expand", "conv_expand")):
        w.conv_with_bias(f"{dst}/se/{flax_name}", f"{src}.se.{torch_name}")
      w.conv(f"params/{dst}/project_conv/kernel", f"{src}.{project}.weight")
      w.batch_norm(f"{dst}/project_norm", f"{src}.{project_bn}")
  w.conv("params/head_conv/kernel", "conv_head.weight")
  w.batch_norm("head_norm", "bn2")
  w.linear("classifier", "classifier")
  return w.shape("classifier.weight")[0]


def _torchvision(w: WeightMap) -> int:
  w.conv("params/stem_conv/kernel", "features.0.0.weight")
  w.batch_norm("stem_norm", "features.0.1")
  # features.0 is the stem, the last one the 1x1 head conv, those between the MBConv stages.
  head = max(_indices(w, "features.", 1))
  for stage in range(1, head):
    for i in _indices(w, f"features.{stage}.", 2):
      src, dst = f"features.{stage}.{i}.block", f"stage{stage}_block{i + 1}"
      layers = _indices(w, f"{src}.", 4)
      expanded = len(layers) == 4  # [expansion,] depthwise, SE, projection
      if expanded:
        w.conv(f"params/{dst}/expand_conv/kernel", f"{src}.0.0.weight")
        w.batch_norm(f"{dst}/expand_norm", f"{src}.0.1")
      dw, se, project = (1, 2, 3) if expanded else (0, 1, 2)
      w.conv(f"params/{dst}/depthwise_conv/kernel", f"{src}.{dw}.0.weight")
      w.batch_norm(f"{dst}/depthwise_norm", f"{src}.{dw}.1")
      for flax_name, torch_name in (("reduce", "fc1"), ("expand", "fc2")):
        w.conv_with_bias(f"{dst}/se/{flax_name}", f"{src}.{se}.{torch_name}")
      w.conv(f"params/{dst}/project_conv/kernel", f"{src}.{project}.0.weight")
      w.batch_norm(f"{dst}/project_norm", f"{src}.{project}.1")
  w.conv("params/head_conv/kernel", f"features.{head}.0.weight")
  w.batch_norm("head_norm", f"features.{head}.1")
  w.linear("classifier", "classifier.1")
  return w.shape("classifier.1.weight")[0]


@register_converter("efficientnet_b0", "efficientnet_b1", "efficientnet_b2", "efficientnet_b3")
def efficientnet(w: WeightMap, model_name: str) -> dict[str, Any]:
  if "conv_stem.weight" in w:
    num_classes = _timm(w)
  elif "features.0.0.weight" in w:
    num_classes = _torchvision(w)
  else:
    raise ZooError(
      f"the state dict is neither timm's nor torchvision's EfficientNet (no 'conv_stem.weight' nor "
      f"'features.0.0.weight'), so it cannot load into {model_name}"
    )
  return {**PYTORCH_ARCH, "num_classes": num_classes}
