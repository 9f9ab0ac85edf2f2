r"""ResNet-20 W2/A32 on CIFAR-10, QAT from He et al.'s pretrained ResNet-20.

  python -m acs_jax.pretrained.convert \
      --checkpoint=/path/to/resnet20-12fca82f.th \
      --out=runs/teachers/resnet20_cifar10
  python -m acs_jax.main --config=configs/r20_cifar10_pretrained.py \
      --workdir=runs/r20_w2_acs \
      --config.data.path=/path/to/cifar10.npz \
      --config.teacher.checkpoint=runs/teachers/resnet20_cifar10

The teacher is the real pretrained CIFAR-10 ResNet-20 (option-A shortcuts,
ImageNet input normalisation, both recorded by the import and applied to
teacher and student), fine-tuned for config.teacher.finetune_epochs epochs on
this data; the student is the same network with 2-bit weights in every
block conv (float activations, "w2"), distilled from it (KD) on an ACS
coreset of 10 % re-selected every R = 5 epochs over 10 epochs. Sized for 2
CPU cores. The data path and the teacher are flags: the config names no path.

W2A2 (--config.quant.bits=w2a2) does not fit this budget: its student starts
at chance (10.5 % after calibration) and a 10 % coreset reaches only 34-37 %
after 10 epochs (lr 0.01, batch 128) or 36 % after 4 epochs (lr 0.02, batch
32), against 84 % for W2 after 4 epochs (2026-12-01 pilot, docs/results/).

Expected: the unmodified teacher scores 81.0 % on the JPEG copy of CIFAR-10 (a
JPEG q75 re-encoding of CIFAR-10; 91.7 % on the original pixels), measured
with --config.teacher.finetune_epochs=0 --config.train.epochs=0. The QAT
results and times of this recipe are the sweep's:
configs/sweep_r20_w2_pretrained.py and docs/results/sweep_r20_w2/.
"""
from acs_jax import config_lib


def get_config():
  config = config_lib.get_base_config()
  config.data.source = "npz"
  config.data.name = "cifar10"
  config.model.name = "resnet20"
  config.model.shortcut = "zero_pad"   # He et al.'s option A, as trained
  config.quant.bits = "w2"
  # Fine-tuning the pretrained teacher on the JPEG copy (lr, schedule and
  # batch of config.teacher); config.teacher.epochs is unused.
  config.teacher.update(finetune_epochs=2, batch_size=128, lr=0.01,
                        schedule="cosine", weight_decay=1e-4)
  config.train.update(epochs=10, batch_size=128, optimizer="sgd", lr=0.01,
                      momentum=0.9, nesterov=True, weight_decay=5e-4,
                      schedule="linear", loss="kd", eval_every=2,
                      eval_batch_size=1000)
  config.coreset.update(selector="acs", fraction=0.1, data_update_epochs=5,
                        schedule="cosine", score_batch_size=1000)
  config.log_every_steps = 0
  return config
