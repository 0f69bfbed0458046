"""Array quantizers: symmetric weights (per-tensor or per-channel) and asymmetric activations.

Every function here is pure and accepts the bit-width as a traced integer
array, so one compiled program serves every bit configuration.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

MIN_WEIGHT_BITS = 2
MAX_BITS = 16


def symmetric_max_code(bits: jax.Array) -> jax.Array:
  """Largest code of the restricted signed grid: 2**(bits-1) - 1."""
  bits = jnp.asarray(bits, jnp.int32)
  return (jnp.left_shift(1, bits - 1) - 1).astype(jnp.float32)


def _reduction_axes(ndim: int, channel_axis: int | None) -> tuple[int, ...]:
  if channel_axis is None:
    return tuple(range(ndim))
  channel_axis = channel_axis % ndim
  return tuple(axis for axis in range(ndim) if axis != channel_axis)


def symmetric_scale(
    weights: jax.Array, bits: jax.Array, channel_axis: int | None = None
) -> jax.Array:
  """Step size max|w| / (2**(b-1) - 1), keeping the rank of `weights`.

  Args:
    weights: the float tensor to quantize.
    bits: integer bit-width, >= 2 (may be traced).
    channel_axis: None for one scale per tensor (the paper's), or the axis
      that keeps its own scale (the output channels, -1 for Flax kernels).

  Returns:
    The scale, broadcastable against `weights` (size 1 on reduced axes).
  """
  axes = _reduction_axes(weights.ndim, channel_axis)
  max_abs = jnp.max(jnp.abs(weights), axis=axes, keepdims=True)
  # An all-zero tensor has no range; any positive scale maps it to code 0.
  max_abs = jnp.where(max_abs > 0, max_abs, 1.0)
  return max_abs / symmetric_max_code(bits)


def symmetric_codes(
    weights: jax.Array, bits: jax.Array, channel_axis: int | None = None
) -> tuple[jax.Array, jax.Array]:
  """Integer codes in [-(2**(b-1)-1), 2**(b-1)-1] and their scale."""
  scale = symmetric_scale(weights, bits, channel_axis)
  max_code = symmetric_max_code(bits)
  # One reciprocal, then a multiplication (see quantize_asymmetric): the
  # weight tables and the in-program quantizer then give the same codes.
  inverse_scale = 1.0 / scale
  codes = jnp.clip(jnp.round(weights * inverse_scale), -max_code, max_code)
  return codes.astype(jnp.int32), scale


def quantize_symmetric(
    weights: jax.Array, bits: jax.Array, channel_axis: int | None = None
) -> jax.Array:
  """Fake-quantizes weights on the restricted signed grid (round to nearest).

  >>> import jax.numpy as jnp
  >>> quantize_symmetric(jnp.array([-1.0, -0.4, 0.1, 0.6, 1.0]), 2).tolist()
  [-1.0, 0.0, 0.0, 1.0, 1.0]
  """
  codes, scale = symmetric_codes(weights, bits, channel_axis)
  return (codes * scale).astype(weights.dtype)


def quantize_asymmetric(
    values: jax.Array, bits: jax.Array, low: jax.Array, high: jax.Array
) -> jax.Array:
  """Fake-quantizes activations on an unsigned grid over the static [low, high].

  The range is widened to include 0 so that zero (padding, ReLU outputs) is
  exactly representable, as integer inference engines require.

  >>> import jax.numpy as jnp
  >>> quantize_asymmetric(jnp.array([0.0, 0.3, 1.0, 2.0]), 2, 0.0, 1.5).tolist()
  [0.0, 0.5, 1.0, 1.5]
  """
  low = jnp.minimum(jnp.asarray(low, jnp.float32), 0.0)
  high = jnp.maximum(jnp.asarray(high, jnp.float32), 0.0)
  max_code = (jnp.left_shift(1, jnp.asarray(bits, jnp.int32)) - 1).astype(
      jnp.float32
  )
  has_range = high > low
  scale = jnp.where(has_range, (high - low) / max_code, 1.0)
  zero_point = jnp.round(-low / scale)
  # Multiplying by one reciprocal, not dividing: XLA may turn a division by a
  # constant into that multiplication in one program and not in another, and
  # a one-ulp difference flips codes that sit on a rounding boundary. Fixed
  # this way, any chunking or device count gives the same bits.
  inverse_scale = 1.0 / scale
  codes = jnp.clip(jnp.round(values * inverse_scale) + zero_point, 0.0,
                   max_code)
  dequantized = (codes - zero_point) * scale
  # A layer whose calibration inputs were all zero (a dead ReLU, say) has the
  # one-point range [0, 0]: every input maps to 0.
  return jnp.where(has_range, dequantized, 0.0).astype(values.dtype)


def check_weight_bits(
    bits, num_layers: int, bit_range: tuple[int, int] | None = None
) -> np.ndarray:
  """Validates a concrete bit vector on the host and returns it as int32.

  Raises ValueError that names the problem and the fix.
  """
  array = np.asarray(bits)
  if array.ndim == 0 or array.shape[-1] != num_layers:
    raise ValueError(
        f"bit vector has shape {array.shape} but the layer spec has"
        f" {num_layers} quantized layers: give one bit-width per layer, in"
        " the spec's order (LayerSpec.names)."
    )
  if not np.issubdtype(array.dtype, np.integer):
    if not np.all(np.equal(np.mod(array, 1), 0)):
      raise ValueError(
          f"bit-widths must be whole numbers, got {array.ravel()[:8]}: round"
          " them first (mpq_jax.allocate_bits does)."
      )
  array = array.astype(np.int32)
  if np.any(array < MIN_WEIGHT_BITS):
    raise ValueError(
        f"bit-width {int(array.min())} is below {MIN_WEIGHT_BITS}: a signed"
        " symmetric grid needs at least 2 bits (1 bit leaves only the code 0)."
        " Use bits >= 2."
    )
  if np.any(array > MAX_BITS):
    raise ValueError(
        f"bit-width {int(array.max())} is above {MAX_BITS}; leave a layer"
        " unquantized instead by excluding it from the LayerSpec."
    )
  if bit_range is not None:
    low, high = bit_range
    if np.any(array < low) or np.any(array > high):
      raise ValueError(
          f"bits {array.ravel().tolist()[:16]} fall outside the bit range"
          f" [{low}, {high}]: clip them, or widen --bit_range."
      )
  return array
