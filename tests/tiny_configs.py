"""The tiny synthetic experiment that the end-to-end tests share.

Synthetic 8x8 images of 4 classes, `resnet_tiny` at W2A4, a teacher and a
QAT stage of a few epochs, ACS at half the data: seconds per run, not
minutes. Tests change what they need with dotted keys, e.g.
`tiny_config(**{"train.epochs": 1, "data.num_train": 96})`.
"""
import ml_collections

from acs_jax import config_lib


def tiny_config(**overrides) -> ml_collections.ConfigDict:
  c = config_lib.get_base_config()
  c.data.update(source="synthetic", name="synthetic", num_train=192,
                num_test=72, num_classes=4)
  c.model.name = "resnet_tiny"
  c.quant.bits = "w2a4"
  c.teacher.update(epochs=3, batch_size=32, lr=0.05, schedule="cosine")
  c.train.update(epochs=4, batch_size=16, lr=0.02, eval_batch_size=32)
  c.coreset.update(selector="acs", fraction=0.5, data_update_epochs=2)
  c.log_every_steps = 0
  for key, value in overrides.items():
    section, field = key.split(".")
    c[section][field] = value
  return c
