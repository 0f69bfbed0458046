"""mpq_jax: mixed-precision quantization of JAX models by Monte Carlo KL sampling.

Soufleri & Roy, "Network Compression via Mixed Precision Quantization Using a
Multi-Layer Perceptron for the Bit-Width Allocation", IEEE Access 9, 2021.
"""

from mpq_jax.activations import calibrate_activation_ranges
from mpq_jax.activations import make_quantized_apply
from mpq_jax.allocator import allocate_bits
from mpq_jax.allocator import allocate_for_budget
from mpq_jax.allocator import Allocator
from mpq_jax.allocator import train_allocator
from mpq_jax.budget import budget_bytes
from mpq_jax.budget import size_table
from mpq_jax.evaluation import make_top1_evaluator
from mpq_jax.export import export_allocation
from mpq_jax.export import ExportedModel
from mpq_jax.metrics import compression
from mpq_jax.metrics import kl_divergence
from mpq_jax.metrics import model_bytes
from mpq_jax.metrics import weight_compression
from mpq_jax.nnx_adapter import functional_model
from mpq_jax.qwix_handoff import qwix_rules
from mpq_jax.quant import quantize_asymmetric
from mpq_jax.quant import quantize_symmetric
from mpq_jax.quant import symmetric_codes
from mpq_jax.sampling import KLEvaluator
from mpq_jax.sampling import make_kl_evaluator
from mpq_jax.sampling import pick_vmap_width
from mpq_jax.sampling import sample_bit_configs
from mpq_jax.search import choose_bit_range
from mpq_jax.spec import build_layer_spec
from mpq_jax.spec import LayerSpec
from mpq_jax.spec import quantize_params
from mpq_jax.spec import select_by_regex

__all__ = [
    "calibrate_activation_ranges",
    "make_quantized_apply",
    "allocate_bits",
    "allocate_for_budget",
    "Allocator",
    "train_allocator",
    "budget_bytes",
    "size_table",
    "make_top1_evaluator",
    "export_allocation",
    "ExportedModel",
    "compression",
    "kl_divergence",
    "model_bytes",
    "weight_compression",
    "functional_model",
    "qwix_rules",
    "quantize_asymmetric",
    "quantize_symmetric",
    "symmetric_codes",
    "make_kl_evaluator",
    "pick_vmap_width",
    "KLEvaluator",
    "sample_bit_configs",
    "choose_bit_range",
    "build_layer_spec",
    "LayerSpec",
    "quantize_params",
    "select_by_regex",
]

__version__ = "0.1.0"
