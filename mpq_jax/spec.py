"""LayerSpec: which parameter leaves are quantized, in forward order; quantize_params."""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from mpq_jax import intercept
from mpq_jax import quant

LeafSelector = Callable[[str, Any], bool]


def path_to_name(path) -> str:
  """'features/0/kernel' style name of a pytree key path."""
  parts = []
  for key in path:
    for attribute in ("key", "name", "idx"):
      if hasattr(key, attribute):
        parts.append(str(getattr(key, attribute)))
        break
    else:
      parts.append(str(key))
  return "/".join(parts)


def is_weight_kernel(name: str, leaf: Any) -> bool:
  """Default selection: conv and dense kernels (leaves named 'kernel', rank >= 2)."""
  return name.split("/")[-1] == "kernel" and np.ndim(leaf) >= 2


def select_by_regex(pattern: str) -> LeafSelector:
  """Selects leaves whose '/'-joined path matches `pattern` (re.search)."""
  compiled = re.compile(pattern)
  return lambda name, leaf: bool(compiled.search(name)) and np.ndim(leaf) >= 2


@dataclasses.dataclass(frozen=True, kw_only=True)
class LayerSpec:
  """The quantized layers of a model, in the order the forward pass uses them.

  Attributes:
    names: layer names (the kernel's tree path without the final 'kernel').
    leaf_indices: index of each kernel in `jax.tree.leaves(params)`.
    shapes: kernel shapes.
    num_params: parameters per quantized kernel (the paper's p_i).
    total_params: every float parameter of the model, quantized or not.
  """

  names: tuple[str, ...]
  leaf_indices: tuple[int, ...]
  shapes: tuple[tuple[int, ...], ...]
  num_params: tuple[int, ...]
  total_params: int

  @property
  def num_layers(self) -> int:
    return len(self.names)

  @property
  def num_params_array(self) -> np.ndarray:
    return np.asarray(self.num_params, np.int64)

  @property
  def output_channels(self) -> tuple[int, ...]:
    """Channels that keep their own scale under per-channel quantization."""
    return tuple(shape[-1] for shape in self.shapes)


def build_layer_spec(
    apply_fn: Callable[[Any, jax.Array], jax.Array],
    params: Any,
    example_input: Any,
    select: LeafSelector = is_weight_kernel,
) -> LayerSpec:
  """Finds the quantizable leaves of `params` and orders them as the forward pass.

  The order comes from tracing `apply_fn` (shapes only, nothing runs): a
  layer's position is where its kernel first feeds a convolution or matmul.
  Selected leaves the program never uses as a weight come last, in tree order.

  Args:
    apply_fn: `apply_fn(params, x) -> logits`.
    params: the parameter pytree.
    example_input: an input (or a `jax.ShapeDtypeStruct`) of the right shape.
    select: `select(name, leaf) -> bool` picks the leaves to quantize.

  Returns:
    The LayerSpec.
  """
  leaves_with_paths = jax.tree_util.tree_flatten_with_path(params)[0]
  selected = [
      (index, path_to_name(path), leaf)
      for index, (path, leaf) in enumerate(leaves_with_paths)
      if select(path_to_name(path), leaf)
  ]
  if not selected:
    names = [path_to_name(path) for path, _ in leaves_with_paths][:10]
    raise ValueError(
        "no parameter leaf was selected for quantization (leaves seen:"
        f" {names}...): pass `select=` (e.g. mpq_jax.select_by_regex("
        "'kernel$')) matching your model's weight names."
    )
  leaf_indices = [index for index, _, _ in selected]
  order = intercept.layer_call_order(apply_fn, params, example_input,
                                     leaf_indices)
  order += [i for i in range(len(selected)) if i not in order]
  selected = [selected[i] for i in order]
  total_params = sum(
      int(np.size(leaf)) for _, leaf in leaves_with_paths
      if jnp.issubdtype(jnp.result_type(leaf), jnp.floating)
  )
  return LayerSpec(
      names=tuple(re.sub(r"/kernel$", "", name) for _, name, _ in selected),
      leaf_indices=tuple(index for index, _, _ in selected),
      shapes=tuple(tuple(np.shape(leaf)) for _, _, leaf in selected),
      num_params=tuple(int(np.size(leaf)) for _, _, leaf in selected),
      total_params=total_params,
  )


def check_finite_params(params: Any, spec: LayerSpec) -> None:
  """Raises if a quantized kernel holds NaN or inf (its scale would be too)."""
  leaves = jax.tree.leaves(params)
  for name, index in zip(spec.names, spec.leaf_indices):
    if not np.all(np.isfinite(np.asarray(leaves[index]))):
      raise ValueError(
          f"layer {name!r} has non-finite weights (NaN or inf): its scale"
          " max|w| would be meaningless. Fix the checkpoint or training run"
          " that produced these parameters."
      )


def quantize_params(
    params: Any,
    bits: jax.Array,
    spec: LayerSpec,
    *,
    per_channel: bool = False,
) -> Any:
  """Replaces each quantized kernel by its symmetric fake-quantized version.

  Pure and jit/vmap-able: `bits` is an int array of shape [num_layers] and may
  be traced. With concrete bits the values are also checked on the host.

  Args:
    params: the full-precision parameter pytree.
    bits: one bit-width per layer of `spec`, in spec order.
    spec: the LayerSpec of these params.
    per_channel: one scale per output channel instead of per tensor.

  Returns:
    A pytree of the same structure with quantized kernels.
  """
  if np.shape(bits) != (spec.num_layers,):
    raise ValueError(
        f"bit vector has shape {np.shape(bits)} but the layer spec has"
        f" {spec.num_layers} quantized layers: give one bit-width per layer,"
        " in the order of LayerSpec.names."
    )
  if not isinstance(bits, jax.core.Tracer):
    quant.check_weight_bits(bits, spec.num_layers)
  bits = jnp.asarray(bits, jnp.int32)
  channel_axis = -1 if per_channel else None
  return replace_kernels(params, spec, lambda layer, kernel: (
      quant.quantize_symmetric(kernel, bits[layer], channel_axis)))


def replace_kernels(params: Any, spec: LayerSpec,
                    new_kernel: Callable[[int, Any], Any],
                    layers=None) -> Any:
  """`params` with kernel i of `spec` replaced by `new_kernel(i, kernel)`.

  Every layer of the spec, or only those in `layers`; pure, for tracing.
  """
  leaves, treedef = jax.tree.flatten(params)
  for layer in range(spec.num_layers) if layers is None else layers:
    index = spec.leaf_indices[layer]
    leaves[index] = new_kernel(layer, leaves[index])
  return jax.tree.unflatten(treedef, leaves)
