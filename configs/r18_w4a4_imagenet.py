r"""ResNet-18 (ImageNet stem), ImageNet-1k, "w4a4" = 4-bit weights and activations.

  python -m acs_jax.main --config=configs/r18_w4a4_imagenet.py --workdir=gs://.../r18_w4a4 \
      --config.data.data_dir=/path/to/tensorflow_datasets

The paper's headline setting: ACS at fraction 0.1, R = 10, Adam (0.9, 0.999)
lr 1.25e-3 with no weight decay, batch 512, 120 epochs, linear decay, KD from
the full-precision model. The official block (learnable biases + PReLU, the
quantizer inputs signed) reproduces the official model; block convs are
quantized, stem, shortcuts and classifier are float.

The official run distils from a pretrained torchvision ResNet-101; here the
teacher is the FP ResNet-18 trained by stage 1 (or loaded with
--config.teacher.checkpoint=DIR).

Data: TFDS imagenet2012 prepared in array_record format (random access: a
coreset epoch reads only the selected images). If not prepared, put
ILSVRC2012_img_{train,val}.tar in --config.data.manual_dir.
Launch on pods with launch/tpu_pod.sh or launch/gpu_slurm.sbatch.

Expected (paper): 68.39% top-1 at 10% data (+4.24 over the best baseline).
"""
from acs_jax import config_lib


def get_config():
  config = config_lib.get_base_config()
  config.data.source = "tfds"
  config.data.name = "imagenet2012"
  config.model.name = "resnet18"
  config.model.block = "official"
  config.model.stem = "imagenet"
  config.model.dtype = "bfloat16"
  config.quant.bits = "w4a4"
  config.teacher.update(epochs=90, batch_size=512, optimizer="sgd", lr=0.2,
                        schedule="cosine", weight_decay=1e-4)
  config.train.update(epochs=120, batch_size=512, optimizer="adam",
                      lr=1.25e-3, weight_decay=0.0, schedule="linear",
                      loss="kd", eval_batch_size=1024)
  config.coreset.update(selector="acs", fraction=0.1, data_update_epochs=10,
                        schedule="cosine", score_batch_size=1024)
  config.checkpoint.every_epochs = 1
  return config
