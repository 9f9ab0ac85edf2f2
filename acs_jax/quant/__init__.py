"""LSQ quantization: the custom_vjp quantizer, its config and Flax layers."""
from acs_jax.quant.config import QuantConfig, bits_name, from_config, parse_bits
from acs_jax.quant.layers import ActQuant, QConv, QDense, calibrate
from acs_jax.quant.lsq import (FLOAT_BITS, default_grad_scale, init_step,
                               is_quantized, lsq_quantize, qrange)

__all__ = [
    "ActQuant", "FLOAT_BITS", "QConv", "QDense", "QuantConfig", "bits_name",
    "calibrate", "default_grad_scale", "from_config", "init_step",
    "is_quantized", "lsq_quantize", "parse_bits", "qrange",
]
