r"""ResNet-18 (ImageNet stem), ImageNet-1k, "w4a4" = 4-bit weights and activations.

  python -m acs_jax.pretrained.convert --checkpoint=resnet18-f37072fd.pth \
      --out=/shared/teachers/resnet18_imagenet
  python -m acs_jax.main --config=configs/r18_w4a4_imagenet.py \
      --workdir=/shared/runs/r18_w4a4 \
      --config.data.data_dir=/path/to/tensorflow_datasets \
      --config.teacher.checkpoint=/shared/teachers/resnet18_imagenet

The paper's headline setting: ACS at fraction 0.1, R = 10, Adam (0.9, 0.999)
lr 1.25e-3 with no weight decay, batch 512, 120 epochs, linear decay, KD from
the full-precision model. The official block (learnable biases + PReLU, the
quantizer inputs signed) reproduces the official model; block convs are
quantized, stem, shortcuts and classifier are float.

Teacher: torchvision's pretrained ResNet-18 (its resnet18-f37072fd.pth,
converted once by the first command; it records ImageNet normalisation and
the ImageNet stem). The official run distils from a torchvision ResNet-101,
which acs_jax does not implement (no bottleneck blocks); the teacher here is
the FP ResNet-18 the student starts from. Without --config.teacher.checkpoint
stage 1 trains one (90 epochs). The workdir and the teacher must be on a
filesystem every host can read and write (a local path on one machine, a
shared mount such as NFS or GCS-FUSE on pods): paths go through os / orbax,
and a gs:// URL is not supported for the workdir.

Data: TFDS imagenet2012 prepared in array_record format (random access: a
coreset epoch reads only the selected images). If not prepared, put
ILSVRC2012_img_{train,val}.tar in --config.data.manual_dir.
Launch on pods with launch/tpu_pod.sh or launch/gpu_slurm.sbatch.

Expected (paper): 68.39% top-1 at 10% data (+4.24 over the best baseline);
not reproduced here (no ImageNet on these machines; the path runs end to end
in tests/imagenet_test.py on a small dataset in the imagenet2012 layout).
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
