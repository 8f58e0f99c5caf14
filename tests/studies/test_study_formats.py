"""The format study's real tensors: BatchNorm folding and the photographs, against independent computations."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from PIL import Image

from lpnum.zoo import models as zoo
from lpnum.studies import formats as study


def test_folded_stem_kernel_reproduces_conv_then_batchnorm():
  model = zoo.CNN(channels=(4,))
  x = np.random.default_rng(0).random((3, 8, 8, 1), dtype=np.float32)
  variables = model.init(jax.random.key(0), x, train=False)
  rng = np.random.default_rng(1)  # BatchNorm statistics and affine parameters far from their initial values
  for part, name in (("params", "scale"), ("params", "bias"), ("batch_stats", "mean"), ("batch_stats", "var")):
    shape = variables[part]["BatchNorm_0"][name].shape
    variables[part]["BatchNorm_0"][name] = rng.uniform(0.1, 3.0, shape).astype(np.float32)
  _, inter = model.apply(variables, x, train=False, capture_intermediates=True)
  normed = np.asarray(inter["intermediates"]["BatchNorm_0"]["__call__"][0])
  rows = study.cnn_tensors(variables)["cnn_weights"]
  assert [r.shape for r in rows] == [(4, 9), (4, 36), (4, 36)]  # the stem, then the block's two convolutions
  bn = {k: np.asarray(variables[p]["BatchNorm_0"][k], np.float64)
        for p, k in (("params", "scale"), ("params", "bias"), ("batch_stats", "mean"), ("batch_stats", "var"))}
  gain = bn["scale"] / np.sqrt(bn["var"] + 1e-5)
  # The stem's 3x3 SAME convolution in float64 NumPy with the folded kernel, plus BatchNorm's remaining shift.
  padded = np.pad(np.asarray(x, np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
  patches = np.stack([padded[:, i:i + 8, j:j + 8, 0] for i in range(3) for j in range(3)], axis=-1)
  want = patches @ rows[0].T.astype(np.float64) + (bn["bias"] - bn["mean"] * gain)
  np.testing.assert_allclose(normed, want, rtol=1e-5, atol=1e-5)


def test_photo_tensors_are_the_differenced_luminance_of_the_sample_images():
  from sklearn.datasets import load_sample_images

  photos = study.photo_tensors()["photo_diffs"]
  assert [p.shape for p in photos] == [(427, study.PHOTO_COLUMNS)] * 2 and all(p.dtype == np.float32 for p in photos)
  for got, image in zip(photos, load_sample_images().images):
    luma = np.asarray(Image.fromarray(image).convert("L"), np.float64) / 255.0  # Pillow's own BT.601 luma
    np.testing.assert_allclose(got, np.diff(luma, axis=1)[:, :study.PHOTO_COLUMNS], atol=1.01 / 255)
    centred = got - got.mean()
    assert np.mean(centred**4) / np.mean(centred**2) ** 2 > 6  # natural images: far heavier-tailed than Gaussian


def test_plot_points_merge_equal_results_in_order_of_storage():
  rows = [study.Row("int8", 8, "gaussian", 35.0, "tensor", 0.1, 8.0),
          study.Row("int4", 4, "gaussian", 20.0, "tensor", 0.1, 4.0),
          study.Row("int8", 8, "gaussian", 40.0, "channel", 0.1, 8.25),
          study.Row("posit8", 8, "gaussian", 31.0, "tensor", 0.1, 8.0),
          study.Row("int8_narrow", 8, "gaussian", 35.004, "tensor", 0.1, 8.0)]  # int8's point, ranked first
  points = study._points(study._summary(rows))
  assert [(p["names"], p["granularity"]) for p in points] == [
      (["int4"], "tensor"), (["int8_narrow", "int8"], "tensor"), (["posit8"], "tensor"), (["int8"], "channel")]


def test_label_heights_keep_their_distance_around_the_points():
  assert study._label_heights([0.0, 0.0, 0.0, 10.0], 2.0, -100, 100) == [-1.5, 0.5, 2.5, 8.5]
  assert study._label_heights([0.0, 0.0, 0.0, 10.0], 2.0, 0.0, 100) == [0.0, 2.0, 4.0, 10.0]  # none below 0
  assert study._label_heights([0.0, 9.0, 9.5], 1.0, -100, 9.5) == [-0.5, 8.5, 9.5]  # none above 9.5


def test_tensors_rejects_a_size_that_is_not_whole_rows():
  with pytest.raises(ValueError, match="n="):
    study.tensors(1000, mlp=None, cnn=None, photos=False)


def test_table_headers_are_whole_tensor_names():
  rows = [study.Row("int8", 8, d, 40.0 + i, "tensor", 0.01, 8.0) for i, d in enumerate(("gaussian", "mlp_activations"))]
  head = study.table(rows).splitlines()[0].split()
  assert head == ["format", "granularity", "bits/el", "gaussian", "mlp_activations", "rel.err", "dB/bit"]
