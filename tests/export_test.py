"""acs_jax.export: integer codes, packing, the integer forward, the command.

* Codes: every exported weight code lies in [Qn, Qp]; packing round-trips
  exactly at every bit width; codes * step is lsq_quantize's kernel bit for
  bit.
* The integer primitives against float64/int64 NumPy references.
* Equivalence: the integer forward's logits equal the Flax (fake-quant)
  model's eval logits within 1e-4 of the largest |logit|, same argmax, for
  the basic and official blocks at W2A2, W4A4 and W2 (float activations),
  per-channel steps, quantized stem/shortcut/classifier, zero-pad shortcuts,
  the ImageNet stem and a (shortened) MobileNetV2.
* The file: readable with NumPy + json alone; truncated, corrupt or
  inconsistent files are refused with one message; nothing is overwritten.
* End to end: a tiny run, exported and evaluated, gives the run's student
  top-1 exactly; bad workdirs are one clear message each.
"""
import json
import os
import shutil
import subprocess
import sys

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from acs_jax import models, quant
from acs_jax.export import exporter
from acs_jax.export import format as fmt
from acs_jax.export import int_forward

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGE = (8, 8, 3)


# ---------------------------------------------------------------------------
# Helpers: a student with random (but plausible) weights and fitted steps.


def _randomize(variables, seed):
  """BatchNorm statistics/affines, biases and PReLU slopes drawn at random
  (they start at 0 / 1 / 0.25, which would hide mistakes in the glue)."""
  rng = np.random.default_rng(seed)
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(variables))
  draw = {"mean": lambda s: rng.normal(0, 0.2, s),
          "var": lambda s: rng.uniform(0.5, 1.5, s),
          "scale": lambda s: rng.uniform(0.5, 1.5, s),
          "bias": lambda s: rng.normal(0, 0.1, s),
          "slope": lambda s: rng.uniform(0.0, 0.5, s)}
  out = {k: np.asarray(draw[k[-1]](np.shape(v)) if k[-1] in draw else v,
                       np.float32) for k, v in flat.items()}
  # Pooled features share a large common part; centred classifier columns
  # let the per-sample part decide the class (not one class for all).
  head = ("params", "head", "kernel")
  out[head] = out[head] - out[head].mean(axis=0, keepdims=True)
  return flax.traverse_util.unflatten_dict(out)


def images(n, seed):
  """Random images whose per-channel offset and contrast vary by sample (pure
  noise would pool to nearly the same features, and one argmax, for all)."""
  rng = np.random.default_rng(seed)
  return (rng.normal(size=(n, *IMAGE)) * rng.uniform(0.5, 2, (n, 1, 1, 3))
          + rng.normal(0, 1, (n, 1, 1, 3))).astype(np.float32)


def make_student(bits, *, name="resnet_tiny", seed=0, **kw):
  """(model, variables, calibration batch): steps fitted to the weights and
  to the activations of that batch (as a student starts from its teacher)."""
  q = {k: kw.pop(k) for k in list(kw) if k.startswith(("quantize_", "per_"))}
  qc = quant.from_config({"bits": bits, **q})
  model = models.build_model(name, num_classes=10, quant=qc, image_size=8,
                             **kw)
  x = images(16, seed)
  # Op by op (not jitted): the tests build over a dozen models whose ops
  # repeat, and eager ops are compiled once per shape, a program once per
  # model.
  variables = model.init(jax.random.key(seed), jnp.zeros((2, *IMAGE)),
                         train=False)
  variables = _randomize(variables, seed + 1)
  variables = quant.calibrate(model, variables, jnp.asarray(x))
  return model, jax.tree.map(np.asarray, variables), x


def export(model, variables, name="resnet_tiny"):
  return exporter.export_variables(
      model, variables, name=name, image_shape=IMAGE,
      input_info={"mean": [0.0] * 3, "std": [1.0] * 3},
      quant_info={}, source={})


def fake_logits(model, variables, x):
  return np.asarray(model.apply(variables, x, train=False))  # (op by op)


def int_logits(manifest, arrays, x, impl="auto"):
  params = int_forward.prepare(manifest, arrays)
  return np.asarray(jax.jit(int_forward.make_forward(manifest, impl))(
      params, x))


def relative_error(a, ref):
  return float(np.max(np.abs(a - ref)) / np.max(np.abs(ref)))


# ---------------------------------------------------------------------------
# Packing.


