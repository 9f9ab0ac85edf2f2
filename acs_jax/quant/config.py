"""Frozen, hashable quantization config, built from the ml_collections config.

Bit-width names follow the paper's "W/A" notation:
  "w2"   = 2-bit weights, 32-bit (float) activations (the paper's "2/32");
  "w4a4" = 4-bit weights and 4-bit activations;
  "fp"   = no quantization (the full-precision teacher).
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any

from acs_jax.quant.lsq import FLOAT_BITS

SUPPORTED_BITS = (2, 3, 4, 5, 6, 7, 8, FLOAT_BITS)
_NAME_RE = re.compile(r"^w(\d+)(?:a(\d+))?$")


@dataclasses.dataclass(frozen=True, kw_only=True)
class QuantConfig:
  """Which layers are quantized and how. Hashable: safe as a jit static.

  Attributes:
    weight_bits: bit width of quantized conv/dense kernels (32 = float).
    act_bits: bit width of the activations entering quantized layers.
    act_signed: None picks per quantizer from where it sits (unsigned after a
      ReLU, signed where the input can be negative, e.g. after PReLU and
      learnable biases); True/False forces it everywhere.
    per_channel: one weight step size per output channel instead of one per
      tensor (the paper's default is per tensor).
    quantize_blocks: the convs inside residual/inverted-residual blocks.
    quantize_stem: the first conv.
    quantize_shortcut: the 1x1 projection shortcuts.
    quantize_classifier: the final dense layer.
  """
  weight_bits: int = FLOAT_BITS
  act_bits: int = FLOAT_BITS
  act_signed: bool | None = None
  per_channel: bool = False
  quantize_blocks: bool = True
  quantize_stem: bool = False
  quantize_shortcut: bool = False
  quantize_classifier: bool = False

  def __post_init__(self):
    for field in ("weight_bits", "act_bits"):
      value = getattr(self, field)
      if value not in SUPPORTED_BITS:
        raise ValueError(
            f"config.quant.{field}={value!r} is not supported; valid values: "
            f"{', '.join(map(str, SUPPORTED_BITS))} (32 = float)")

  @property
  def is_float(self) -> bool:
    return self.weight_bits == FLOAT_BITS and self.act_bits == FLOAT_BITS

  @property
  def name(self) -> str:
    return bits_name(self.weight_bits, self.act_bits)

  def as_float(self) -> "QuantConfig":
    """The same layer selection with quantization switched off (teacher)."""
    return dataclasses.replace(self, weight_bits=FLOAT_BITS,
                               act_bits=FLOAT_BITS)

  def layer(self, kind: str) -> tuple[int, int]:
    """(weight_bits, act_bits) for a layer of `kind`.

    kind is one of "block", "stem", "shortcut", "classifier".
    """
    enabled = {
        "block": self.quantize_blocks,
        "stem": self.quantize_stem,
        "shortcut": self.quantize_shortcut,
        "classifier": self.quantize_classifier,
    }[kind]
    if not enabled:
      return FLOAT_BITS, FLOAT_BITS
    return self.weight_bits, self.act_bits

  def signed_act(self, default: bool) -> bool:
    return default if self.act_signed is None else self.act_signed


def parse_bits(name: str) -> tuple[int, int]:
  """Parses "w2" -> (2, 32), "w4a4" -> (4, 4), "fp" -> (32, 32)."""
  name = str(name).strip().lower()
  if name in ("fp", "fp32", "float", "w32", "w32a32"):
    return FLOAT_BITS, FLOAT_BITS
  m = _NAME_RE.match(name)
  if not m:
    raise ValueError(
        f"config.quant.bits={name!r} is not a bit-width name; valid forms: "
        "'fp', 'w<B>' (weights only, e.g. 'w2') or 'w<B>a<B>' (e.g. 'w4a4'), "
        f"B in {', '.join(map(str, SUPPORTED_BITS))}")
  w = int(m.group(1))
  a = int(m.group(2)) if m.group(2) else FLOAT_BITS
  for what, b in (("weight", w), ("activation", a)):
    if b not in SUPPORTED_BITS:
      raise ValueError(
          f"config.quant.bits={name!r}: {what} bit width {b} is not "
          f"supported; valid values: {', '.join(map(str, SUPPORTED_BITS))}")
  return w, a


def bits_name(weight_bits: int, act_bits: int) -> str:
  if weight_bits == FLOAT_BITS and act_bits == FLOAT_BITS:
    return "fp"
  if act_bits == FLOAT_BITS:
    return f"w{weight_bits}"
  return f"w{weight_bits}a{act_bits}"


_ACT_SIGNED = {"auto": None, "signed": True, "unsigned": False,
               None: None, True: True, False: False}


def from_config(cfg: Any) -> QuantConfig:
  """Builds the QuantConfig from `config.quant` (a ConfigDict or mapping).

  Fields: bits (name, see parse_bits), act_signed ("auto" | "signed" |
  "unsigned"), per_channel, quantize_blocks, quantize_stem,
  quantize_shortcut, quantize_classifier. Missing fields take the defaults
  of the official implementation: block convs quantized, stem, shortcuts and
  classifier float.
  """
  get = cfg.get if hasattr(cfg, "get") else lambda k, d=None: getattr(cfg, k, d)
  w, a = parse_bits(get("bits", "fp"))
  act_signed = get("act_signed", "auto")
  if act_signed not in _ACT_SIGNED:
    raise ValueError(
        f"config.quant.act_signed={act_signed!r} is not valid; valid values: "
        "'auto', 'signed', 'unsigned'")
  return QuantConfig(
      weight_bits=w, act_bits=a, act_signed=_ACT_SIGNED[act_signed],
      per_channel=bool(get("per_channel", False)),
      quantize_blocks=bool(get("quantize_blocks", True)),
      quantize_stem=bool(get("quantize_stem", False)),
      quantize_shortcut=bool(get("quantize_shortcut", False)),
      quantize_classifier=bool(get("quantize_classifier", False)))
