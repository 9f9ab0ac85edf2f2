r"""Sweep: ResNet-20 W2/A32 on CIFAR-10, full data vs random vs ACS, 3 epochs.

  python -m acs_jax.sweep --config=configs/sweep_r20_cifar10.py \
      --workdir=runs/sweep_r20 --config.data.path=/path/to/cifar10.npz

Five runs, one teacher (trained 3 epochs by the first run): full data, and
random and ACS (R = 1) coresets at 10 % and 30 %, seed 0; KD, SGD-Nesterov
lr 0.01 linear to zero, batch 128, 3 QAT epochs for every run.
Expected (2026-11-29, 2-core Zen 4 VM, JPEG CIFAR-10 copy): teacher 74.75 %,
full data 74.19 %, random 72.91 / 73.57 %, ACS 73.37 / 73.61 % at 10 / 30 %;
1 h 25 min. Times and discussion: docs/results/sweep_r20_cifar10/.
"""

import ml_collections

from acs_jax import config_lib

TEACHER_EPOCHS = 3
QAT_EPOCHS = 3


def get_config():
  config = config_lib.get_base_config()
  config.data.source = "npz"
  config.data.name = "cifar10"
  config.data.path = ""  # --config.data.path=/path/to/cifar10.npz
  config.model.name = "resnet20"
  config.model.block = "basic"
  config.quant.bits = "w2"
  config.teacher.update(epochs=TEACHER_EPOCHS, batch_size=128, lr=0.1,
                        schedule="cosine", weight_decay=5e-4)
  config.train.update(epochs=QAT_EPOCHS, batch_size=128, optimizer="sgd",
                      lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4,
                      schedule="linear", loss="kd", eval_every=1,
                      eval_batch_size=1000)
  config.coreset.update(selector="acs", fraction=0.1, data_update_epochs=1,
                        schedule="cosine")
  config.log_every_steps = 50

  config.sweep = ml_collections.ConfigDict()
  config.sweep.name = "r20_cifar10_w2"
  config.sweep.selectors = ("full", "random", "acs")
  config.sweep.fractions = (0.1, 0.3)
  config.sweep.seeds = (0,)
  config.sweep.label_noise = (0.0,)
  config.sweep.teacher_per_noise = True
  config.sweep.compilation_cache = True
  return config
