"""Compression stage: depth and width pruning, int8/int4 quantization, and a side-by-side benchmark."""
from compress.prune import PruneConfig, prune, prune_depth
from compress.quantize import QuantizeConfig, load_quantized, quantize, quantize_int8

__all__ = ["PruneConfig", "prune", "prune_depth", "QuantizeConfig", "quantize", "quantize_int8", "load_quantized"]
