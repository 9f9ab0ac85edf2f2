"""acs_jax: adaptive coreset selection for quantization-aware training in JAX."""

__version__ = "0.1.0"
