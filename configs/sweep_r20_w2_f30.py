r"""The evidence sweep at 30 %: random and ACS, seeds 0, 1, 2.

  python -m acs_jax.sweep --config=configs/sweep_r20_w2_f30.py \
      --workdir=runs/sweep_r20_w2_f30 \
      --config.data.path=/path/to/cifar10.npz \
      --config.teacher.checkpoint=runs/teachers/resnet20_cifar10

The recipe of configs/sweep_r20_w2_pretrained.py (W2 ResNet-20, KD, 10
epochs for every fraction, ACS at R = 5) at the issue's second fraction,
30 %: 15,000 images per epoch. Selection costs what it costs at 10 % (three
passes over the 50,000 training images, the first with the teacher's
softmax) while training costs three times as much, so its share of an ACS
run falls from about 28 % to about 12 %. About 13 minutes per random run and
15 per ACS run on 2 CPU cores; run a seed at a time with
--config.sweep.seeds=N to keep each pair in one sitting.
Expected: the measured results are in docs/results/sweep_r20_w2_f30/.
"""
import os

from acs_jax import config_lib


def get_config():
  config = config_lib.load_config(os.path.join(
      os.path.dirname(os.path.abspath(__file__)), "sweep_r20_w2_pretrained.py"))
  config.sweep.name = "r20_cifar10_w2_f30"
  config.sweep.selectors = ("random", "acs")
  config.sweep.fractions = (0.3,)
  config.sweep.full_seeds = ()
  config.sweep.extra = ()
  return config
