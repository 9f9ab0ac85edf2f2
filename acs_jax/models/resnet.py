"""Quantized ResNets (Flax Linen): ResNet-18/34, ResNet-20 and a tiny test net.

Two residual block types:
  * "basic": the standard block, conv-BN-ReLU, conv-BN, shortcut add, ReLU.
    Activations are quantized at each quantized conv's input; those inputs
    follow a ReLU, so the activation quantizers are unsigned.
  * "official": the block of the paper's official code (ReActNet / Bi-Real
    style), twice `LearnableBias -> PReLU -> LearnableBias -> ActQuant ->
    QConv(+bias) -> BN`, then the shortcut add and `LearnableBias -> PReLU ->
    LearnableBias`. No ReLU: the quantizer inputs can be negative, so its
    activation quantizers are signed.

Stems: "cifar" (3x3 conv, stride 1, no max-pool) and "imagenet" (7x7 stride-2
conv + 3x3 stride-2 max-pool). Shortcuts where a block changes the shape:
"projection" (a 1x1 conv + BN, He et al.'s option B, torchvision's
`downsample`) or "zero_pad" (option A of He et al.'s CIFAR ResNets: strided
subsampling and zero channels on both sides, no parameters). Which layers are quantized comes from the
QuantConfig; the defaults quantize the 3x3 convs inside the blocks and keep
the stem, the 1x1 shortcut convs and the classifier in float.

`__call__(x, train, features=False)` returns logits [B, num_classes] (float32),
or (logits, embedding) with the pooled penultimate features when
`features=True`.
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from acs_jax.quant import ActQuant, QConv, QDense, QuantConfig

STEMS = ("cifar", "imagenet")
BLOCKS = ("basic", "official")
SHORTCUTS = ("projection", "zero_pad")


def batch_norm(train: bool, name: str | None = None, **kw) -> nn.BatchNorm:
  # PyTorch's BatchNorm2d defaults (momentum 0.1 == Flax 0.9, eps 1e-5), kept
  # in float32 whatever the compute dtype.
  return nn.BatchNorm(use_running_average=not train, momentum=0.9,
                      epsilon=1e-5, dtype=jnp.float32,
                      param_dtype=jnp.float32, name=name, **kw)


class LearnableBias(nn.Module):
  """A per-channel additive bias, initialised at zero."""

  @nn.compact
  def __call__(self, x):
    b = self.param("bias", nn.initializers.zeros, (x.shape[-1],), jnp.float32)
    return x + b.astype(x.dtype)


class PReLU(nn.Module):
  """Per-channel PReLU (PyTorch's nn.PReLU(C): slopes initialised at 0.25)."""

  @nn.compact
  def __call__(self, x):
    a = self.param("slope", nn.initializers.constant(0.25), (x.shape[-1],),
                   jnp.float32)
    return jnp.where(x >= 0, x, a.astype(x.dtype) * x)


def zero_pad_shortcut(x, features: int, strides: int):
  """Option A: x[:, ::s, ::s] with (features - C) / 2 zero channels per side."""
  extra = features - x.shape[-1]
  if extra < 0 or extra % 2:
    raise ValueError(f"a zero-pad shortcut cannot map {x.shape[-1]} channels "
                     f"to {features}: use shortcut 'projection'")
  x = x[:, ::strides, ::strides, :]
  return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (extra // 2, extra // 2)))


class Shortcut(nn.Module):
  """Identity, or (when the shape changes) a 1x1 projection conv + BN or the
  parameter-free zero-pad shortcut."""
  features: int
  strides: int
  quant: QuantConfig
  signed_input: bool
  dtype: Any = jnp.float32
  kind: str = "projection"

  @nn.compact
  def __call__(self, x, train: bool):
    if self.strides == 1 and x.shape[-1] == self.features:
      return x
    if self.kind == "zero_pad":
      return zero_pad_shortcut(x, self.features, self.strides)
    w_bits, a_bits = self.quant.layer("shortcut")
    x = ActQuant(a_bits, self.quant.signed_act(self.signed_input))(x)
    x = QConv(self.features, (1, 1), (self.strides, self.strides),
              padding="VALID", weight_bits=w_bits,
              per_channel=self.quant.per_channel, dtype=self.dtype)(x)
    return batch_norm(train)(x)


class _Block(nn.Module):
  """The fields both residual blocks share."""
  features: int
  strides: int
  quant: QuantConfig
  dtype: Any = jnp.float32
  shortcut: str = "projection"


class BasicBlock(_Block):
  """Standard ResNet basic block with quantized 3x3 convs."""

  @nn.compact
  def __call__(self, x, train: bool):
    w_bits, a_bits = self.quant.layer("block")
    conv = functools.partial(QConv, self.features, (3, 3), weight_bits=w_bits,
                             per_channel=self.quant.per_channel,
                             dtype=self.dtype)
    signed = self.quant.signed_act(False)  # inputs follow a ReLU
    y = ActQuant(a_bits, signed)(x)
    y = conv(strides=(self.strides, self.strides))(y)
    y = nn.relu(batch_norm(train)(y))
    y = ActQuant(a_bits, signed)(y)
    y = conv()(y)
    y = batch_norm(train)(y)
    s = Shortcut(self.features, self.strides, self.quant, signed_input=False,
                 dtype=self.dtype, kind=self.shortcut)(x, train)
    return nn.relu(y + s)


class OfficialBlock(_Block):
  """The official implementation's block (see module docstring)."""

  @nn.compact
  def __call__(self, x, train: bool):
    w_bits, a_bits = self.quant.layer("block")
    signed = self.quant.signed_act(True)  # PReLU + bias: can be negative
    y = x
    for i, strides in enumerate((self.strides, 1)):
      y = LearnableBias(name=f"bias{i + 1}1")(y)
      y = PReLU(name=f"prelu{i + 1}")(y)
      y = LearnableBias(name=f"bias{i + 1}2")(y)
      y = ActQuant(a_bits, signed, name=f"quan{i + 1}")(y)
      # The official quantized convs carry a float bias.
      y = QConv(self.features, (3, 3), (strides, strides), use_bias=True,
                weight_bits=w_bits, per_channel=self.quant.per_channel,
                dtype=self.dtype, name=f"conv{i + 1}")(y)
      y = batch_norm(train, name=f"bn{i + 1}")(y)
    y = y + Shortcut(self.features, self.strides, self.quant,
                     signed_input=True, dtype=self.dtype,
                     kind=self.shortcut, name="shortcut")(x, train)
    y = LearnableBias(name="bias31")(y)
    y = PReLU(name="prelu3")(y)
    return LearnableBias(name="bias32")(y)


class ResNet(nn.Module):
  """ResNet with LSQ-quantized layers.

  Attributes:
    stage_sizes: blocks per stage, e.g. (2, 2, 2, 2) for ResNet-18.
    num_classes: classifier outputs.
    widths: channels per stage; the stem has widths[0] channels.
    block: "basic" or "official".
    stem: "cifar" or "imagenet".
    shortcut: "projection" or "zero_pad" (see the module docstring).
    quant: which layers are quantized, and how.
    dtype: compute dtype (parameters, BatchNorm and logits stay float32).
  """
  stage_sizes: Sequence[int]
  num_classes: int
  widths: Sequence[int] = (64, 128, 256, 512)
  block: str = "basic"
  stem: str = "cifar"
  shortcut: str = "projection"
  quant: QuantConfig = QuantConfig()
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = True, features: bool = False):
    if self.block not in BLOCKS:
      raise ValueError(f"config.model.block={self.block!r}; valid: {BLOCKS}")
    if self.stem not in STEMS:
      raise ValueError(f"config.model.stem={self.stem!r}; valid: {STEMS}")
    if self.shortcut not in SHORTCUTS:
      raise ValueError(f"config.model.shortcut={self.shortcut!r}; valid: "
                       f"{SHORTCUTS}")
    w_bits, a_bits = self.quant.layer("stem")
    # Normalised images can be negative: a quantized stem input is signed.
    x = ActQuant(a_bits, self.quant.signed_act(True), name="stem_quant")(x)
    if self.stem == "cifar":
      x = QConv(self.widths[0], (3, 3), weight_bits=w_bits,
                per_channel=self.quant.per_channel, dtype=self.dtype,
                name="stem_conv")(x)
      x = nn.relu(batch_norm(train, name="stem_bn")(x))
    else:
      x = QConv(self.widths[0], (7, 7), (2, 2), weight_bits=w_bits,
                per_channel=self.quant.per_channel, dtype=self.dtype,
                name="stem_conv")(x)
      x = nn.relu(batch_norm(train, name="stem_bn")(x))
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    block_cls = BasicBlock if self.block == "basic" else OfficialBlock
    for i, (n, width) in enumerate(zip(self.stage_sizes, self.widths)):
      for j in range(n):
        strides = 2 if i > 0 and j == 0 else 1
        x = block_cls(width, strides, self.quant, dtype=self.dtype,
                      shortcut=self.shortcut,
                      name=f"stage{i + 1}_block{j + 1}")(x, train)
    embedding = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    w_bits, a_bits = self.quant.layer("classifier")
    h = ActQuant(a_bits, self.quant.signed_act(self.block == "official"),
                 name="head_quant")(embedding)
    logits = QDense(self.num_classes, weight_bits=w_bits,
                    per_channel=self.quant.per_channel, dtype=self.dtype,
                    name="head")(h)
    logits = logits.astype(jnp.float32)
    return (logits, embedding) if features else logits


ResNet18 = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2))
ResNet34 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3))
# He et al.'s CIFAR ResNets, depth 6n + 2 (16/32/64 channels, n blocks per
# stage). Their own shortcut is "zero_pad"; the default here is "projection".
CIFAR_RESNET_DEPTHS = {"resnet20": 3, "resnet32": 5, "resnet44": 7,
                       "resnet56": 9}


def cifar_resnet(n: int, **kw) -> ResNet:
  return ResNet(stage_sizes=(n, n, n), widths=(16, 32, 64), stem="cifar", **kw)


ResNet20 = functools.partial(cifar_resnet, 3)
# Test-only: one block per stage, 8/16 channels.
ResNetTiny = functools.partial(ResNet, stage_sizes=(1, 1), widths=(8, 16))
