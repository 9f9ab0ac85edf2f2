"""Model zoo: shapes, parameter counts, float equivalence, QAT sanity."""
import chex
import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from acs_jax import models
from acs_jax.quant import QuantConfig

FP = QuantConfig()
W2 = QuantConfig(weight_bits=2)
W4A4 = QuantConfig(weight_bits=4, act_bits=4)


def abstract_apply(model, size, channels=3, batch=2):
  """Logit/embedding shapes without compiling anything (eval_shape)."""
  x = jnp.zeros((batch, size, size, channels))

  def f():
    v = model.init(jax.random.key(0), x, train=False)
    return model.apply(v, x, train=False, features=True), v
  return jax.eval_shape(f)


@pytest.mark.parametrize("name,kw", [
    ("resnet18", {}), ("resnet18", {"block": "official"}), ("resnet34", {}),
    ("resnet34", {"block": "official"}), ("resnet20", {}),
    ("mobilenetv2", {"width_mult": 0.5}), ("resnet_tiny", {})])
@pytest.mark.parametrize("quant", [FP, W2, W4A4], ids=["fp", "w2", "w4a4"])
def test_logit_and_embedding_shapes_cifar(name, kw, quant):
  model = models.build_model(name, num_classes=10, quant=quant, **kw)
  (logits, emb), _ = abstract_apply(model, 32)
  chex.assert_shape(logits, (2, 10))
  assert logits.dtype == jnp.float32 and emb.ndim == 2


@pytest.mark.parametrize("name", ["resnet18", "resnet34"])
def test_logit_shapes_imagenet(name):
  model = models.build_model(name, num_classes=1000, quant=W4A4,
                             image_size=224)
  assert model.stem == "imagenet"
  (logits, emb), _ = abstract_apply(model, 224)
  chex.assert_shape([logits, emb], [(2, 1000), (2, 512)])


def test_parameter_counts_match_known_values():
  # kuangliu/torchvision counts (weights + BN affine, no running stats).
  for name, classes, size, expected in (("resnet18", 10, 32, 11_173_962),
                                        ("resnet18", 1000, 224, 11_689_512),
                                        ("resnet34", 1000, 224, 21_797_672)):
    model = models.build_model(name, num_classes=classes, quant=FP,
                               image_size=size)
    _, v = abstract_apply(model, size)
    assert models.count_params(v["params"]) == expected, name


def test_tiny_model_runs_at_cifar_and_imagenet_sizes():
  for size, stem in ((32, "cifar"), (64, "imagenet")):
    model = models.build_model("resnet_tiny", num_classes=5, quant=W4A4,
                               stem=stem)
    x = jax.random.normal(jax.random.key(0), (2, size, size, 3))
    v = jax.jit(lambda x: model.init(jax.random.key(1), x, train=False))(x)
    logits, emb = jax.jit(lambda v, x: model.apply(
        v, x, train=False, features=True))(v, x)
    chex.assert_shape([logits, emb], [(2, 5), (2, 16)])
    chex.assert_tree_all_finite(logits)


@pytest.mark.parametrize("block", ["basic", "official"])
def test_32_bits_is_the_float_model(block):
  """A model built with 32 bits equals the float model bit for bit."""
  x = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
  float_model = models.build_model("resnet_tiny", num_classes=4, block=block,
                                   quant=FP)
  bits32 = models.build_model(
      "resnet_tiny", num_classes=4, block=block,
      quant=QuantConfig(weight_bits=32, act_bits=32, quantize_stem=True,
                        quantize_shortcut=True, quantize_classifier=True))
  v = float_model.init(jax.random.key(1), x, train=False)
  v32 = bits32.init(jax.random.key(1), x, train=False)
  chex.assert_trees_all_equal_structs(v, v32)
  np.testing.assert_array_equal(float_model.apply(v, x, train=False),
                                bits32.apply(v, x, train=False))


def test_student_from_teacher_and_calibration():
  x = jax.random.normal(jax.random.key(0), (4, 16, 16, 3))
  teacher = models.build_model("resnet_tiny", num_classes=3, quant=FP)
  student = models.build_model("resnet_tiny", num_classes=3, quant=W2)
  tv = teacher.init(jax.random.key(1), x, train=False)
  sv = models.student_from_teacher(student, tv, np.asarray(x), seed=2)
  flat_t = flax.traverse_util.flatten_dict(tv["params"])
  flat_s = flax.traverse_util.flatten_dict(sv["params"])
  steps = {k: v for k, v in flat_s.items() if k[-1] == "w_step"}
  assert len(steps) == 4  # 2 blocks x 2 quantized 3x3 convs
  for path, step in steps.items():
    kernel = np.asarray(flat_t[path[:-1] + ("kernel",)], np.float64)
    np.testing.assert_allclose(step, 2 * np.mean(np.abs(kernel)), rtol=1e-5)
  for path, value in flat_t.items():
    np.testing.assert_array_equal(flat_s[path], value)
  with pytest.raises(ValueError, match="differ"):
    other = models.build_model("resnet_tiny", num_classes=7, quant=FP)
    models.transfer_params(other.init(jax.random.key(0), x)["params"],
                           sv["params"])


def test_bad_names_list_valid_choices():
  with pytest.raises(ValueError, match="resnet18.*resnet20"):
    models.build_model("vgg", num_classes=10, quant=FP)
  with pytest.raises(ValueError, match="official"):
    models.build_model("resnet18", num_classes=10, quant=FP, block="x")
  with pytest.raises(ValueError, match="bfloat16"):
    models.build_model("resnet18", num_classes=10, quant=FP, dtype="fp8")


def test_bf16_compute_keeps_float32_params_and_logits():
  model = models.build_model("resnet_tiny", num_classes=3, quant=W4A4,
                             dtype="bfloat16")
  (logits, _), v = abstract_apply(model, 16)
  assert logits.dtype == jnp.float32
  assert all(l.dtype == jnp.float32 for l in jax.tree.leaves(v))


def test_w2_resnet20_trains_without_nan_and_steps_move():
  model = models.build_model("resnet20", num_classes=10, quant=QuantConfig(
      weight_bits=2, act_bits=2))
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(16, 32, 32, 3)), jnp.float32)
  y = jnp.asarray(rng.integers(0, 10, size=16))
  v = model.init(jax.random.key(0), x, train=False)
  tx = optax.sgd(0.05, momentum=0.9)
  opt = tx.init(v["params"])

  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(params, stats, opt):
    def loss_fn(p):
      logits, upd = model.apply({"params": p, "batch_stats": stats}, x,
                                train=True, mutable=["batch_stats"])
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
      return loss, upd["batch_stats"]
    (loss, stats), g = jax.value_and_grad(loss_fn, has_aux=True)(params)
    upd, opt = tx.update(g, opt, params)
    return optax.apply_updates(params, upd), stats, opt, loss

  params, stats = v["params"], v["batch_stats"]
  losses = []
  for _ in range(4):
    params, stats, opt, loss = step(params, stats, opt)
    losses.append(float(loss))
  assert np.all(np.isfinite(losses))
  chex.assert_tree_all_finite(params)
  flat0 = flax.traverse_util.flatten_dict(v["params"])
  flat1 = flax.traverse_util.flatten_dict(params)
  step_keys = [k for k in flat0 if k[-1] in ("w_step", "step")]
  assert len(step_keys) == 2 * 9 * 2  # 9 blocks x 2 convs x (weight, act)
  moved = [k for k in step_keys
           if not np.allclose(flat0[k], flat1[k], rtol=0, atol=0)]
  assert len(moved) == len(step_keys)
  assert losses[-1] < losses[0]
