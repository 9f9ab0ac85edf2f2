"""MobileNetV2, CIFAR variant, with LSQ-quantized inverted-residual blocks.

As in the paper's official code: the second stage keeps stride 1 for 32x32
inputs, the stem conv (stride 1 at CIFAR size) and the last 1x1 conv stay
float, and every conv inside the inverted-residual blocks (expand 1x1,
depthwise 3x3, project 1x1) has quantized weights. The official model is
weight-only ("w2"); if activation bits are configured, the inputs of the
quantized convs are quantized too (unsigned after ReLU6, signed for the block
input, which is a linear projection).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from acs_jax.models.resnet import batch_norm
from acs_jax.quant import ActQuant, QConv, QDense, QuantConfig

# (expansion t, channels c, repeats n, stride s); stage 2 stride 2 -> 1 for
# 32x32 inputs, as in the official code.
CIFAR_CFG = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2),
             (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


def make_divisible(v: float, divisor: int = 8) -> int:
  """Rounds channels to a multiple of `divisor`, never more than 10% down."""
  new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
  if new_v < 0.9 * v:
    new_v += divisor
  return new_v


class InvertedResidual(nn.Module):
  in_features: int
  out_features: int
  strides: int
  expand_ratio: int
  quant: QuantConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    w_bits, a_bits = self.quant.layer("block")
    conv = lambda *a, **k: QConv(*a, weight_bits=w_bits,  # noqa: E731
                                 per_channel=self.quant.per_channel,
                                 dtype=self.dtype, **k)
    hidden = int(round(self.in_features * self.expand_ratio))
    y = x
    if self.expand_ratio != 1:
      y = ActQuant(a_bits, self.quant.signed_act(True))(y)
      y = conv(hidden, (1, 1), padding="VALID")(y)
      y = jnp.clip(batch_norm(train)(y), 0.0, 6.0)
    y = ActQuant(a_bits, self.quant.signed_act(self.expand_ratio != 1))(y)
    y = conv(hidden, (3, 3), (self.strides, self.strides),
             feature_group_count=hidden)(y)
    y = jnp.clip(batch_norm(train)(y), 0.0, 6.0)
    y = ActQuant(a_bits, self.quant.signed_act(False))(y)
    y = conv(self.out_features, (1, 1), padding="VALID")(y)
    y = batch_norm(train)(y)
    if self.strides == 1 and self.in_features == self.out_features:
      y = x + y
    return y


class MobileNetV2(nn.Module):
  """MobileNetV2 for 32x32 inputs; `width_mult` 0.5 is the official CIFAR-100
  model. Dropout (rate `dropout`) before the classifier needs a "dropout" rng
  in training."""
  num_classes: int
  width_mult: float = 1.0
  dropout: float = 0.2
  quant: QuantConfig = QuantConfig()
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = True, features: bool = False):
    divisor = 4 if self.width_mult == 0.1 else 8
    channels = make_divisible(32 * self.width_mult, divisor)
    last = make_divisible(1280 * max(1.0, self.width_mult), divisor)
    w_bits, a_bits = self.quant.layer("stem")
    x = ActQuant(a_bits, self.quant.signed_act(True), name="stem_quant")(x)
    x = QConv(channels, (3, 3), weight_bits=w_bits,
              per_channel=self.quant.per_channel, dtype=self.dtype,
              name="stem_conv")(x)
    x = jnp.clip(batch_norm(train, name="stem_bn")(x), 0.0, 6.0)
    for i, (t, c, n, s) in enumerate(CIFAR_CFG):
      out = make_divisible(c * self.width_mult, divisor)
      for j in range(n):
        x = InvertedResidual(channels, out, s if j == 0 else 1, t, self.quant,
                             dtype=self.dtype,
                             name=f"stage{i + 1}_block{j + 1}")(x, train)
        channels = out
    x = QConv(last, (1, 1), padding="VALID", dtype=self.dtype,
              name="last_conv")(x)
    x = jnp.clip(batch_norm(train, name="last_bn")(x), 0.0, 6.0)
    embedding = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    h = nn.Dropout(self.dropout, deterministic=not train)(embedding)
    w_bits, a_bits = self.quant.layer("classifier")
    h = ActQuant(a_bits, self.quant.signed_act(False), name="head_quant")(h)
    logits = QDense(self.num_classes, weight_bits=w_bits,
                    per_channel=self.quant.per_channel, dtype=self.dtype,
                    kernel_init=nn.initializers.normal(0.01),
                    name="head")(h).astype(jnp.float32)
    return (logits, embedding) if features else logits
