"""timm's `regnety_002`..`008` and torchvision's `regnet_y_400mf`/`regnet_y_800mf` (RegNetY, Radosavovic et
al. 2020) -> zoo.models.regnet, the naming scheme told from the keys.

timm: stem.{conv, bn}, sS.bJ.{conv1, conv2, conv3 (each .conv/.bn), se.fc1/fc2, downsample.conv/.bn},
head.fc (S, J from 1). torchvision: stem.{0, 1}, trunk_output.blockS.blockS-J.{proj.{0,1}, f.a, f.b, f.c
(each .0 conv/.1 BN), f.se.fc1/fc2}, fc (S from 1, J from 0). Both are the zoo's block: BatchNorm epsilon
1e-5, PyTorch's padding, SE from the block's input width with ReLU and a sigmoid gate.

The libraries round the stage widths' exact halves differently (timm as pycls, to even; torchvision up),
which changes RegNetY-800MF's widths; the converter reads the stage widths from the weights and picks the
zoo's `width_rounding` that gives them.
"""

from __future__ import annotations

from typing import Any, get_args

from zoo.interop.pytorch import WeightMap, register_converter
from zoo.models import create_model
from zoo.models.regnet import WidthRounding
from zoo.registry import ZooError


def _block(w: WeightMap, dst: str, convs: dict[str, tuple[str, str]], se: str) -> None:
  """One block `dst`: `convs` maps the zoo's conv-BN pairs 'a', 'b', 'c' and 'proj' to the torch prefixes
  of (conv, BatchNorm); `se` is the torch prefix of the squeeze-excite module."""
  for name in ("a", "b", "c"):
    conv, bn = convs[name]
    w.conv(f"params/{dst}/conv_{name}/kernel", f"{conv}.weight")
    w.batch_norm(f"{dst}/bn_{name}", bn)
  if w.keys(f"{se}."):  # RegNetY's; a RegNetX has none, and the zoo's model says whether it needs one
    for flax_name, torch_name in (("reduce", "fc1"), ("expand", "fc2")):
      w.conv_with_bias(f"{dst}/se/{flax_name}", f"{se}.{torch_name}")
  conv, bn = convs["proj"]
  if w.keys(f"{conv}."):  # the shortcut's projection, where the block changes width or strides
    w.conv(f"params/{dst}/proj_conv/kernel", f"{conv}.weight")
    w.batch_norm(f"{dst}/proj_bn", bn)


def _timm(w: WeightMap) -> tuple[list[int], int]:
  w.conv("params/stem_conv/kernel", "stem.conv.weight")
  w.batch_norm("stem_bn", "stem.bn")
  stages = sorted({int(k.split(".")[0][1:]) for k in w.keys("s") if k.split(".")[0][1:].isdigit()})
  widths = []
  for s in stages:
    blocks = sorted({int(k.split(".")[1][1:]) for k in w.keys(f"s{s}.b")})
    widths.append(w.shape(f"s{s}.b{blocks[0]}.conv1.conv.weight")[0])
    for j in blocks:
      p = f"s{s}.b{j}"
      convs = {n: (f"{p}.conv{i}.conv", f"{p}.conv{i}.bn") for n, i in (("a", 1), ("b", 2), ("c", 3))}
      convs["proj"] = (f"{p}.downsample.conv", f"{p}.downsample.bn")
      _block(w, f"s{s}_b{j}", convs, se=f"{p}.se")
  w.linear("head", "head.fc")
  return widths, w.shape("head.fc.weight")[0]


def _torchvision(w: WeightMap) -> tuple[list[int], int]:
  w.conv("params/stem_conv/kernel", "stem.0.weight")
  w.batch_norm("stem_bn", "stem.1")
  stages = sorted({int(k.split(".")[1].removeprefix("block")) for k in w.keys("trunk_output.block")})
  widths = []
  for s in stages:
    prefix = f"trunk_output.block{s}.block{s}-"
    blocks = sorted({int(k[len(prefix) :].split(".")[0]) for k in w.keys(prefix)})
    widths.append(w.shape(f"{prefix}{blocks[0]}.f.a.0.weight")[0])
    for j in blocks:
      p = f"{prefix}{j}"
      convs = {n: (f"{p}.f.{n}.0", f"{p}.f.{n}.1") for n in ("a", "b", "c")}
      convs["proj"] = (f"{p}.proj.0", f"{p}.proj.1")
      _block(w, f"s{s}_b{j + 1}", convs, se=f"{p}.f.se")
  w.linear("head", "fc")
  return widths, w.shape("fc.weight")[0]


def _rounding(model_name: str, widths: list[int], preferred: str) -> str:
  """The zoo's `width_rounding` whose stage widths are the weights' (the `preferred` one where both or
  neither give them: the shape check then names the tensor that does not fit)."""
  for rounding in (preferred, *(r for r in get_args(WidthRounding) if r != preferred)):
    if [width for width, _, _ in create_model(model_name, width_rounding=rounding).stages()] == widths:
      return rounding
  return preferred


@register_converter("regnety_200mf", "regnety_400mf", "regnety_600mf", "regnety_800mf")
def regnet(w: WeightMap, model_name: str) -> dict[str, Any]:
  if "stem.conv.weight" in w:
    (widths, num_classes), preferred = _timm(w), "pycls"
  elif "stem.0.weight" in w:
    (widths, num_classes), preferred = _torchvision(w), "torchvision"
  else:
    raise ZooError(
      f"the state dict is neither timm's nor torchvision's RegNet (no 'stem.conv.weight' nor "
      f"'stem.0.weight'), so it cannot load into {model_name}"
    )
  return {"width_rounding": _rounding(model_name, widths, preferred), "num_classes": num_classes}
