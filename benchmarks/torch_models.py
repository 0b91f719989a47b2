"""PyTorch builds of benchmarks/speed.py's six workloads, for timing the same training step in PyTorch.

Each network is the zoo's one layer for layer (benchmarks/speed.py asserts equal trainable parameter
counts): PyTorch's defaults otherwise (NCHW images, its own initialisers, which do not change the work).
Only imported with the `[bench]` extra installed.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class MLP(nn.Module):
  def __init__(self, sizes: tuple[int, ...], num_classes: int):
    super().__init__()
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:], strict=True):
      layers += [nn.Linear(a, b), nn.ReLU()]
    self.net = nn.Sequential(nn.Flatten(), *layers, nn.Linear(sizes[-1], num_classes))

  def forward(self, x):
    return self.net(x)


class FlaxExamplesCNN(nn.Module):
  def __init__(self, num_classes: int):
    super().__init__()
    self.net = nn.Sequential(
      nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
      nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
      nn.Flatten(), nn.Linear(64 * 7 * 7, 256), nn.ReLU(), nn.Linear(256, num_classes),
    )  # fmt: skip

  def forward(self, x):
    return self.net(x)


class BasicBlock(nn.Module):
  def __init__(self, cin: int, cout: int, stride: int):
    super().__init__()
    self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(cout)
    self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(cout)
    self.shortcut = nn.Sequential()
    if stride != 1 or cin != cout:
      self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

  def forward(self, x):
    y = F.relu(self.bn1(self.conv1(x)))
    return F.relu(self.shortcut(x) + self.bn2(self.conv2(y)))


class ResNet18Cifar(nn.Module):
  def __init__(self, num_classes: int):
    super().__init__()
    self.stem = nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU())
    blocks, cin = [], 64
    for i, width in enumerate((64, 128, 256, 512)):
      for j in range(2):
        blocks.append(BasicBlock(cin, width, 2 if i > 0 and j == 0 else 1))
        cin = width
    self.blocks = nn.Sequential(*blocks)
    self.head = nn.Linear(512, num_classes)

  def forward(self, x):
    return self.head(self.blocks(self.stem(x)).mean(dim=(2, 3)))


class SelfAttention(nn.Module):
  def __init__(self, width: int, heads: int, causal: bool):
    super().__init__()
    self.heads, self.causal = heads, causal
    self.qkv = nn.Linear(width, 3 * width)
    self.out = nn.Linear(width, width)

  def forward(self, x):
    b, t, d = x.shape
    q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
    y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)  # (B, H, T, D/H)
    return self.out(y.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
  """Pre-LN Transformer block, as the zoo's ViT EncoderBlock and GPT TransformerBlock."""

  def __init__(self, width: int, heads: int, mlp: int, causal: bool, gelu: str, eps: float):
    super().__init__()
    self.norm1, self.norm2 = nn.LayerNorm(width, eps=eps), nn.LayerNorm(width, eps=eps)
    self.attention = SelfAttention(width, heads, causal)
    self.mlp = nn.Sequential(nn.Linear(width, mlp), nn.GELU(approximate=gelu), nn.Linear(mlp, width))

  def forward(self, x):
    x = x + self.attention(self.norm1(x))
    return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
  def __init__(self, patch: int, width: int, depth: int, heads: int, mlp: int, tokens: int, num_classes: int):
    super().__init__()
    self.embedding = nn.Conv2d(3, width, patch, patch)
    self.cls = nn.Parameter(torch.zeros(1, 1, width))
    self.pos = nn.Parameter(torch.zeros(1, tokens + 1, width))
    # The zoo's ViT: exact GELU, LayerNorm epsilon 1e-6.
    self.blocks = nn.Sequential(*(Block(width, heads, mlp, False, "none", 1e-6) for _ in range(depth)))
    self.norm = nn.LayerNorm(width, eps=1e-6)
    self.head = nn.Linear(width, num_classes)

  def forward(self, x):
    x = self.embedding(x).flatten(2).transpose(1, 2)  # (B, N, D)
    x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
    return self.head(self.norm(self.blocks(x))[:, 0])


class GPT(nn.Module):
  def __init__(self, vocab: int, context: int, width: int, depth: int, heads: int):
    super().__init__()
    self.tokens = nn.Embedding(vocab, width)
    self.positions = nn.Parameter(torch.zeros(1, context, width))
    self.blocks = nn.Sequential(*(Block(width, heads, 4 * width, True, "tanh", 1e-5) for _ in range(depth)))
    self.norm = nn.LayerNorm(width)

  def forward(self, x):
    h = self.tokens(x) + self.positions[:, : x.shape[1]]
    return self.norm(self.blocks(h)) @ self.tokens.weight.T  # tied output layer, no bias


class CharLSTM(nn.Module):
  def __init__(self, vocab: int, embed: int, hidden: int):
    super().__init__()
    self.embedding = nn.Embedding(vocab, embed)
    self.lstm = nn.LSTM(embed, hidden, batch_first=True)
    # The zoo's LSTM has one bias per gate; PyTorch's kernel adds two: the second stays zero and frozen.
    nn.init.zeros_(self.lstm.bias_hh_l0)
    self.lstm.bias_hh_l0.requires_grad_(False)
    self.head = nn.Linear(hidden, vocab)

  def forward(self, x):
    return self.head(self.lstm(self.embedding(x))[0])


def build(name: str, w: Any) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
  """The PyTorch model of workload `name` (a benchmarks/speed.py Workload) and a random batch for it."""
  g = torch.Generator().manual_seed(0)
  b, kw = w.batch_size, w.kwargs
  if w.seq_len is not None:
    x = torch.randint(0, 65, (b, w.seq_len), generator=g)
    y = torch.randint(0, 65, (b, w.seq_len), generator=g)
    if name == "lstm":
      return CharLSTM(65, kw["embed_dim"], kw["hidden_size"]), x, y
    return GPT(65, kw["block_size"], kw["width"], kw["depth"], kw["num_heads"]), x, y
  shape = w.input_shape
  x = torch.randn((b, *shape), generator=g)
  if len(shape) == 3:
    x = x.permute(0, 3, 1, 2).contiguous()  # NHWC -> PyTorch's NCHW
  y = torch.randint(0, w.num_classes, (b,), generator=g)
  if name == "mlp":
    return MLP((shape[0], *kw["hidden_sizes"]), w.num_classes), x, y
  if name == "cnn":
    return FlaxExamplesCNN(w.num_classes), x, y
  if name == "resnet18":
    return ResNet18Cifar(w.num_classes), x, y
  if name == "vit":
    tokens = (shape[0] // 4) * (shape[1] // 4)
    return ViT(4, 192, kw["depth"], 3, 768, tokens, w.num_classes), x, y
  raise KeyError(name)


def runner(name: str, w: Any, mode: str):
  """(run(n): n training steps of workload `name` in PyTorch `mode` ('eager' or 'compile'), the model's
  trainable parameter count)."""
  model, x, y = build(name, w)
  model.train()
  params = [p for p in model.parameters() if p.requires_grad]
  opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01, foreach=True)
  forward = torch.compile(model) if mode == "compile" else model

  def optimizer_step():
    opt.step()

  opt_step = torch.compile(optimizer_step) if mode == "compile" else optimizer_step

  def run(n: int) -> None:
    for _ in range(n):
      opt.zero_grad(set_to_none=True)
      logits = forward(x)
      loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
      loss.backward()
      opt_step()
    float(loss.detach())  # waits for the step (CPU: already done)

  return run, sum(p.numel() for p in params)
