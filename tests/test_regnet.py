"""RegNet: published parameter counts, the paper's width rule, grouped convolutions, SE widths, training."""

from __future__ import annotations

import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zoo.models import create_model
from zoo.models.regnet import regnet_stages
from zoo.registry import ZooError
from zoo.train import train_and_evaluate

IMAGENET = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)

# 1000 classes at 224x224x3. pycls's model zoo and timm (regnetx_002 ... regnety_008) round the group-width
# adjustment's exact halves to even, torchvision (regnet_x_400mf, ...) up: the counts differ only for
# RegNetX-400MF and RegNetY-800MF, whose torchvision counts are pinned below with width_rounding.
PYCLS_COUNTS = {
  "regnetx_200mf": 2_684_792,
  "regnetx_400mf": 5_157_512,
  "regnetx_600mf": 6_196_040,
  "regnetx_800mf": 7_259_656,
  "regnety_200mf": 3_162_996,
  "regnety_400mf": 4_344_144,
  "regnety_600mf": 6_055_160,
  "regnety_800mf": 6_263_168,
}
TORCHVISION_COUNTS = {
  "regnetx_400mf": 5_495_976,
  "regnetx_800mf": 7_259_656,
  "regnety_400mf": 4_344_144,
  "regnety_800mf": 6_432_512,
}


def abstract_variables(model, x=IMAGENET) -> dict:
  # x is an argument, not a closure: eval_shape only abstracts its arguments.
  return jax.eval_shape(lambda x: model.init({"params": jax.random.key(0)}, x), x)


def num_params(model, x=IMAGENET) -> int:
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(abstract_variables(model, x)["params"]))


@pytest.mark.parametrize("name,count", sorted(PYCLS_COUNTS.items()))
def test_pinned_parameter_counts_pycls_and_timm(name, count):
  assert num_params(create_model(name)) == count


@pytest.mark.parametrize("name,count", sorted(TORCHVISION_COUNTS.items()))
def test_pinned_parameter_counts_torchvision(name, count):
  assert num_params(create_model(name, width_rounding="torchvision")) == count


def test_width_rule_regnety_400mf():
  stages = create_model("regnety_400mf").stages()
  assert [w for w, _, _ in stages] == [48, 104, 208, 440]
  assert [d for _, d, _ in stages] == [1, 3, 6, 6]
  assert [g for _, _, g in stages] == [8, 8, 8, 8]


def test_width_rule_step_by_step():
  # RegNetX-200MF by hand: u_j = 24 + 36.44 j; s_j = round(log(u_j / 24) / log 2.49); w_j = 24 * 2.49^s_j
  # to a multiple of 8: j=0 -> 24; j=1 (60.44, s=1.01 -> 1) -> 59.76 -> 56; j=2..5 (s=1.4..1.96 -> 2) ->
  # 148.8 -> 152; j=6..12 (s=2.05..2.56 -> 3) -> 370.5 -> 368.
  assert regnet_stages(24, 36.44, 2.49, 13, 8) == [(24, 1, 8), (56, 1, 8), (152, 4, 8), (368, 7, 8)]
  # wa = 0: every block has width w0, one stage.
  assert regnet_stages(32, 0.0, 2.0, 5, 8) == [(32, 5, 8)]


def test_group_width_adjustment_and_its_rounding_conventions():
  # RegNetX-400MF's last stage is 392 wide before the adjustment: 392 / 16 = 24.5 groups of 16 rounds to
  # 24 (pycls, halves to even) or 25 (torchvision, halves up).
  assert regnet_stages(24, 24.48, 2.54, 22, 16, rounding="pycls")[-1] == (384, 12, 16)
  assert regnet_stages(24, 24.48, 2.54, 22, 16, rounding="torchvision")[-1] == (400, 12, 16)
  # A group width above a stage's width is clipped to it (one group).
  assert regnet_stages(8, 0.0, 2.0, 2, 24) == [(8, 2, 8)]
  # Widths are rounded to multiples of their group width: RegNetX-600MF's groups of 24.
  assert all(w % g == 0 for w, _, g in regnet_stages(48, 36.97, 2.24, 16, 24))


@pytest.mark.parametrize(
  "kw",
  [dict(w0=20), dict(wm=1.0), dict(wa=-1.0), dict(depth=0), dict(group_width=0), dict(width_rounding="up")],
)
def test_bad_width_parameters_fail_when_built(kw):
  with pytest.raises(ZooError):
    create_model("regnety_400mf", **kw)


def _blocks(params: dict) -> list[tuple[str, dict]]:
  """The blocks s<stage>_b<block> in network order."""
  found = {tuple(map(int, m.groups())): m[0] for k in params if (m := re.fullmatch(r"s(\d+)_b(\d+)", k))}
  return [(found[i], params[found[i]]) for i in sorted(found)]


