"""Tests of LayerSpec building, quantize_params, layer interception, activation calibration and the NNX adapter."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import mpq_jax
from mpq_jax import activations
from mpq_jax import intercept
from mpq_jax import spec as spec_lib

# ------------------------------------------------------------ models


class _Net(nnx.Module):
  """Attribute names sort as a_last < m_mid < z_first, the reverse of use."""

  def __init__(self, rngs: nnx.Rngs):
    self.z_first = nnx.Conv(1, 4, (3, 3), rngs=rngs)
    self.m_mid = nnx.Conv(4, 8, (3, 3), rngs=rngs)
    self.a_last = nnx.Linear(8, 10, rngs=rngs)

  def __call__(self, x):
    x = jax.nn.relu(self.z_first(x))
    x = jax.nn.relu(self.m_mid(x))
    return self.a_last(x.mean(axis=(1, 2)))


@pytest.fixture(scope="module")
def nnx_model():
  apply_fn, params = mpq_jax.functional_model(_Net(nnx.Rngs(0)))
  images = jnp.asarray(
      np.random.default_rng(0).normal(size=(6, 8, 8, 1)), jnp.float32)
  spec = mpq_jax.build_layer_spec(apply_fn, params, images[:1])
  return apply_fn, params, spec, images


def _conv(x, w):
  return jax.lax.conv_general_dilated(
      x, w, window_strides=(1, 1), padding="SAME",
      dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _plain_hidden(params, x):
  """The input of the dense layer of the plain model."""
  h = jax.nn.relu(_conv(x, params["b_conv"]["w"]) + params["b_conv"]["b"])
  return h.mean(axis=(1, 2))


def _plain_apply(params, x):
  return jnp.dot(_plain_hidden(params, x), params["a_dense"]["w"]) + (
      params["a_dense"]["b"])


@pytest.fixture(scope="module")
def plain_model():
  rng = np.random.default_rng(1)
  params = {
      "b_conv": {"w": jnp.asarray(rng.normal(size=(3, 3, 1, 3)), jnp.float32),
                 "b": jnp.asarray(rng.normal(size=(3,)), jnp.float32)},
      "a_dense": {"w": jnp.asarray(rng.normal(size=(3, 4)), jnp.float32),
                  "b": jnp.asarray(rng.normal(size=(4,)), jnp.float32)},
  }
  images = jnp.asarray(rng.uniform(-2.0, 3.0, size=(5, 6, 6, 1)), jnp.float32)
  spec = mpq_jax.build_layer_spec(_plain_apply, params, images,
                                  select=mpq_jax.select_by_regex(r"/w$"))
  return _plain_apply, params, spec, images


# ------------------------------------------------------------ build_layer_spec


def test_nnx_spec_in_forward_order(nnx_model):
  _, params, spec, _ = nnx_model
  assert spec.names == ("z_first", "m_mid", "a_last")
  # Tree order: a_last/bias 0, a_last/kernel 1, m_mid/bias 2, m_mid/kernel 3,
  # z_first/bias 4, z_first/kernel 5.
  assert spec.leaf_indices == (5, 3, 1)
  leaves = jax.tree.leaves(params)
  for index, name in zip(spec.leaf_indices, spec.names):
    assert leaves[index] is params[name]["kernel"]
  assert spec.shapes == ((3, 3, 1, 4), (3, 3, 4, 8), (8, 10))
  # 3*3*1*4 = 36, 3*3*4*8 = 288, 8*10 = 80.
  assert spec.num_params == (36, 288, 80)
  # Kernels 404 + biases 4 + 8 + 10 = 426.
  assert spec.total_params == 426
  assert spec.num_layers == 3
  assert spec.output_channels == (4, 8, 10)


def test_spec_accepts_shape_dtype_struct(nnx_model):
  apply_fn, params, spec, _ = nnx_model
  again = mpq_jax.build_layer_spec(
      apply_fn, params, jax.ShapeDtypeStruct((3, 8, 8, 1), jnp.float32))
  assert again == spec


def test_plain_function_model_spec(plain_model):
  _, params, spec, _ = plain_model
  # Tree order: a_dense/b 0, a_dense/w 1, b_conv/b 2, b_conv/w 3; the conv
  # runs first.
  assert spec.names == ("b_conv/w", "a_dense/w")
  assert spec.leaf_indices == (3, 1)
  assert spec.shapes == ((3, 3, 1, 3), (3, 4))
  assert spec.num_params == (27, 12)
  assert spec.total_params == 27 + 3 + 12 + 4


def test_default_selector_on_plain_model_asks_for_select(plain_model):
  apply_fn, params, _, images = plain_model
  # The default picks leaves named 'kernel': there are none here.
  with pytest.raises(ValueError, match="pass `select=`"):
    mpq_jax.build_layer_spec(apply_fn, params, images)


def test_selector_matching_nothing_raises(nnx_model):
  apply_fn, params, _, images = nnx_model
  with pytest.raises(ValueError, match=r"no parameter leaf was selected.*"
                     r"pass `select=`"):
    mpq_jax.build_layer_spec(apply_fn, params, images,
                             select=mpq_jax.select_by_regex("no_such_layer"))
  # Biases match the pattern but are rank 1, so they are never selected.
  with pytest.raises(ValueError, match="select="):
    mpq_jax.build_layer_spec(apply_fn, params, images,
                             select=mpq_jax.select_by_regex("bias"))


def test_select_by_regex_restricts_layers(nnx_model):
  apply_fn, params, _, images = nnx_model
  spec = mpq_jax.build_layer_spec(
      apply_fn, params, images,
      select=mpq_jax.select_by_regex(r"^(a_last|z_first)/kernel$"))
  assert spec.names == ("z_first", "a_last")
  assert spec.leaf_indices == (5, 1)
  assert spec.num_params == (36, 80)
  # total_params still counts every float parameter.
  assert spec.total_params == 426


def test_unused_selected_leaf_comes_last(plain_model):
  apply_fn, params, _, images = plain_model
  params = dict(params, c_unused={"w": jnp.ones((2, 5))})
  spec = mpq_jax.build_layer_spec(apply_fn, params, images,
                                  select=mpq_jax.select_by_regex(r"/w$"))
  assert spec.names == ("b_conv/w", "a_dense/w", "c_unused/w")
  assert spec.num_params == (27, 12, 10)


def test_kernel_used_through_transpose_and_inner_jit():
  # The kernel reaches the matmul transposed, as its left operand, inside a
  # jitted helper: it is still found, and its activation still hooked.
  @jax.jit
  def dense_t(h, w):
    return jnp.dot(w.T, h.T).T

  def apply_fn(params, x):
    h = jax.nn.relu(dense_t(x, params["second"]["w"]))
    return jnp.dot(h, params["first"]["w"])

  params = {"first": {"w": jnp.full((3, 2), 0.5)},
            "second": {"w": jnp.arange(12.0).reshape(4, 3) / 10 - 0.5}}
  x = jnp.asarray(np.random.default_rng(2).normal(size=(5, 4)), jnp.float32)
  spec = mpq_jax.build_layer_spec(apply_fn, params, x,
                                  select=mpq_jax.select_by_regex("w$"))
  assert spec.names == ("second/w", "first/w")
  ranges = mpq_jax.calibrate_activation_ranges(apply_fn, params, spec, x)
  hidden = jax.nn.relu(x @ params["second"]["w"])
  np.testing.assert_allclose(
      np.asarray(ranges),
      [[float(x.min()), float(x.max())],
       [float(hidden.min()), float(hidden.max())]], rtol=1e-6)


def test_run_with_layer_hook_identity_and_visit_order(nnx_model):
  apply_fn, params, spec, images = nnx_model
  visited = []
  out = intercept.run_with_layer_hook(apply_fn, params, images,
                                      spec.leaf_indices,
                                      hook=lambda i, a: a, visit=visited.append)
  np.testing.assert_allclose(np.asarray(out),
                             np.asarray(apply_fn(params, images)), atol=1e-6)
  assert visited == [0, 1, 2]


def test_run_with_layer_hook_replaces_activation(plain_model):
  apply_fn, params, spec, images = plain_model
  # Zeroing the dense layer's input leaves only its bias.
  out = intercept.run_with_layer_hook(
      apply_fn, params, images, spec.leaf_indices,
      hook=lambda i, a: jnp.zeros_like(a) if i == 1 else a)
  np.testing.assert_allclose(
      np.asarray(out),
      np.broadcast_to(np.asarray(params["a_dense"]["b"]), (5, 4)), atol=1e-7)


# ------------------------------------------------------------ quantize_params


def test_quantize_params_wrong_length(nnx_model):
  _, params, spec, _ = nnx_model
  with pytest.raises(ValueError, match=r"shape \(2,\).* 3 quantized layers"):
    mpq_jax.quantize_params(params, jnp.array([4, 4]), spec)
  with pytest.raises(ValueError, match="3 quantized layers"):
    mpq_jax.quantize_params(params, np.full((2, 3), 4), spec)


def test_quantize_params_one_bit_raises(nnx_model):
  _, params, spec, _ = nnx_model
  with pytest.raises(ValueError, match="at least 2 bits"):
    mpq_jax.quantize_params(params, np.array([4, 1, 4]), spec)
  with pytest.raises(ValueError, match="above 16"):
    mpq_jax.quantize_params(params, np.array([4, 32, 4]), spec)


def test_quantize_params_changes_only_kernels(nnx_model):
  _, params, spec, _ = nnx_model
  quantized = mpq_jax.quantize_params(params, np.array([2, 3, 4]), spec)
  assert jax.tree.structure(quantized) == jax.tree.structure(params)
  for name, bits in zip(spec.names, (2, 3, 4)):
    np.testing.assert_array_equal(np.asarray(quantized[name]["bias"]),
                                  np.asarray(params[name]["bias"]))
    kernel = np.asarray(quantized[name]["kernel"])
    assert not np.array_equal(kernel, np.asarray(params[name]["kernel"]))
    assert len(np.unique(kernel)) <= 2**bits - 1
    np.testing.assert_array_equal(
        kernel, np.asarray(mpq_jax.quantize_symmetric(params[name]["kernel"],
                                                      bits)))


def test_quantize_params_per_channel(nnx_model):
  _, params, spec, _ = nnx_model
  quantized = mpq_jax.quantize_params(params, np.array([3, 3, 3]), spec,
                                      per_channel=True)
  for name in spec.names:
    np.testing.assert_array_equal(
        np.asarray(quantized[name]["kernel"]),
        np.asarray(mpq_jax.quantize_symmetric(params[name]["kernel"], 3,
                                              channel_axis=-1)))
  per_tensor = mpq_jax.quantize_params(params, np.array([3, 3, 3]), spec)
  assert not np.array_equal(np.asarray(per_tensor["m_mid"]["kernel"]),
                            np.asarray(quantized["m_mid"]["kernel"]))


def test_quantize_params_16_bits_nearly_unchanged(nnx_model):
  _, params, spec, _ = nnx_model
  quantized = mpq_jax.quantize_params(params, np.full(3, 16), spec)
  for name in spec.names:
    w = np.asarray(params[name]["kernel"])
    error = np.max(np.abs(np.asarray(quantized[name]["kernel"]) - w))
    assert error <= np.max(np.abs(w)) / 32767 / 2 + 1e-7


def test_quantize_params_jit_and_vmap_equal_loop(nnx_model):
  _, params, spec, _ = nnx_model
  bits = jnp.array([[2, 3, 4], [8, 8, 8], [16, 2, 5], [4, 16, 2]], jnp.int32)
  batched = jax.jit(jax.vmap(
      lambda b: mpq_jax.quantize_params(params, b, spec)))(bits)
  jitted = jax.jit(lambda b: mpq_jax.quantize_params(params, b, spec))
  for s in range(bits.shape[0]):
    expected = mpq_jax.quantize_params(params, np.asarray(bits[s]), spec)
    for got in (jax.tree.map(lambda leaf: leaf[s], batched), jitted(bits[s])):
      for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_check_finite_params(nnx_model):
  _, params, spec, _ = nnx_model
  spec_lib.check_finite_params(params, spec)  # finite: no error
  bad = jax.tree.map(lambda leaf: leaf, params)
  bad["m_mid"] = dict(bad["m_mid"],
                      kernel=bad["m_mid"]["kernel"].at[0, 0, 0, 0].set(jnp.nan))
  with pytest.raises(ValueError, match=r"'m_mid' has non-finite weights"):
    spec_lib.check_finite_params(bad, spec)
  bad = dict(params, a_last=dict(params["a_last"],
                                 kernel=params["a_last"]["kernel"].at[1, 1].set(
                                     jnp.inf)))
  with pytest.raises(ValueError, match="non-finite"):
    spec_lib.check_finite_params(bad, spec)
  # A NaN in a bias (not quantized) is not this check's business.
  bias_nan = dict(params, a_last=dict(params["a_last"],
                                      bias=params["a_last"]["bias"].at[0].set(
                                          jnp.nan)))
  spec_lib.check_finite_params(bias_nan, spec)


# ------------------------------------------------------------ activations


def test_calibrate_ranges_plain_model_by_hand(plain_model):
  apply_fn, params, spec, images = plain_model
  ranges = np.asarray(mpq_jax.calibrate_activation_ranges(apply_fn, params,
                                                          spec, images))
  assert ranges.shape == (2, 2)
  hidden = np.asarray(_plain_hidden(params, images))
  expected = [[float(images.min()), float(images.max())],
              [hidden.min(), hidden.max()]]
  np.testing.assert_allclose(ranges, expected, rtol=1e-6, atol=1e-7)
  # The hidden layer follows a ReLU: its minimum is >= 0.
  assert ranges[1, 0] >= 0.0


def test_calibrate_ranges_nnx_model(nnx_model):
  apply_fn, params, spec, images = nnx_model
  ranges = np.asarray(mpq_jax.calibrate_activation_ranges(apply_fn, params,
                                                          spec, images))
  assert ranges.shape == (3, 2)
  assert np.all(ranges[:, 0] <= ranges[:, 1])
  np.testing.assert_allclose(ranges[0], [float(images.min()),
                                         float(images.max())], rtol=1e-6)
  # Layers 1 and 2 read ReLU outputs.
  assert np.all(ranges[1:, 0] >= 0.0)
  assert np.all(ranges[1:, 1] > 0.0)


def test_calibrate_empty_raises(plain_model):
  apply_fn, params, spec, _ = plain_model
  with pytest.raises(ValueError, match="empty"):
    mpq_jax.calibrate_activation_ranges(apply_fn, params, spec,
                                        jnp.zeros((0, 6, 6, 1)))
  with pytest.raises(ValueError, match="empty"):
    activations.check_calibration_images(None)


def test_quantized_apply_16_bits_close_to_fp(nnx_model):
  apply_fn, params, spec, images = nnx_model
  quantized_apply = mpq_jax.make_quantized_apply(apply_fn, spec)
  fp = np.asarray(apply_fn(params, images))
  out = np.asarray(quantized_apply(params, jnp.full(3, 16, jnp.int32), images))
  np.testing.assert_allclose(out, fp, atol=1e-3)
  # 2-bit weights, by contrast, move the output a lot.
  out2 = np.asarray(quantized_apply(params, jnp.full(3, 2, jnp.int32), images))
  assert np.max(np.abs(out2 - fp)) > 1e-2


def test_quantized_apply_with_activation_quantization(nnx_model):
  apply_fn, params, spec, images = nnx_model
  ranges = mpq_jax.calibrate_activation_ranges(apply_fn, params, spec, images)
  weight_only = mpq_jax.make_quantized_apply(apply_fn, spec)
  both = mpq_jax.make_quantized_apply(apply_fn, spec,
                                      activation_ranges=ranges,
                                      activation_bits=8)
  bits = jnp.array([8, 8, 8], jnp.int32)
  a = np.asarray(weight_only(params, bits, images))
  b = np.asarray(both(params, bits, images))
  difference = np.max(np.abs(a - b))
  assert difference > 0.0
  # Half a step of an 8-bit grid per layer: small next to the logits.
  assert difference < 0.05 * np.max(np.abs(a))
  # Coarser activations move the output further.
  coarse = mpq_jax.make_quantized_apply(apply_fn, spec,
                                        activation_ranges=ranges,
                                        activation_bits=2)
  assert np.max(np.abs(np.asarray(coarse(params, bits, images)) - a)) > (
      difference)


def test_quantized_apply_plain_model_by_hand(plain_model):
  apply_fn, params, spec, images = plain_model
  ranges = mpq_jax.calibrate_activation_ranges(apply_fn, params, spec, images)
  quantized_apply = mpq_jax.make_quantized_apply(
      apply_fn, spec, activation_ranges=ranges, activation_bits=4)
  bits = np.array([3, 5])
  out = quantized_apply(params, jnp.asarray(bits), images)
  # The same computation written out.
  wq = mpq_jax.quantize_params(params, bits, spec)
  x = mpq_jax.quantize_asymmetric(images, 4, ranges[0, 0], ranges[0, 1])
  h = jax.nn.relu(_conv(x, wq["b_conv"]["w"]) + wq["b_conv"]["b"]).mean((1, 2))
  h = mpq_jax.quantize_asymmetric(h, 4, ranges[1, 0], ranges[1, 1])
  expected = jnp.dot(h, wq["a_dense"]["w"]) + wq["a_dense"]["b"]
  np.testing.assert_allclose(np.asarray(out), np.asarray(expected), atol=1e-5)


def test_quantized_apply_vmap_over_bits_equals_loop(nnx_model):
  apply_fn, params, spec, images = nnx_model
  ranges = mpq_jax.calibrate_activation_ranges(apply_fn, params, spec, images)
  quantized_apply = mpq_jax.make_quantized_apply(apply_fn, spec,
                                                 activation_ranges=ranges)
  bits = jnp.array([[2, 4, 8], [8, 8, 8], [3, 16, 2]], jnp.int32)
  batched = jax.jit(jax.vmap(quantized_apply, in_axes=(None, 0, None)))(
      params, bits, images)
  assert batched.shape == (3, 6, 10)
  for s in range(3):
    np.testing.assert_allclose(
        np.asarray(batched[s]),
        np.asarray(quantized_apply(params, bits[s], images)), atol=1e-5)
  assert not np.allclose(np.asarray(batched[0]), np.asarray(batched[1]))


# ------------------------------------------------------------ NNX adapter


def test_functional_model_matches_module_and_is_pure():
  module = _Net(nnx.Rngs(3))
  x = jnp.asarray(np.random.default_rng(3).normal(size=(2, 8, 8, 1)),
                  jnp.float32)
  expected = np.asarray(module(x))
  apply_fn, params = mpq_jax.functional_model(module)
  assert isinstance(params, dict)
  assert set(params) == {"a_last", "m_mid", "z_first"}
  np.testing.assert_allclose(np.asarray(apply_fn(params, x)), expected,
                             atol=1e-6)
  # New parameters are used: zeroing the last kernel leaves only its bias.
  zeroed = dict(params, a_last=dict(params["a_last"],
                                    kernel=jnp.zeros((8, 10))))
  np.testing.assert_allclose(
      np.asarray(jax.jit(apply_fn)(zeroed, x)),
      np.broadcast_to(np.asarray(params["a_last"]["bias"]), (2, 10)),
      atol=1e-7)
  # ... and the original parameters still give the original output.
  np.testing.assert_allclose(np.asarray(apply_fn(params, x)), expected,
                             atol=1e-6)


def test_functional_model_eval_mode_freezes_dropout_and_batch_stats():
  class WithState(nnx.Module):

    def __init__(self, rngs):
      self.dense = nnx.Linear(4, 3, rngs=rngs)
      self.norm = nnx.BatchNorm(3, rngs=rngs)
      self.drop = nnx.Dropout(0.5, rngs=rngs)

    def __call__(self, x):
      return self.drop(self.norm(self.dense(x)))

  apply_fn, params = mpq_jax.functional_model(WithState(nnx.Rngs(0)))
  # Only nnx.Param leaves are in params (BatchNorm statistics are not).
  assert set(params["norm"]) == {"scale", "bias"}
  x = jnp.asarray(np.random.default_rng(4).normal(size=(5, 4)), jnp.float32)
  first = np.asarray(apply_fn(params, x))
  second = np.asarray(apply_fn(params, x))
  np.testing.assert_array_equal(first, second)
  # Eval-mode BatchNorm with initial statistics (mean 0, var 1) is ~identity.
  dense_out = x @ params["dense"]["kernel"] + params["dense"]["bias"]
  np.testing.assert_allclose(first, np.asarray(dense_out), atol=1e-4)
  spec = mpq_jax.build_layer_spec(apply_fn, params, x)
  assert spec.names == ("dense",)
  # 12 + 3 (dense) + 3 + 3 (norm scale and bias).
  assert spec.total_params == 21


@pytest.mark.parametrize("side,stride,padding,kernel", [
    (2, 1, ((1, 1), (1, 1)), 3),   # resnet layer4 at 64x64: 2x2 map
    (4, 2, ((1, 1), (1, 1)), 3),   # strided down to 2x2
    (1, 1, ((1, 1), (1, 1)), 3),   # 1x1 map
    (3, 2, ((0, 1), (2, 0)), 2),   # uneven padding, 2x2 kernel
])
def test_small_map_convolutions_become_matmuls_with_the_same_numbers(
    side, stride, padding, kernel):
  kernel_init = jax.random.normal(jax.random.key(0),
                                  (kernel, kernel, 16, 8)) * 0.1
  images = jax.random.normal(jax.random.key(1), (5, side, side, 16))
  apply_fn = lambda params, x: jax.lax.conv_general_dilated(
      x, params["kernel"], (stride, stride), padding,
      dimension_numbers=("NHWC", "HWIO", "NHWC"))
  params = {"kernel": kernel_init}
  direct = apply_fn(params, images)
  assert max(direct.shape[1:3]) <= 2
  rewritten = intercept.run_with_layer_hook(apply_fn, params, images, [0],
                                            small_convs_as_matmul=True)
  jaxpr = jax.make_jaxpr(lambda p, x: intercept.run_with_layer_hook(
      apply_fn, p, x, [0], small_convs_as_matmul=True))(params, images)
  primitives = {eqn.primitive.name for eqn in jaxpr.jaxpr.eqns}
  assert "conv_general_dilated" not in primitives and "dot_general" in primitives
  np.testing.assert_allclose(rewritten, direct, rtol=1e-5, atol=1e-5)
  # Larger maps keep the convolution.
  wide = jax.random.normal(jax.random.key(2), (5, 8, 8, 16))
  jaxpr = jax.make_jaxpr(lambda p, x: intercept.run_with_layer_hook(
      apply_fn, p, x, [0], small_convs_as_matmul=True))(params, wide)
  assert "conv_general_dilated" in {e.primitive.name for e in jaxpr.jaxpr.eqns}
