r"""Evidence sweep: W2 ResNet-20 on CIFAR-10 from the pretrained teacher.

  python -m acs_jax.pretrained.convert \
      --checkpoint=/path/to/resnet20-12fca82f.th \
      --out=runs/teachers/resnet20_cifar10
  python -m acs_jax.sweep --config=configs/sweep_r20_w2_pretrained.py \
      --workdir=runs/sweep_r20_w2 \
      --config.data.path=/path/to/cifar10.npz \
      --config.teacher.checkpoint=runs/teachers/resnet20_cifar10

The recipe of configs/r20_cifar10_pretrained.py (teacher: He et al.'s
pretrained ResNet-20, fine-tuned 2 epochs on this JPEG copy of CIFAR-10 by
the first run and shared by all; student: 2-bit weights, float
activations, KD, SGD-Nesterov lr 0.01
linear to zero, batch 128, 10 epochs for every fraction, the paper's
protocol) over: random, ACS and three of the paper's strongest baselines
(EL2N, moderate, k-center greedy) at 10 %, seeds 0, 1, 2; then random at
15 %, the fraction whose run costs about as much wall time as ACS at 10 %
(ACS pays for its score passes), and full-data QAT (seed 0 only: it costs
ten 10 % runs).

R = 5: ACS selects at epochs 0 and 5, each one student forward pass over the
50,000 training images, plus one teacher pass whose softmax is cached. On 2
CPU cores a pass costs ~1.5 ms per image against ~10 ms per image for a
training step, so the 3 passes (~225 s) are about a quarter of an ACS run
(~10 x 5,000 training images + 5 evaluations of 10,000); R = 1 would make
selection cost more than training, as in the earlier 3-epoch sweep.
The sweep resumes where it stopped: rerun the same command.
Label noise (the paper's robustness claim): configs/sweep_r20_w2_noise.py.
Expected: the measured table and plots are in docs/results/ and the README.
"""
import os

import ml_collections

from acs_jax import config_lib


def get_config():
  config = config_lib.load_config(os.path.join(
      os.path.dirname(os.path.abspath(__file__)), "r20_cifar10_pretrained.py"))
  config.sweep = ml_collections.ConfigDict()
  config.sweep.name = "r20_cifar10_w2_pretrained"
  config.sweep.selectors = ("random", "acs", "el2n", "moderate", "kcenter")
  config.sweep.fractions = (0.1,)
  config.sweep.seeds = (0, 1, 2)
  config.sweep.label_noise = (0.0,)
  config.sweep.full_seeds = (0,)
  config.sweep.extra = (("random", 0.15), ("full", 1.0))
  config.sweep.teacher_per_noise = True
  config.sweep.compilation_cache = True
  return config
