"""Hand-off to qwix: a bit allocation as an ordered list of qwix rules.

qwix (google/qwix) is JAX's quantization library. `qwix_rules` turns one
bit-width per layer into one `qwix.QtRule` per layer, in forward order, each
matching exactly that layer's module path. With `qwix.QtProvider` they give a
fake-quantized model (for evaluation or quantization-aware training).

qwix differs from mpq_jax's paper quantizer in two ways, so its top-1 at the
same bits differs (BUILD.md has measured figures): it scales per output
channel, and its grid is the full signed range [-2**(b-1), 2**(b-1)-1] with
scale max|w| / (2**(b-1) - 0.5), where ours is per tensor on the restricted
grid [-(2**(b-1)-1), 2**(b-1)-1] with scale max|w| / (2**(b-1)-1).
qwix's PtqProvider needs convolutions to quantize activations to the same
type as their weights, so weight-only mixed precision goes through QtProvider.
"""

from __future__ import annotations

import re
from typing import Any

import jax.numpy as jnp
import numpy as np

from mpq_jax import quant
from mpq_jax import spec as spec_lib

QWIX_WEIGHT_BITS = tuple(range(2, 9))


def _import_qwix():
  try:
    import qwix  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ImportError("the qwix hand-off needs qwix: pip install"
                      " 'mpq_jax[qwix]' (or pip install qwix).") from None
  return qwix


def qwix_weight_qtype(bits: int):
  """qwix's name for a signed integer weight type of `bits` bits."""
  if bits not in QWIX_WEIGHT_BITS:
    raise ValueError(f"qwix has no {bits}-bit integer weight type: it"
                     f" supports {QWIX_WEIGHT_BITS[0]} to"
                     f" {QWIX_WEIGHT_BITS[-1]} bits; clip the allocation to"
                     " that range first.")
  return {4: jnp.int4, 8: jnp.int8}.get(bits, f"int{bits}")


def qwix_rules(spec: spec_lib.LayerSpec, bits) -> list[Any]:
  """One `qwix.QtRule` per quantized layer, in forward order (weights only)."""
  qwix = _import_qwix()
  bits = quant.check_weight_bits(bits, spec.num_layers)
  return [
      qwix.QtRule(module_path="^" + re.escape(name) + "$",
                  weight_qtype=qwix_weight_qtype(int(layer_bits)))
      for name, layer_bits in zip(spec.names, np.asarray(bits))
  ]


def quantize_with_qwix(module, spec: spec_lib.LayerSpec, bits,
                       example_input) -> Any:
  """The NNX `module` fake-quantized by qwix at `bits` (a new module)."""
  qwix = _import_qwix()
  return qwix.quantize_model(module, qwix.QtProvider(qwix_rules(spec, bits)),
                             example_input)