@pytest.mark.parametrize("bits", fmt.PACK_BITS)
def test_pack_unpack_round_trip_every_width(bits):
  rng = np.random.default_rng(bits)
  qn, qp = fmt.qrange(bits, True)
  for count in (0, 1, 3, 7, 8, 9, 31, 1000, 4097):
    codes = rng.integers(qn, qp + 1, size=count)
    codes[:2] = [qn, qp][:count]  # both ends of the range
    packed = fmt.pack_codes(codes, bits)
    assert packed.dtype == np.uint8
    assert packed.shape == (fmt.packed_size(count, bits),)
    assert packed.size == -(-count * bits // 8)
    np.testing.assert_array_equal(fmt.unpack_codes(packed, bits, count),
                                  codes)
    assert fmt.padding_bits_are_zero(packed, bits, count)


def test_pack_layout_is_the_documented_bit_stream():
  # 2 bits, two's complement fields, first code in the lowest bits:
  # [-2, -1, 0, 1] -> fields [2, 3, 0, 1] -> 2 | 3<<2 | 0<<4 | 1<<6 = 78.
  np.testing.assert_array_equal(fmt.pack_codes([-2, -1, 0, 1], 2), [78])
  # 4 bits: [-8, 7] -> fields [8, 7] -> 8 | 7<<4 = 120.
  np.testing.assert_array_equal(fmt.pack_codes([-8, 7], 4), [120])
  # 3 bits across a byte boundary: [1, 2, -1] -> stream 001 010 111 (LSB
  # first: 1 0 0 | 0 1 0 | 1 1 1) -> byte 0 = 0b11010001, byte 1 = 0b1.
  np.testing.assert_array_equal(fmt.pack_codes([1, 2, -1], 3),
                                [0b11010001, 0b1])
  # 8 bits: the int8 codes themselves.
  np.testing.assert_array_equal(fmt.pack_codes([-128, -1, 127], 8).view(
      np.int8), [-128, -1, 127])


def test_pack_refuses_codes_out_of_range_and_bad_widths():
  with pytest.raises(fmt.ExportError, match=r"outside the 2-bit range"):
    fmt.pack_codes([0, 2], 2)
  with pytest.raises(fmt.ExportError, match="valid values: 2, 3, 4"):
    fmt.pack_codes([0], 1)
  with pytest.raises(fmt.ExportError, match="cannot hold 5 codes"):
    fmt.unpack_codes(np.zeros(1, np.uint8), 2, 5)


# ---------------------------------------------------------------------------
# Codes of an exported student.


@pytest.fixture(scope="module")
def w2a2_export():
  model, variables, x = make_student("w2a2", block="official")
  manifest, arrays = export(model, variables)
  return model, variables, x, manifest, arrays


def test_codes_in_range_and_dequantize_to_the_fake_quant_kernels(w2a2_export):
  _, variables, _, manifest, arrays = w2a2_export
  flat = {"/".join(k): v for k, v in flax.traverse_util.flatten_dict(
      variables["params"]).items()}
  quantized = {k: l for k, l in manifest["layers"].items() if l["weight"]}
  assert len(quantized) == 4  # the block convs; stem/shortcut/head float
  for path, layer in quantized.items():
    w = layer["weight"]
    assert (w["qn"], w["qp"]) == (-2, 1) and w["bits"] == 2
    codes = fmt.unpack_codes(arrays[w["codes_array"]], 2, w["count"])
    assert codes.min() >= w["qn"] and codes.max() <= w["qp"]
    assert len(np.unique(codes)) == 4  # the steps fit: all codes in use
    codes = codes.reshape(layer["kernel_shape"])
    step = arrays[w["step_array"]]
    dequant = codes.astype(np.float32) * step
    fake = np.asarray(quant.lsq_quantize(jnp.asarray(flat[f"{path}/kernel"]),
                                         step, 2, True))
    # Bit for bit, except that lsq_quantize's round() keeps the sign of a
    # small negative weight's zero (-0.0) and an integer code cannot (the
    # two zeros are equal, and equal in every product and sum).
    np.testing.assert_array_equal(dequant.view(np.uint32),
                                  (fake + np.float32(0.0)).view(np.uint32))
  for path, q in manifest["act_quant"].items():
    assert (q["qn"], q["qp"]) == (-2, 1) and q["signed"]  # official: signed
    assert np.float32(q["step"]) == flat[f"{path}/step"]
  # Float parts are the trained arrays, unchanged.
  np.testing.assert_array_equal(arrays["stem_conv/kernel"],
                                flat["stem_conv/kernel"])
  np.testing.assert_array_equal(
      arrays["stage1_block1/bn1/mean"],
      variables["batch_stats"]["stage1_block1"]["bn1"]["mean"])


def test_a_changed_code_changes_the_logits(w2a2_export):
  """The equivalence tests below can fail: one weight code off by one moves
  the logits far beyond their tolerance."""
  model, variables, x, manifest, arrays = w2a2_export
  ref = fake_logits(model, variables, x)
  assert relative_error(int_logits(manifest, arrays, x), ref) < 1e-4
  w = manifest["layers"]["stage2_block1/conv2"]["weight"]
  codes = fmt.unpack_codes(arrays[w["codes_array"]], 2, w["count"])
  codes[np.argmax(codes == 0)] = 1
  broken = {**arrays, w["codes_array"]: fmt.pack_codes(codes, 2)}
  assert relative_error(int_logits(manifest, broken, x), ref) > 1e-3


# ---------------------------------------------------------------------------
# Integer primitives against NumPy references.


def _conv_reference(a, w, strides, padding, groups):
  """int64 direct convolution, NHWC x HWIO, grouped."""
  a = np.pad(a.astype(np.int64), ((0, 0), *padding, (0, 0)))
  kh, kw, cig, cout = w.shape
  n, hp, wp, _ = a.shape
  ho, wo = (hp - kh) // strides[0] + 1, (wp - kw) // strides[1] + 1
  out = np.zeros((n, ho, wo, cout), np.int64)
  cog = cout // groups
  for o in range(cout):
    g = o // cog
    for i in range(kh):
      for j in range(kw):
        win = a[:, i:i + (ho - 1) * strides[0] + 1:strides[0],
                j:j + (wo - 1) * strides[1] + 1:strides[1],
                g * cig:(g + 1) * cig]
        out[..., o] += win @ w[i, j, :, o].astype(np.int64)
  return out


@pytest.mark.parametrize("a_bits,a_signed,w_bits,strides,groups", [
    (2, False, 2, (1, 1), 1), (4, True, 4, (2, 2), 1), (8, False, 8, (1, 1), 1),
    (3, False, 5, (2, 2), 4), (4, False, 2, (1, 1), 8)])
def test_int_conv_matches_int64_and_float64_references(a_bits, a_signed,
                                                       w_bits, strides, groups):
  rng = np.random.default_rng(a_bits * 10 + w_bits)
  cin, cout = 8, 8
  an, ap = fmt.qrange(a_bits, a_signed)
  wn, wp = fmt.qrange(w_bits, True)
  a = rng.integers(an, ap + 1, size=(2, 7, 7, cin))
  w = rng.integers(wn, wp + 1, size=(3, 3, cin // groups, cout))
  padding = ((1, 1), (1, 1))
  ref = _conv_reference(a, w, strides, padding, groups)
  a_dtype = np.int8 if ap <= 127 else np.int32
  for impl in ("conv", "patches"):
    out = int_forward.int_conv(jnp.asarray(a, a_dtype), jnp.asarray(w, np.int8),
                               strides, padding, groups, impl)
    assert out.dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(out), ref)
  # Scaled once by the step product == the float64 conv of the dequantized
  # operands (up to float32 rounding).
  s_a, s_w = np.float32(0.37), np.float32(0.021)
  scaled = np.asarray(out, np.float32) * (s_a * s_w)
  ref64 = _conv_reference(a, w, strides, padding, groups) * (
      np.float64(s_a) * np.float64(s_w))
  np.testing.assert_allclose(scaled, ref64, rtol=1e-6, atol=1e-7)


def test_act_codes_and_int_dense_match_references():
  rng = np.random.default_rng(3)
  x = rng.normal(size=(8, 16)).astype(np.float32) * 2
  step = np.float32(0.3)
  for bits, signed in ((2, False), (4, True), (8, False), (8, True)):
    qn, qp = fmt.qrange(bits, signed)
    codes = np.asarray(int_forward.act_codes(jnp.asarray(x), step, bits,
                                             signed))
    assert codes.dtype == (np.int32 if qp > 127 else np.int8)
    np.testing.assert_array_equal(codes, np.clip(np.round(x / step), qn, qp))
    w = rng.integers(-8, 8, size=(16, 5)).astype(np.int8)
    out = int_forward.int_dense(jnp.asarray(codes), jnp.asarray(w))
    assert out.dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(out),
                                  codes.astype(np.int64) @ w.astype(np.int64))


# ---------------------------------------------------------------------------
# Equivalence with the fake-quantized model.

EQUIVALENCE = {
    "basic_w2a2": ("w2a2", {}),
    "basic_w4a4": ("w4a4", {}),
    "basic_w2": ("w2", {}),
    "official_w2a2": ("w2a2", {"block": "official"}),
    "official_w4a4": ("w4a4", {"block": "official"}),
    "official_w2": ("w2", {"block": "official"}),
    "basic_w4a4_per_channel_all_layers": (
        "w4a4", {"per_channel": True, "quantize_stem": True,
                 "quantize_shortcut": True, "quantize_classifier": True}),
    "official_w3a3_zero_pad_all_layers": (
        "w3a3", {"block": "official", "shortcut": "zero_pad",
                 "quantize_stem": True, "quantize_classifier": True}),
    "basic_w8a8_imagenet_stem_zero_pad": (
        "w8a8", {"stem": "imagenet", "shortcut": "zero_pad"}),
    "official_w32a4_activations_only": ("w32a4", {"block": "official"}),
}


@pytest.mark.parametrize("case", list(EQUIVALENCE))
def test_integer_forward_equals_fake_quant(case):
  bits, kw = EQUIVALENCE[case]
  model, variables, _ = make_student(bits, **kw)
  manifest, arrays = export(model, variables)
  w_bits, a_bits = quant.parse_bits(bits)
  layers = manifest["layers"].values()
  # What each case exercises really is integer x integer (or one side).
  quantized = [l for l in layers if l["weight"] or l["input_quant"]]
  assert len(quantized) >= 4
  assert all(bool(l["input_quant"]) == (a_bits < 32)
             and bool(l["weight"]) == (w_bits < 32) for l in quantized)
  if kw.get("per_channel"):
    assert all(l["weight"]["per_channel"] for l in layers if l["weight"])
  x = images(32, 7)
  ref = fake_logits(model, variables, x)
  got = int_logits(manifest, arrays, x)
  assert relative_error(got, ref) < 1e-4, relative_error(got, ref)
  np.testing.assert_array_equal(np.argmax(got, -1), np.argmax(ref, -1))
  # Not a constant model: the logits move with the input.
  assert np.ptp(ref, axis=0).max() > 0.05 * np.abs(ref).max()


def test_conv_impls_give_identical_logits(w2a2_export):
  _, _, x, manifest, arrays = w2a2_export
  np.testing.assert_array_equal(int_logits(manifest, arrays, x, "conv"),
                                int_logits(manifest, arrays, x, "patches"))


@pytest.mark.parametrize("bits", ["w4a4", "w2"])
def test_mobilenetv2_integer_forward_equals_fake_quant(bits, monkeypatch):
  from acs_jax.models import mobilenetv2  # pylint: disable=g-import-not-at-top
  # Three stages instead of seven (same block kinds: expand ratio 1 and 6,
  # stride 2 depthwise, residual), to keep compilation short.
  monkeypatch.setattr(mobilenetv2, "CIFAR_CFG",
                      ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 1, 1)))
  model, variables, x = make_student(bits, name="mobilenetv2",
                                     width_mult=0.25)
  manifest, arrays = export(model, variables, name="mobilenetv2")
  assert [b["residual"] for b in manifest["blocks"]] == [True, False, True,
                                                          True]
  depthwise = manifest["layers"]["stage2_block1/QConv_1"]
  assert depthwise["groups"] == depthwise["kernel_shape"][-1] > 1
  ref = fake_logits(model, variables, x)
  got = int_logits(manifest, arrays, x)
  assert relative_error(got, ref) < 1e-4
  np.testing.assert_array_equal(np.argmax(got, -1), np.argmax(ref, -1))


