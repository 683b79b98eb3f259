"""Compression stage: depth pruning (block influence) and int8 dynamic quantization."""
from compress.prune import PruneConfig, prune_depth
from compress.quantize import load_quantized, quantize_int8

__all__ = ["PruneConfig", "prune_depth", "quantize_int8", "load_quantized"]
