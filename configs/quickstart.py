r"""Quickstart: the whole procedure on the embedded 8x8 digits, in minutes.

  python -m acs_jax.main --config=configs/quickstart.py --workdir=/tmp/acs_quickstart

Runs, on scikit-learn's bundled 8x8 handwritten digits (1,437 train / 360 test,
no download): a full-precision tiny ResNet teacher (two stages of one basic
block, 8/16 channels), then its 2-bit-weight / 2-bit-activation student
("w2a2") initialised from it and trained with knowledge distillation on an ACS
coreset of 30% of the data, re-selected every 2 epochs.
Expected (2026-12-02, seed 0, 2-vCPU Intel Xeon VM, another job using one
core; jaxlib 0.10.2 with acs_jax's default XLA flags): teacher 0.972 test top-1,
student 0.878 after 8 epochs, about 90 s (most of it XLA compilation). Other
CPUs round floats differently (kernels, XLA flags): expect a few points either
way.
"""
from acs_jax import config_lib


def get_config():
  config = config_lib.get_base_config()
  config.data.source = "digits"
  config.data.name = "digits"
  config.model.name = "resnet_tiny"
  config.quant.bits = "w2a2"
  config.teacher.update(epochs=15, batch_size=64, lr=0.05, schedule="cosine",
                        weight_decay=5e-4)
  config.train.update(epochs=8, batch_size=64, lr=0.02, schedule="linear",
                      eval_batch_size=128)
  config.coreset.update(selector="acs", fraction=0.3, data_update_epochs=2,
                        schedule="cosine")
  config.log_every_steps = 0
  return config