# ---------------------------------------------------------------------------
# The file.


def test_file_round_trip_and_readable_with_numpy_alone(w2a2_export, tmp_path):
  model, variables, x, manifest, arrays = w2a2_export
  path = fmt.write_export(str(tmp_path / "s.npz"), manifest, arrays)
  got_manifest, got_arrays = fmt.read_export(path)
  assert got_manifest["layers"] == manifest["layers"]
  assert set(got_arrays) == set(arrays)
  for k, v in arrays.items():
    np.testing.assert_array_equal(got_arrays[k], v)
  assert not [f for f in os.listdir(tmp_path) if "partial" in f]
  # A reader that knows only the documented format: NumPy, json, and the
  # bit order of docs/export.md.
  reader = r"""
import json, sys
import numpy as np
f = np.load(sys.argv[1])
m = json.loads(f["manifest"].tobytes())
layer = m["layers"]["stage1_block1/conv1"]
w = layer["weight"]
bits = np.unpackbits(f[w["codes_array"]], bitorder="little")
fields = bits[:w["count"] * w["bits"]].reshape(-1, w["bits"])
u = (fields * (1 << np.arange(w["bits"]))).sum(1)
codes = np.where(u >= 2 ** (w["bits"] - 1), u - 2 ** w["bits"], u)
kernel = codes.reshape(layer["kernel_shape"]) * f[w["step_array"]]
np.save(sys.argv[2], kernel.astype(np.float32))
assert not [k for k in sys.modules if k.startswith(("acs_jax", "jax"))]
"""
  out = tmp_path / "kernel.npy"
  r = subprocess.run([sys.executable, "-c", reader, path, str(out)],
                     capture_output=True, text=True, check=False)
  assert r.returncode == 0, r.stderr
  step = arrays["stage1_block1/conv1/w_step"]
  fake = quant.lsq_quantize(jnp.asarray(
      variables["params"]["stage1_block1"]["conv1"]["kernel"]), step, 2, True)
  np.testing.assert_array_equal(np.load(out), np.asarray(fake))


