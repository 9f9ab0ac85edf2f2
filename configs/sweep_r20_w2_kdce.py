r"""Ablation of the evidence sweep: KD + cross-entropy instead of pure KD.

  python -m acs_jax.sweep --config=configs/sweep_r20_w2_kdce.py \
      --workdir=runs/sweep_r20_w2_kdce \
      --config.data.path=/path/to/cifar10.npz \
      --config.teacher.checkpoint=runs/teachers/resnet20_cifar10

The recipe of configs/sweep_r20_w2_pretrained.py (W2 ResNet-20, 10 %, 10
epochs, ACS at R = 5) with the loss 0.5 * KD + 0.5 * CE on the labels
(train.loss="kd+ce", kd_alpha=0.5), random and ACS, seed 0. It tests the
second reason of docs/results/sweep_r20_w2_analysis.md: ACS's informed
selection is a quarter images the teacher gets wrong, which pure KD then
teaches; with the label in the loss those images are corrected, so ACS
should gain more over random than under pure KD.
Expected (2026-12-04, 2-vCPU AMD EPYC, teacher 87.92 %, seed 0): random
85.16 %, ACS 84.17 % (ACS 0.99 below random: the prediction fails); QAT 400 s
(random) and 650 s (ACS), before the tf.data stall fix; 18 min in all.
Details: docs/results/sweep_r20_w2_ablations.md.
"""
import os

from acs_jax import config_lib


def get_config():
  config = config_lib.load_config(os.path.join(
      os.path.dirname(os.path.abspath(__file__)), "sweep_r20_w2_pretrained.py"))
  config.sweep.name = "r20_cifar10_w2_kdce"
  config.sweep.selectors = ("random", "acs")
  config.sweep.seeds = (0,)
  config.sweep.full_seeds = ()
  config.sweep.extra = ()
  config.train.loss = "kd+ce"
  config.train.kd_alpha = 0.5
  return config
