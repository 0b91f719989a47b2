"""torchvision's ResNet-18/34/50/101/152 (also timm's `resnet*` with its default stem, same key names) ->
zoo.models.resnet: conv1/bn1 stem, layer{1-4}.{i}.conv{j}/bn{j}, downsample.{0,1} projections, fc."""

from __future__ import annotations

from typing import Any

from zoo.interop.pytorch import WeightMap, register_converter


@register_converter("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
def resnet(w: WeightMap, model_name: str) -> dict[str, Any]:
  w.conv("params/stem_conv/kernel", "conv1.weight")
  w.batch_norm("stem_bn", "bn1")
  for stage in range(1, 5):
    blocks = sorted({int(k.split(".")[1]) for k in w.keys(f"layer{stage}.")})
    for i in blocks:
      src, dst = f"layer{stage}.{i}", f"stage{stage}_block{i + 1}"
      convs = sorted({int(k.split(".")[2][4:]) for k in w.keys(f"{src}.conv")})
      for j in convs:
        w.conv(f"params/{dst}/conv{j}/kernel", f"{src}.conv{j}.weight")
        w.batch_norm(f"{dst}/bn{j}", f"{src}.bn{j}")
      if w.keys(f"{src}.downsample."):
        w.conv(f"params/{dst}/proj_conv/kernel", f"{src}.downsample.0.weight")
        w.batch_norm(f"{dst}/proj_bn", f"{src}.downsample.1")
  w.linear("head", "fc")
  return {"num_classes": w.shape("fc.weight")[0]}