def _rewrite(src, dst, change):
  """A copy of the export `src` with `change(manifest, arrays)` applied."""
  with np.load(src) as f:
    data = {k: f[k] for k in f.files}
  manifest = json.loads(data.pop("manifest").tobytes())
  change(manifest, data)
  text = json.dumps(manifest).encode()
  with open(dst, "wb") as f:
    np.savez(f, manifest=np.frombuffer(text, np.uint8), **data)
  return dst


def test_damaged_files_are_refused_with_one_message(w2a2_export, tmp_path):
  _, _, _, manifest, arrays = w2a2_export
  good = fmt.write_export(str(tmp_path / "good.npz"), manifest, arrays)
  raw = open(good, "rb").read()
  cases = {}
  cases["truncated"] = (raw[:len(raw) // 2], "truncated or corrupt")
  flipped = bytearray(raw)
  pos = raw.index(b"stem_conv/kernel.npy") + 400  # inside stored data
  flipped[pos] ^= 0xFF
  cases["flipped_byte"] = (bytes(flipped), "truncated or corrupt")
  cases["not_npz"] = (b"hello", "truncated or corrupt")
  for name, (content, match) in cases.items():
    path = tmp_path / f"{name}.npz"
    path.write_bytes(content)
    with pytest.raises(fmt.ExportError, match=match):
      fmt.read_export(str(path))

  def version(m, a):
    m["format_version"] = 99

  def missing(m, a):
    del a["stem_bn/var"]

  def shape(m, a):
    a["stem_bn/var"] = np.zeros(3, np.float32)

  def step(m, a):
    m["act_quant"]["stage1_block1/quan1"]["step"] = 1.0

  def codes(m, a):
    a["stage1_block1/conv1/kernel_codes"] = a[
        "stage1_block1/conv1/kernel_codes"][:-1]
    m["arrays"]["stage1_block1/conv1/kernel_codes"]["shape"][0] -= 1

  for change, match in ((version, "format_version=99; this reader supports "
                         "version 1"),
                        (missing, "arrays missing: stem_bn/var"),
                        (shape, r"array 'stem_bn/var' is float32 \[3\], the "
                         r"manifest says float32 \[8\]"),
                        (step, "the manifest's step differs"),
                        (codes, "packed codes .* not 144 bytes for 576 "
                         "codes of 2 bits")):
    path = _rewrite(good, str(tmp_path / f"{change.__name__}.npz"), change)
    with pytest.raises(fmt.ExportError, match=match):
      fmt.read_export(path)
  plain = tmp_path / "plain.npz"
  np.savez(plain, a=np.zeros(2))
  with pytest.raises(fmt.ExportError, match="not an acs_jax export"):
    fmt.read_export(str(plain))
  with pytest.raises(fmt.ExportError, match="no such export file"):
    fmt.read_export(str(tmp_path / "absent.npz"))


def test_existing_out_is_never_overwritten(w2a2_export, tmp_path):
  _, _, _, manifest, arrays = w2a2_export
  out = tmp_path / "taken.npz"
  out.write_text("keep me")
  with pytest.raises(fmt.ExportError, match="already exists; refusing"):
    fmt.write_export(str(out), manifest, arrays)
  assert out.read_text() == "keep me"
  with pytest.raises(fmt.ExportError, match="does not exist"):
    fmt.write_export(str(tmp_path / "no" / "dir.npz"), manifest, arrays)
  assert sorted(os.listdir(tmp_path)) == ["taken.npz"]


# ---------------------------------------------------------------------------
# End to end: the suite's shared tiny run (tiny_config(), conftest.py).


def _listing(root):
  return sorted(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs)


def test_exported_run_gives_its_top1(tiny_run, tmp_path):
  from acs_jax.export import tool  # pylint: disable=g-import-not-at-top
  workdir, summary = tiny_run
  before = _listing(workdir)
  report = tool.export_and_evaluate(workdir, str(tmp_path / "last.npz"))
  assert report["count"] == 72  # the tiny test split, each sample once
  assert report["top1"] == summary["student_final_test_top1"]
  assert report["fake_top1"] == report["top1"]
  assert report["reported_top1"] == summary["student_final_test_top1"]
  assert report["argmax_differs"] == 0 and report["max_rel_diff"] < 1e-4
  assert report["file_bytes"] == os.path.getsize(tmp_path / "last.npz")
  # 2-bit block convs: the arrays are far smaller than the fp32 model.
  assert report["arrays_bytes"] * 4 < report["fp32_bytes"]
  lines = tool.format_report(report)
  assert any(l.startswith("integer top-1:") for l in lines)
  best = tool.export_and_evaluate(workdir, str(tmp_path / "best.npz"),
                                  checkpoint="best")
  assert best["top1"] == summary["student_best_test_top1"]
  again = tool.evaluate_file(workdir, str(tmp_path / "best.npz"))
  assert again["top1"] == best["top1"]
  assert _listing(workdir) == before  # the run is only read


def test_bad_workdirs_are_one_clear_message(tiny_run, tmp_path):
  from acs_jax.export import tool  # pylint: disable=g-import-not-at-top
  workdir, _ = tiny_run
  config = json.load(open(os.path.join(workdir, "config.json")))

  def run_dir(name, config_changes=None, summary=True, checkpoints=True):
    d = tmp_path / name
    d.mkdir()
    c = json.loads(json.dumps(config))
    for key, value in (config_changes or {}).items():
      section, field = key.split(".")
      c[section][field] = value
    (d / "config.json").write_text(json.dumps(c))
    if summary:
      shutil.copy(os.path.join(workdir, "summary.json"), d)
    if checkpoints:
      shutil.copytree(os.path.join(workdir, "checkpoints"), d / "checkpoints")
    return str(d)

  cases = [
      (str(tmp_path / "nothing"), "is not a run's workdir: it has no "
       "config.json"),
      (os.path.join(workdir, "teacher"), "it is a teacher checkpoint"),
      (run_dir("float", {"quant.bits": "fp"}), r"is a float \(32-bit\) run"),
      (run_dir("unfinished", summary=False), "has no finished student: there "
       "is no summary.json"),
      (run_dir("no_ckpt", checkpoints=False), "has no checkpoint of its last "
       "epoch"),
      (run_dir("longer", {"train.epochs": 5}), "has no checkpoint of its last "
       r"epoch \(.*/5 is missing; found: \[3, 4\]\)"),
  ]
  os.makedirs(tmp_path / "nothing")
  for wd, match in cases:
    out = tmp_path / "out.npz"
    with pytest.raises(fmt.ExportError, match=match):
      tool.export_and_evaluate(wd, str(out))
    assert not out.exists()
  with pytest.raises(fmt.ExportError, match="--checkpoint='first' is not "
                     "valid; valid values: last, best"):
    tool.export_and_evaluate(workdir, str(tmp_path / "x.npz"), "first")


def test_command_errors_exit_2_with_one_line(tiny_run, tmp_path):
  workdir, _ = tiny_run
  taken = tmp_path / "taken.npz"
  taken.write_text("keep me")
  damaged = tmp_path / "damaged.npz"
  damaged.write_bytes(b"PK\x03\x04 not really")
  for flags, message in (
      ([f"--out={taken}"], "already exists; refusing to overwrite it"),
      ([f"--evaluate={damaged}"], "is not a readable export file"),
      ([], "give exactly one of --out=FILE"),
  ):
    r = subprocess.run(
        [sys.executable, "-m", "acs_jax.export", f"--workdir={workdir}",
         *flags], cwd=REPO, capture_output=True, text=True, check=False,
        env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert r.returncode == 2, r.stderr[-2000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
  assert taken.read_text() == "keep me"
