r"""Sweep: ResNet-20 W2/A32 on CIFAR-10, full data vs random vs ACS, on CPU.

  python -m acs_jax.sweep --config=configs/sweep_r20_cifar10.py \
      --workdir=/tmp/sweep_r20

Five runs, one teacher: full data (fraction 1.0) and random and ACS coresets
at 10 % and 30 %, seed 0. The first run (full_f1.0_s0) trains the FP
ResNet-20 teacher (3 epochs, SGD-Nesterov lr 0.1, cosine, batch 128) and the
other four load it. QAT: 2-bit weights / float activations ("w2"), KD from the
teacher, SGD-Nesterov lr 0.01 linear to zero, batch 128, 3 epochs for every
run (the paper's protocol: same epochs, so a 10 % coreset trains 10 % of the
steps); ACS re-selects every epoch (R = 1: selections at epochs 0, 1, 2 with
the cosine beta 1, 0.87, 0.5), random selects once. Data: the local
CIFAR-10 .npz, ../shared/data/cifar10/cifar10.npz resolved against the
repository root (--config.data.path=... for another copy). Add seeds with
--config.sweep.seeds="(0,1,2)" and label noise with
--config.sweep.label_noise="(0.0,0.2)" (each multiplies the time below).

Measured (2026-11-29, this command, 2-core Zen 4 VM with nothing else
running, jax/jaxlib 0.10.2 with acs_jax's default XLA:CPU flags): 5,095 s
wall (1 h 25 min) for the whole sweep, 177 % CPU.
  teacher, 3 epochs of 390 steps        1,154 s (347-401 s per epoch)
  full-data QAT, 3 epochs               1,389 s train + 50 s eval
  random 10 % / 30 %                      155 / 455 s train
  ACS 10 % / 30 %                         143 / 396 s train + 325 / 298 s
                                          selecting (4 passes over the 50k:
                                          the teacher's softmax once, then the
                                          student at epochs 0, 1, 2; about
                                          75-85 s each)
  evaluation, 10k test images            14-20 s per epoch
Per sample, with tf.data augmenting on the same 2 cores: FP teacher step
7-8 ms, W2 KD step 9.4 ms, scoring forward 1.5 ms. Expected results (as
measured in that run, single seed):
teacher 74.75 %, full-data W2 74.19 %, random 72.91 / 73.57 %, ACS 73.37 /
73.61 % at 10 / 30 % (README, "Sweeps"). Every added seed or noise rate adds
about 2,300 s for the four coreset runs, plus about 1,620 s per seed for the
full-data run (the teacher is trained once per noise rate). About a third
less with --config.teacher.epochs=2 --config.train.epochs=2.
"""
import os

import ml_collections

from acs_jax import config_lib

# The local CIFAR-10 copy lives next to the repository (../shared/...); it is
# resolved here, relative to the repository, so the sweep can start from any
# working directory. --config.data.path=... overrides it.
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_NPZ = os.path.normpath(
    os.path.join(_REPO, "..", "shared", "data", "cifar10", "cifar10.npz"))

TEACHER_EPOCHS = 3
QAT_EPOCHS = 3


def get_config():
  config = config_lib.get_base_config()
  config.data.source = "npz"
  config.data.name = "cifar10"
  config.data.path = DEFAULT_NPZ
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
