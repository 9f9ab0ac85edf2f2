r"""Label-noise pair: random vs ACS at 10 % with 20 % symmetric label noise.

  python -m acs_jax.sweep --config=configs/sweep_r20_w2_noise.py \
      --workdir=runs/sweep_r20_w2_noise \
      --config.data.path=/path/to/cifar10.npz \
      --config.teacher.checkpoint=runs/teachers/resnet20_cifar10

The recipe of configs/sweep_r20_w2_pretrained.py with 20 % of the training
labels flipped (uniformly to another class; the test labels stay clean):
the pretrained teacher is fine-tuned on the noisy labels (2 epochs) by the
first run, as a teacher trained on this data would be, then W2 QAT on a
random and on an ACS coreset of 10 %, seed 0. The paper's claim is that ACS,
which scores samples with the student and the teacher, keeps fewer
mislabelled samples than random; the selections in each run's selections/
say how many of the chosen samples are noisy (Dataset.noisy_mask).
Expected: random 82.21 %, ACS 82.33 % (teacher 85.44 %; about 47 minutes on
2 CPU cores, docs/results/sweep_r20_w2_noise/): ACS's epoch-5 coreset is
94 % flipped labels, whose true class the teacher predicts (pure KD).
"""
import os

from acs_jax import config_lib


def get_config():
  config = config_lib.load_config(os.path.join(
      os.path.dirname(os.path.abspath(__file__)), "sweep_r20_w2_pretrained.py"))
  config.sweep.name = "r20_cifar10_w2_noise0.2"
  config.sweep.selectors = ("random", "acs")
  config.sweep.seeds = (0,)
  config.sweep.label_noise = (0.2,)
  config.sweep.full_seeds = ()
  config.sweep.extra = ()
  return config
