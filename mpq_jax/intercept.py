"""Replays any JAX model's program with a hook on the input of each weight layer.

`apply_fn(params, x)` is traced once to a jaxpr; a weight layer is a
`conv_general_dilated` or `dot_general` one of whose operands comes from a
selected kernel leaf (possibly through casts, reshapes or transposes). The
replay calls `hook(layer_index, activation)` on the other operand and uses
what it returns. This is how activations are quantized and calibrated for
models we did not write, with no change to their code.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
from jax import extend as jex

Hook = Callable[[int, jax.Array], jax.Array]
# layer_call(i, compute, activation) -> layer output, where compute(activation)
# runs layer i's own primitive on that activation.
LayerCall = Callable[[int, Callable[[jax.Array], jax.Array], jax.Array],
                     jax.Array]

# Primitives through which a kernel stays "the same weight" on its way to the
# matmul or convolution that consumes it.
_WEIGHT_PRESERVING = frozenset({
    "convert_element_type", "reshape", "transpose", "broadcast_in_dim",
    "squeeze", "expand_dims", "copy", "copy_p", "reduce_precision",
    "sharding_constraint", "optimization_barrier",
})
_CALL_PRIMITIVES = frozenset({"jit", "pjit", "closed_call", "core_call"})


def _bind_params(eqn) -> dict[str, Any]:
  params = eqn.primitive.get_bind_params(eqn.params)
  # Older jax returns (subfuns, params); newer returns params alone.
  return params[1] if isinstance(params, tuple) else params


def _read(env, atom):
  return atom.val if isinstance(atom, jex.core.Literal) else env[atom]


def _layer_operand(eqn, weight_layer: dict) -> tuple[int, int] | None:
  """(layer index, operand position of the activation) if eqn is a weight layer."""
  name = eqn.primitive.name
  if name not in ("conv_general_dilated", "dot_general"):
    return None
  lhs, rhs = eqn.invars[:2]
  if not isinstance(rhs, jex.core.Literal) and rhs in weight_layer:
    return weight_layer[rhs], 0
  if name == "dot_general" and not isinstance(lhs, jex.core.Literal):
    if lhs in weight_layer:
      return weight_layer[lhs], 1
  return None


# XLA CPU runs a convolution whose output map is 1x1 or 2x2 10-70x slower
# than the same product written as patches times a matrix (3x3, 512
# channels, 2x2 map, 50 images: 0.28 s against 0.004 s; 3x3 and larger maps
# are on par). ResNets meet such maps at small inputs (64x64 and below).
_SMALL_MAP_SIDE = 2
_NHWC_HWIO_NHWC = ((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))


def _is_small_map_conv(eqn) -> bool:
  if eqn.primitive.name != "conv_general_dilated":
    return False
  params = eqn.params
  numbers = params["dimension_numbers"]
  layout = (tuple(numbers.lhs_spec), tuple(numbers.rhs_spec),
            tuple(numbers.out_spec))
  kernel = eqn.invars[1].aval.shape
  return (layout == _NHWC_HWIO_NHWC
          and params["feature_group_count"] == 1
          and params["batch_group_count"] == 1
          and all(d == 1 for d in params["lhs_dilation"])
          and all(d == 1 for d in params["rhs_dilation"])
          and isinstance(params["padding"], (tuple, list))
          and all(p >= 0 for pair in params["padding"] for p in pair)
          and max(eqn.outvars[0].aval.shape[1:3]) <= _SMALL_MAP_SIDE
          and max(kernel[:2]) > 1)


def _conv_as_matmul(lhs, rhs, params):
  """An NHWC/HWIO convolution as patches (kh, kw, cin order) times the kernel."""
  (top, bottom), (left, right) = params["padding"]
  stride_h, stride_w = params["window_strides"]
  kh, kw, cin, cout = rhs.shape
  padded = jnp.pad(lhs, ((0, 0), (top, bottom), (left, right), (0, 0)))
  out_h = (padded.shape[1] - kh) // stride_h + 1
  out_w = (padded.shape[2] - kw) // stride_w + 1
  patches = jnp.concatenate([
      padded[:, i:i + (out_h - 1) * stride_h + 1:stride_h,
             j:j + (out_w - 1) * stride_w + 1:stride_w, :]
      for i in range(kh) for j in range(kw)], axis=-1)
  return jnp.dot(patches, rhs.reshape(kh * kw * cin, cout),
                 precision=params["precision"],
                 preferred_element_type=params["preferred_element_type"])


def _bind(eqn, invals, small_convs_as_matmul: bool):
  if small_convs_as_matmul and _is_small_map_conv(eqn):
    return _conv_as_matmul(invals[0], invals[1], eqn.params)
  return eqn.primitive.bind(*invals, **_bind_params(eqn))


def _replay(jaxpr, consts, args, weight_layer: dict, hook: Hook | None,
            visit: Callable[[int], None] | None,
            layer_call: LayerCall | None = None,
            small_convs_as_matmul: bool = False):
  """Evaluates `jaxpr`, applying `hook` at weight layers; mirrors eval_jaxpr."""
  env: dict[Any, Any] = {}
  for var, value in zip(jaxpr.constvars, consts):
    env[var] = value
  for var, value in zip(jaxpr.invars, args):
    env[var] = value
  for eqn in jaxpr.eqns:
    invals = [_read(env, v) for v in eqn.invars]
    name = eqn.primitive.name
    inner_layers = {
        inner: weight_layer[outer]
        for outer, inner in zip(eqn.invars, _inner_invars(eqn))
        if not isinstance(outer, jex.core.Literal) and outer in weight_layer
    }
    if name in _CALL_PRIMITIVES and inner_layers:
      closed = eqn.params["jaxpr"]
      outvals = _replay(closed.jaxpr, closed.consts, invals, inner_layers,
                        hook, visit, layer_call, small_convs_as_matmul)
    else:
      layer = _layer_operand(eqn, weight_layer)
      if layer is not None:
        index, position = layer
        if visit is not None:
          visit(index)
        if hook is not None:
          invals[position] = hook(index, invals[position])
      if layer is not None and layer_call is not None:
        def compute(activation, invals=invals, position=layer[1], eqn=eqn):
          operands = list(invals)
          operands[position] = activation
          return _bind(eqn, operands, small_convs_as_matmul)
        outvals = layer_call(layer[0], compute, invals[layer[1]])
      else:
        outvals = _bind(eqn, invals, small_convs_as_matmul)
      if (name in _WEIGHT_PRESERVING and eqn.invars
          and not isinstance(eqn.invars[0], jex.core.Literal)
          and eqn.invars[0] in weight_layer):
        weight_layer[eqn.outvars[0]] = weight_layer[eqn.invars[0]]
    if not eqn.primitive.multiple_results:
      outvals = [outvals]
    for var, value in zip(eqn.outvars, outvals):
      env[var] = value
  return [_read(env, v) for v in jaxpr.outvars]


def _inner_invars(eqn) -> Sequence[Any]:
  if eqn.primitive.name in _CALL_PRIMITIVES and "jaxpr" in eqn.params:
    return eqn.params["jaxpr"].jaxpr.invars
  return ()


def _abstract(tree):
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), tree)


def run_with_layer_hook(
    apply_fn: Callable[[Any, jax.Array], jax.Array],
    params: Any,
    inputs: jax.Array,
    kernel_leaf_indices: Sequence[int],
    hook: Hook | None = None,
    visit: Callable[[int], None] | None = None,
    layer_call: LayerCall | None = None,
    small_convs_as_matmul: bool | None = None,
):
  """Runs `apply_fn(params, inputs)` with `hook` on each weight layer's input.

  Args:
    apply_fn: the model, `apply_fn(params, x) -> logits`.
    params: its parameter pytree (concrete or traced).
    inputs: the model input (concrete or traced).
    kernel_leaf_indices: for layer i, the index of its kernel among
      `jax.tree.leaves(params)`.
    hook: `hook(i, activation) -> activation`, called at trace time.
    visit: `visit(i)`, called in program order each time layer i runs.
    layer_call: `layer_call(i, compute, activation) -> output` stands in for
      layer i's primitive (after `hook`): `compute(activation)` runs it, and
      anything else of the right shape may be returned instead.
    small_convs_as_matmul: compute NHWC convolutions with a 1x1 or 2x2
      output map as patches times a matrix (same numbers to float rounding),
      which XLA CPU runs 10-70x faster. None: on when the default backend is
      the CPU.

  Returns:
    The model output, as `apply_fn` would return it.
  """
  closed, out_shape = jax.make_jaxpr(apply_fn, return_shape=True)(
      _abstract(params), _abstract(inputs)
  )
  flat_args = jax.tree.leaves((params, inputs))
  num_param_leaves = len(jax.tree.leaves(params))
  if len(closed.jaxpr.invars) != len(flat_args):
    raise ValueError("apply_fn's traced inputs do not match (params, inputs).")
  weight_layer = {
      closed.jaxpr.invars[leaf]: layer
      for layer, leaf in enumerate(kernel_leaf_indices)
      if leaf < num_param_leaves
  }
  out_tree = jax.tree.structure(out_shape)
  if small_convs_as_matmul is None:
    small_convs_as_matmul = jax.default_backend() == "cpu"
  outs = _replay(closed.jaxpr, closed.consts, flat_args, weight_layer, hook,
                 visit, layer_call, small_convs_as_matmul)
  return jax.tree.unflatten(out_tree, outs)


def layer_call_order(apply_fn, params, inputs, kernel_leaf_indices) -> list[int]:
  """Layer indices in the order the program first uses them as weights."""
  order: list[int] = []
  def visit(index: int) -> None:
    if index not in order:
      order.append(index)
  jax.eval_shape(
      lambda p, x: run_with_layer_hook(apply_fn, p, x, kernel_leaf_indices,
                                       visit=visit),
      _abstract(params), _abstract(inputs),
  )
  return order
