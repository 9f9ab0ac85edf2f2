r"""Ablation of the evidence sweep: ACS choosing among the teacher's hits.

  python -m acs_jax.sweep --config=configs/sweep_r20_w2_clean.py \
      --workdir=runs/sweep_r20_w2_clean \
      --config.data.path=/path/to/cifar10.npz \
      --config.teacher.checkpoint=runs/teachers/resnet20_cifar10

The recipe of configs/sweep_r20_w2_pretrained.py (W2 ResNet-20, KD, 10 %, 10
epochs, ACS at R = 5), ACS only, seeds 0, 1, 2, with
coreset.exclude_teacher_errors: the training images whose teacher top-1 is
not their label (5.7 % of CIFAR-10's training set for the 87.9 % teacher)
are taken only where a class has fewer other images than its budget (never,
at 10 %). Every informed ACS coreset of the main sweep is 24-32 % such
images and holds about half of them (docs/results/sweep_r20_w2_ablations.md);
this asks whether ACS's ranking helps once they are out of the pool. Its
control is random 10 % with the same teacher (configs/sweep_r20_w2_r2.py's
random runs: random selects once, so R does not change them). The filter is
the cached teacher softmax that DS already uses: no extra pass.
Expected: the measured results are in docs/results/sweep_r20_w2_clean/.
"""
import os

from acs_jax import config_lib


def get_config():
  config = config_lib.load_config(os.path.join(
      os.path.dirname(os.path.abspath(__file__)), "sweep_r20_w2_pretrained.py"))
  config.sweep.name = "r20_cifar10_w2_clean"
  config.sweep.selectors = ("acs",)
  config.sweep.full_seeds = ()
  config.sweep.extra = ()
  config.coreset.exclude_teacher_errors = True
  return config
