r"""Ablation of the evidence sweep: ACS re-selecting every R = 2 epochs.

  python -m acs_jax.sweep --config=configs/sweep_r20_w2_r2.py \
      --workdir=runs/sweep_r20_w2_r2 \
      --config.data.path=/path/to/cifar10.npz \
      --config.teacher.checkpoint=runs/teachers/resnet20_cifar10

The recipe of configs/sweep_r20_w2_pretrained.py (W2 ResNet-20, KD, 10 %, 10
epochs), random and ACS, seeds 0, 1, 2, with R = 2 instead of 5: ACS selects
at epochs 0, 2, 4, 6 and 8 (cosine beta 1.0, 0.95, 0.81, 0.59, 0.31) instead
of 0 and 5; random selects once, so R does not change it, and its runs here
are the control made with the same teacher, code and machine. It tests the
first reason of docs/results/sweep_r20_w2_analysis.md: with R = 5 the first
half of the run trains on a coreset scored by a 17.8 % student; with R = 2
that lasts 2 epochs and four selections are informed. Each selection is one
student pass over the 50,000 training images, so selection costs about twice
as much wall time as at R = 5.
Expected (2026-12-04, 2-vCPU AMD EPYC, teacher 87.92 %): random 84.93 +- 0.23 %,
ACS 85.21 +- 0.12 % (3 seeds: +0.28, as at R = 5); about 380 s of QAT per
random run and 765 s per ACS run, half of it selection; about an hour in all
(560 s per ACS run, 45 % selection, once tf.data's stalls were fixed).
Details: docs/results/sweep_r20_w2_ablations.md.
"""
import os

from acs_jax import config_lib


def get_config():
  config = config_lib.load_config(os.path.join(
      os.path.dirname(os.path.abspath(__file__)), "sweep_r20_w2_pretrained.py"))
  config.sweep.name = "r20_cifar10_w2_r2"
  config.sweep.selectors = ("random", "acs")
  config.sweep.full_seeds = ()
  config.sweep.extra = ()
  config.coreset.data_update_epochs = 2
  return config
