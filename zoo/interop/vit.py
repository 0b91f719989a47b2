"""timm's ViT-Ti/S/B/L with 16x16 patches (`vit_{tiny,small,base,large}_patch16_224`) -> zoo.models.vit: the
patch convolution, CLS token and position embedding, blocks.N with the fused qkv Linear split into the zoo's
query/key/value, the final norm and the head.

timm's defaults for these models and the zoo's ViT compute the same function (checked against timm 1.0):
LayerNorm epsilon 1e-6, exact (erf) GELU, attention scaled by 1/sqrt(head_dim), position embeddings over
the CLS token and the patches (`no_embed_class=False`), the head reading the CLS token after the final
norm, biases on every Linear. timm variants that differ (global average pooling with `fc_norm`, register
tokens, layer scale, q/k norms) have tensors the zoo model has no place for and are refused by name.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from zoo.interop.pytorch import WeightMap, register_converter
from zoo.models import create_model
from zoo.registry import ZooError


@register_converter("vit_ti16", "vit_s16", "vit_b16", "vit_l16")
def vit(w: WeightMap, model_name: str) -> dict[str, Any]:
  w.conv_with_bias("embedding", "patch_embed.proj")
  w.put("params/cls", "cls_token")  # (1, 1, D) in both.
  w.put("params/pos_embedding", "pos_embed")  # (1, 1 + N, D): the CLS token's row first, as the zoo's.
  width = w.shape("patch_embed.proj.weight")[0]
  blocks = sorted({int(k.split(".")[1]) for k in w.keys("blocks.")})
  for i in blocks:
    src, dst = f"blocks.{i}", f"block{i}"
    w.layer_norm(f"{dst}/LayerNorm_0", f"{src}.norm1")
    _attention(w, f"{src}.attn", f"params/{dst}/attention", width, model_name)
    w.layer_norm(f"{dst}/LayerNorm_1", f"{src}.norm2")
    w.linear(f"{dst}/mlp/Dense_0", f"{src}.mlp.fc1")
    w.linear(f"{dst}/mlp/Dense_1", f"{src}.mlp.fc2")
  w.layer_norm("encoder_norm", "norm")
  w.linear("head", "head")
  return {"num_classes": w.shape("head.weight")[0]}


def _num_heads(model_name: str) -> int:
  # The state dict does not say how the width is split into heads: the zoo model's configuration does.
  return create_model(model_name).num_heads


def _attention(w: WeightMap, src: str, dst: str, width: int, model_name: str) -> None:
  """timm's fused `qkv` Linear (3 D, D) -> the zoo's query/key/value DenseGeneral kernels (D, H, D/H) and
  biases (H, D/H); `proj` (D, D) -> the output DenseGeneral's kernel (H, D/H, D)."""
  qkv_shape = w.shape(f"{src}.qkv.weight")
  if qkv_shape != (3 * width, width):
    raise ZooError(
      f"{src}.qkv.weight has shape {qkv_shape}, not ({3 * width}, {width}) as a ViT of width {width}"
    )
  heads = _num_heads(model_name)
  if width % heads:
    raise ZooError(f"{model_name} has {heads} heads, which do not divide the weights' width {width}")
  head_dim = width // heads
  # timm reshapes the qkv output (B, N, 3 D) to (B, N, 3, H, D/H): rows [0, D) are the query's, head-major.
  kernel = w.take(f"{src}.qkv.weight").reshape(3, heads, head_dim, width)
  bias = w.take(f"{src}.qkv.bias").reshape(3, heads, head_dim)
  for j, name in enumerate(("query", "key", "value")):
    _assign(w, f"{dst}/{name}/kernel", f"{src}.qkv.weight", np.transpose(kernel[j], (2, 0, 1)))
    _assign(w, f"{dst}/{name}/bias", f"{src}.qkv.bias", bias[j])
  # proj's input index is h * D/H + d, the heads' outputs concatenated in that order.
  w.put(f"{dst}/out/kernel", f"{src}.proj.weight", lambda a: a.T.reshape(heads, head_dim, width))
  w.put(f"{dst}/out/bias", f"{src}.proj.bias")


def _assign(w: WeightMap, path: str, key: str, value: np.ndarray) -> None:
  # One torch tensor feeds three Flax variables: `put` would take the tensor again for each, so its slice is
  # passed through a transform that ignores the (already taken) tensor.
  w.put(path, key, lambda _: value)