def test_grouped_convolutions_and_se_widths_regnety_400mf():
  model = create_model("regnety_400mf")
  params = abstract_variables(model)["params"]
  stages = model.stages()
  expected = [(w, g) for w, d, g in stages for _ in range(d)]
  blocks = _blocks(params)
  assert len(blocks) == sum(d for _, d, _ in stages) == 16
  width_in = 32  # The stem's width.
  for (name, block), (w, g) in zip(blocks, expected, strict=True):
    # A grouped kernel is (3, 3, in channels per group, out channels): w / g groups of g channels.
    assert block["conv_b"]["kernel"].shape == (3, 3, g, w), name
    # SE squeezes to a quarter of the block's input width (not of its output).
    assert block["se"]["reduce"]["kernel"].shape == (1, 1, w, int(round(0.25 * width_in))), name
    assert block["se"]["expand"]["kernel"].shape[-1] == w
    # The projection shortcut exactly where the shape changes: every stage's first (strided) block.
    assert ("proj_conv" in block) == name.endswith("_b1"), name
    width_in = w
  assert [w // g for w, _, g in stages] == [6, 13, 26, 55]  # Groups per stage.
  assert params["s4_b1"]["se"]["reduce"]["kernel"].shape[-1] == 52  # round(208 / 4)


def test_regnetx_has_no_squeeze_excitation():
  params = abstract_variables(create_model("regnetx_400mf"))["params"]
  assert not any("se" in block for _, block in _blocks(params))
  assert params["s4_b12"]["conv_b"]["kernel"].shape == (3, 3, 16, 384)  # 24 groups of 16


def test_stage_resolutions_at_224():
  model = create_model("regnety_400mf")
  variables = abstract_variables(model)
  out, state = jax.eval_shape(
    lambda v, x: model.apply(v, x, capture_intermediates=True, mutable=["intermediates"]), variables, IMAGENET
  )
  inter = state["intermediates"]
  assert inter["stem_conv"]["__call__"][0].shape == (1, 112, 112, 32)
  sizes = {name: inter[name]["__call__"][0].shape for name in ("s1_b1", "s2_b3", "s3_b1", "s4_b6")}
  assert sizes == {
    "s1_b1": (1, 56, 56, 48),
    "s2_b3": (1, 28, 28, 104),
    "s3_b1": (1, 14, 14, 208),
    "s4_b6": (1, 7, 7, 440),
  }
  assert out.shape == (1, 1000) and out.dtype == jnp.float32


@pytest.mark.parametrize("shape", [(2, 28, 28, 1), (2, 32, 32, 3)])
def test_regnet_tiny_output_shapes(shape):
  # Shapes only (test_models runs the forward pass on real values at 28x28x1).
  model = create_model("regnet_tiny")
  x = jax.ShapeDtypeStruct(shape, jnp.float32)
  variables = abstract_variables(model, x)
  for train in (False, True):
    logits, _ = jax.eval_shape(
      lambda v, x, train=train: model.apply(v, x, train=train, mutable=["batch_stats"]), variables, x
    )
    assert logits.shape == (2, 10) and logits.dtype == jnp.float32
  assert num_params(model, x) <= 500_000


def test_regnet_tiny_stages_and_x_variant():
  model = create_model("regnet_tiny")
  assert model.stages() == [(16, 1, 8), (32, 2, 8), (64, 3, 8)]
  x = jax.ShapeDtypeStruct((1, 28, 28, 1), jnp.float32)
  _, state = jax.eval_shape(
    lambda v, x: model.apply(v, x, capture_intermediates=True, mutable=["intermediates"]),
    abstract_variables(model, x),
    x,
  )
  inter = state["intermediates"]
  assert inter["stem_conv"]["__call__"][0].shape == (1, 28, 28, 16)  # Stride-1 stem for small images.
  assert inter["s3_b3"]["__call__"][0].shape == (1, 4, 4, 64)  # 28 -> 14 -> 7 -> 4
  x_params = abstract_variables(create_model("regnet_tiny", se_ratio=0.0), x)["params"]
  assert not any("se" in block for _, block in _blocks(x_params))


def test_initialisation_follows_pycls():
  model = create_model("regnet_tiny", num_classes=100)
  x = jnp.zeros((1, 28, 28, 1))
  params = jax.jit(model.init)(jax.random.key(0), x)["params"]
  kernel = params["s3_b2"]["conv_a"]["kernel"]  # (1, 1, 64, 64): fan_out 64
  np.testing.assert_allclose(jnp.std(kernel), np.sqrt(2 / 64), rtol=0.1)
  np.testing.assert_allclose(jnp.std(params["head"]["kernel"]), 0.01, rtol=0.1)
  assert not jnp.any(params["head"]["bias"])


def test_regnet_tiny_trains(tiny_config, tmp_path):
  # One epoch of 8 steps on 16x16 images (16 -> 8 -> 4 -> 2 px), checkpointed only at the end.
  config = tiny_config(
    model__name="regnet_tiny", model__kwargs={}, epochs=1, log_every_steps=2, checkpoint_every_steps=1000
  )
  config.data.kwargs = {"n_train": 256, "n_test": 64, "image_size": 16}
  train_and_evaluate(config, tmp_path, progress=False)
  records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  train = [r["loss"] for r in records if r["split"] == "train"]
  assert len(train) == 4 and train[-1] < 0.85 * train[0]
