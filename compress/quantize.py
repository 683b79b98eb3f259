"""Post-training quantization for fast CPU inference: four methods, measured, one kept.

``int8-dynamic``
    ``torch.ao.quantization.quantize_dynamic``: int8 weights with one scale per output channel;
    activations quantized on the fly per call (one scale per tensor); kernel
    ``quantized::linear_dynamic`` (fbgemm). ``mlp.down_proj`` and the tied ``lm_head`` stay float
    (see :func:`quantize_linears`).
``int8-smooth``
    SmoothQuant (Xiao et al., 2023) then int8 dynamic for *every* Linear, ``down_proj`` and
    ``lm_head`` included; the embedding as int8 rows. Smoothing divides each input channel's
    outliers out of the activations and into the weights, folded exactly into the RMSNorm (or
    ``up_proj``) before, with factors from the calibration texts (:func:`smooth_activations`),
    so one int8 scale per activation tensor no longer rounds ordinary values to zero. fbgemm's
    int8 GEMV reads weights at about 3x the rate of ``_weight_int8pack_mm`` on this machine's
    CPU (one thread, decode: 576->1536 in 47 against 124 us, the 49k-row head 1.3 against
    3.9 ms), so this is the fastest int8 method. ``lm_head`` gets its own int8 copy (untied:
    the embedding must not be smoothed). Needs calibration texts.
``int8-weight``
    Weight-only int8, one scale per output channel; activations stay floating point (bf16 into
    the kernel); kernel ``aten::_weight_int8pack_mm``. No activation rounding, so ``down_proj``
    and the ``lm_head`` can be quantized too: the input embedding and ``lm_head`` share one int8
    table when tied, which reads 4x fewer bytes per token for the largest matrix of a small model.
``int4-weight``
    Weight-only int4, asymmetric, one scale and zero point per group of ``group_size`` inputs
    (round to nearest); kernel ``aten::_weight_int4pack_mm_for_cpu`` (tinygemm layout). Embedding
    and ``lm_head`` stay int8 as above (like llama.cpp's Q4 files keep them at higher precision).

``onnx-int8`` / ``onnx-int4`` / ``onnx-fp32``
    The model exported to ONNX Runtime (:mod:`compress.onnx`): int8 or int4 weights in blocks of
    ``group_size`` inputs (``MatMulNBits``, int8 activations), or float32 weights for the runtime
    alone. Served by :class:`compress.onnx.OnnxCausalLM`, whose per-step overhead is a fraction of
    eager PyTorch's.

Both weight-only kernels ship with torch (no torchao: its 0.18 int4 path needs the GPU ``mslk``
package, and its int8 path calls the same aten op as ours). They need shapes the kernels
accept (measured on torch 2.13: ``_weight_int8pack_mm`` returns garbage or crashes when
``in_features`` is not a multiple of 16); a Linear that does not fit stays in the next-best
form and the manifest lists it.

``auto`` builds every method but ``onnx-fp32``, measures on held-out texts how much next-token
accuracy each loses against the float model, times greedy decoding, and keeps the fastest one
within ``max_drop``.

A quantized dir is not a ``save_pretrained`` directory: it holds ``config.json`` + tokenizer +
``quantized_state_dict.pt`` (plain tensors, loaded with ``weights_only=True``) and the method in
the manifest; :func:`load_quantized` rebuilds the same module tree and loads the weights as
saved, without quantizing anything again.
"""
from __future__ import annotations

import copy
import shutil
import statistics
import tempfile
import warnings
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field
from torch import nn
from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig, PreTrainedModel

from compress.measure import greedy_seconds, matmul_kernels, next_token_stats
from compress.onnx import ONNX_METHODS, OnnxCausalLM, export_onnx, graph_ops, load_onnx
from compress.prune import count_params
from student.manifest import dir_bytes, read_manifest, write_manifest
from supertiny.errors import UserError

STATE_DICT_NAME = "quantized_state_dict.pt"
FLOAT_LINEARS = ("mlp.down_proj",)  # kept in float by int8-dynamic: see quantize_linears
TORCH_METHODS = ("int8-dynamic", "int8-smooth", "int8-weight", "int4-weight")
METHODS = TORCH_METHODS + ONNX_METHODS
AUTO_METHODS = TORCH_METHODS + ("onnx-int8", "onnx-int4")  # onnx-fp32 is a yardstick, not a compression
NEEDS_TEXTS = ("auto", "int8-smooth")  # measuring needs held-out texts; smoothing needs calibration texts
LEGACY_METHODS = {"torch_dynamic_int8": "int8-dynamic"}  # manifests written before the methods had names
INT8_K_MULTIPLE = 32  # in_features the int8 weight-only kernel gets right (16 measured; margin for other CPUs)
INT4_N_MULTIPLE = 16  # out_features the int4 packing accepts
INT4_GROUP_SIZES = (32, 64, 128, 256)  # what _weight_int4pack_mm_for_cpu accepts


class QuantizeConfig(BaseModel):
    method: Literal["auto", "int8-dynamic", "int8-smooth", "int8-weight", "int4-weight",
                    "onnx-int8", "onnx-int4", "onnx-fp32"] = Field(
        "auto", description="auto: try every method, keep the fastest whose accuracy drop is within max_drop."
    )
    max_drop: float = Field(
        0.01,
        description="auto: largest allowed drop in teacher-forced next-token accuracy on the held-out "
        "texts, float model minus quantized model (0.01 = one point); >= 0.",
    )
    group_size: int = Field(32, description="int4-weight and onnx-int8/int4: inputs per scale (and zero point); "
                            "32, 64, 128 or 256.")
    smooth_alpha: float = Field(
        0.75, description="int8-smooth: migration strength, 0..1 (SmoothQuant's alpha). 0.75 kept the next-token "
        "accuracy of a pruned SmolLM2 student where 0.5 lost 1.2 points; 0.5 is the paper's default.")
    eval_texts: int = Field(32, description="Held-out texts the accuracy drop is measured on; >= 1.")
    max_length: int = Field(128, description="Texts are truncated to this many tokens; >= 2.")
    timing_prompts: int = Field(3, description="Prompts each method's greedy decoding is timed on; >= 1.")
    new_tokens: int = Field(16, description="Tokens generated per timed prompt; >= 2.")
    threads: int | None = Field(
        None, description="torch threads while timing (default: the process's, one per core). Time with the "
        "count the model will serve with: at batch 1 on a 2-core AMD EPYC, int8-smooth was fastest at one "
        "thread and int8-weight at two; >= 1.")


# ---- int8-dynamic ---------------------------------------------------------------------------


def quantize_linears(model: PreTrainedModel) -> PreTrainedModel:
    """Swap every decoder nn.Linear for an int8 dynamic one, in place; lm_head stays float.

    lm_head is tied to the input embedding in our models. Quantizing it would replace it by a
    module with its own int8 copy of the embedding matrix: the tie is broken, the file gets
    *bigger* (fp32 embedding + int8 head instead of one shared matrix), and the single
    per-tensor scale over a 49k-row vocab matrix costs the most logit precision of any layer.
    Keeping it float keeps the tie, so load_state_dict refills both names from one tensor.

    The MLP ``down_proj`` layers stay float too. Their input (the gated MLP activation) has
    outliers in the thousands in SmolLM2, and one int8 scale per activation tensor then rounds
    every ordinary value to zero. Measured on the demo student (60 test tasks, exact match):
    fp32 28.3%, every Linear int8 per-tensor 18.3%, per-channel 21.7%, per-channel with
    down_proj float 26.7% -- at 1.8x the fp32 speed.
    """
    names = [name for name, module in model.named_modules()
             if isinstance(module, nn.Linear) and module is not model.get_output_embeddings()
             and not name.endswith(FLOAT_LINEARS)]
    _dynamic_int8(model, names)
    return model


def _dynamic_int8(model: nn.Module, names: list[str]) -> None:
    """The named Linears to torch.ao dynamic int8 (per-channel weights), in place."""
    # torch 2.13 warns on every call that torch.ao.quantization is deprecated (and that
    # quantized tensor dtypes are): the API still works and is what we want until torchao is a
    # dependency, so keep those warnings out of user output here and only here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        quantize_dynamic(model, {name: per_channel_dynamic_qconfig for name in names}, dtype=torch.qint8,
                         inplace=True)


# ---- int8-smooth: SmoothQuant, then every Linear int8 dynamic ---------------------------------


@torch.no_grad()
def input_channel_max(model: PreTrainedModel, tokenizer: Any, texts: list[str],
                      max_length: int) -> dict[str, torch.Tensor]:
    """Per Linear: the largest |x_j| of each input channel over ``texts`` (forward hooks)."""
    maxima: dict[str, torch.Tensor] = {}

    def hook(name: str):
        def record(module: nn.Module, inputs: tuple, output: Any) -> None:
            x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).abs().amax(dim=0).float()
            maxima[name] = torch.maximum(maxima[name], x) if name in maxima else x
        return record

    handles = [module.register_forward_hook(hook(name)) for name, module in model.named_modules()
               if isinstance(module, nn.Linear)]
    try:
        for text in texts:
            batch = tokenizer([text], return_tensors="pt", truncation=True, max_length=max_length)
            model(**batch, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return maxima


def _smoothing(x_max: torch.Tensor, linears: list[nn.Linear], alpha: float) -> torch.Tensor:
    """SmoothQuant's per-channel factor s_j = max|X_j|^alpha / max|W_j|^(1-alpha)."""
    w_max = torch.stack([m.weight.detach().abs().amax(dim=0) for m in linears]).amax(dim=0).float()
    return (x_max.clamp(min=1e-5) ** alpha / w_max.clamp(min=1e-5) ** (1 - alpha)).clamp(min=1e-5)


@torch.no_grad()
def smooth_activations(model: PreTrainedModel, tokenizer: Any, texts: list[str], alpha: float = 0.5,
                       max_length: int = 128) -> int:
    """SmoothQuant (Xiao et al., 2023), in place: divide each outlier input channel j of a Linear
    by s_j and multiply the Linear's column j by s_j, so per-tensor int8 activations stop
    rounding ordinary values to zero. The division is folded, exactly, into what produces the
    input: the RMSNorm weight before q/k/v, gate/up and lm_head; the rows of ``up_proj``
    before ``down_proj`` (its input is act(gate) * up). ``lm_head`` gets its own weight (untied
    from the embedding: the embedding must not be scaled). Llama/Qwen-style decoders only.
    Returns the number of Linears smoothed."""
    maxima = input_channel_max(model, tokenizer, texts, max_length)
    smoothed = 0
    for index, layer in enumerate(model.model.layers):
        prefix = f"model.layers.{index}."
        attn, mlp = layer.self_attn, layer.mlp
        pairs = [(layer.input_layernorm, [attn.q_proj, attn.k_proj, attn.v_proj], prefix + "self_attn.q_proj"),
                 (layer.post_attention_layernorm, [mlp.gate_proj, mlp.up_proj], prefix + "mlp.gate_proj")]
        for norm, linears, name in pairs:
            s = _smoothing(maxima[name], linears, alpha)
            norm.weight.div_(s.to(norm.weight.dtype))
            for linear in linears:
                linear.weight.mul_(s[None, :])
            smoothed += len(linears)
        s = _smoothing(maxima[prefix + "mlp.down_proj"], [mlp.down_proj], alpha)
        mlp.up_proj.weight.div_(s[:, None])
        if mlp.up_proj.bias is not None:
            mlp.up_proj.bias.div_(s)
        mlp.down_proj.weight.mul_(s[None, :])
        smoothed += 1
    head = _untie_head(model)
    model.config.tie_word_embeddings = False  # saved with the config: load_quantized builds two tables
    head_name = next(name for name, module in model.named_modules() if module is head)
    s = _smoothing(maxima[head_name], [head], alpha)
    model.model.norm.weight.div_(s.to(model.model.norm.weight.dtype))
    head.weight.mul_(s[None, :])
    return smoothed + 1


def _untie_head(model: PreTrainedModel) -> nn.Module:
    """Give ``lm_head`` its own copy of the weight it shares with the input embedding, if it does."""
    head = model.get_output_embeddings()
    if head.weight is model.get_input_embeddings().weight:
        head.weight = nn.Parameter(head.weight.detach().clone())
    return head


def quantize_smooth(model: PreTrainedModel, from_weights: bool = True) -> dict[str, list[str]]:
    """Every Linear, lm_head included, to int8 dynamic (per-channel weights); the embedding to
    int8 rows. Expects :func:`smooth_activations` to have run (``from_weights``) or the model to
    be built from a smoothed config (untied ``lm_head``, for loading)."""
    if not from_weights:
        _untie_head(model)
    emb_name, _ = _int8_embedding(model, from_weights)
    names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    _dynamic_int8(model, names)
    return {"int8-dynamic": sorted(names), "int8": [emb_name]}


# ---- weight-only int8 / int4 modules --------------------------------------------------------


def int8_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per row: (int8 weight, bf16 scale) with weight ~= int8 * scale."""
    scales = (weight.abs().amax(dim=1).clamp(min=1e-8) / 127).to(torch.bfloat16)
    # Round with the bf16 scale the kernel will multiply by, not the float32 one.
    q = torch.round(weight / scales.float()[:, None]).clamp(-128, 127).to(torch.int8)
    return q, scales


class Int8WeightLinear(nn.Module):
    """``y = x W^T + b`` with W stored as int8 rows times a bf16 scale per row
    (``aten::_weight_int8pack_mm``; activations go in as bf16, come out in the input dtype)."""

    def __init__(self, in_features: int, out_features: int, bias: bool) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight_int8", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("scales", torch.ones(out_features, dtype=torch.bfloat16))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)

    @classmethod
    def from_float(cls, linear: nn.Linear) -> "Int8WeightLinear":
        module = cls(linear.in_features, linear.out_features, linear.bias is not None)
        module.weight_int8, module.scales = int8_rows(linear.weight.detach().float())
        if linear.bias is not None:
            module.bias = linear.bias.detach().float().clone()
        return module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features).to(torch.bfloat16)
        out = torch.ops.aten._weight_int8pack_mm(flat, self.weight_int8, self.scales)
        out = out.reshape(*x.shape[:-1], self.out_features).to(x.dtype)
        return out + self.bias if self.bias is not None else out


class Int8Embedding(nn.Module):
    """An embedding table stored as int8 rows times a bf16 scale per row (the same format as
    :class:`Int8WeightLinear`, so a tied ``lm_head`` shares these very tensors)."""

    def __init__(self, num_embeddings: int, embedding_dim: int) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.register_buffer("weight_int8", torch.zeros(num_embeddings, embedding_dim, dtype=torch.int8))
        self.register_buffer("scales", torch.ones(num_embeddings, dtype=torch.bfloat16))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        rows = F.embedding(input_ids, self.weight_int8).float()
        return rows * self.scales[input_ids].float().unsqueeze(-1)


def _int4_codes(weight: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric int4 per group of ``group_size`` inputs, in the tinygemm convention
    ``w ~= (q - 8) * scale + zero``: (q in 0..15 as float [N, K/g, g], bf16 scales and zeros [N, K/g])."""
    n, k = weight.shape
    groups = weight.reshape(n, k // group_size, group_size)
    low, high = groups.amin(-1), groups.amax(-1)
    scales = ((high - low).clamp(min=1e-8) / 15).to(torch.bfloat16)
    zeros = (low + 8 * scales.float()).to(torch.bfloat16)
    q = torch.round((groups - zeros.float()[..., None]) / scales.float()[..., None] + 8).clamp(0, 15)
    return q, scales, zeros


def int4_groups(weight: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`_int4_codes` stored: (q as uint8 two per byte [N, K/2], bf16 scales_and_zeros [K/g, N, 2])."""
    q, scales, zeros = _int4_codes(weight, group_size)
    q = q.reshape(weight.shape).to(torch.uint8)
    packed = q[:, 0::2] | (q[:, 1::2] << 4)  # plain nibbles, even input in the low half
    scales_and_zeros = torch.stack([scales, zeros], dim=-1).transpose(0, 1).contiguous()
    return packed, scales_and_zeros


def int4_dequantized(weight: torch.Tensor, group_size: int) -> torch.Tensor:
    """The float weight that :class:`Int4WeightLinear` computes with: ``weight`` rounded to the
    int4 grid of :func:`int4_groups` (the same codes, scales and zero points) and read back."""
    q, scales, zeros = _int4_codes(weight.detach().float(), group_size)
    dequantized = (q - 8) * scales.float()[..., None] + zeros.float()[..., None]
    return dequantized.reshape(weight.shape).to(weight.dtype)


class Int4FakeQuant(nn.Module):
    """Parametrization for quantization-aware training: the forward pass sees the int4 weight,
    the gradient reaches the float weight unchanged (straight-through estimator)."""

    def __init__(self, group_size: int) -> None:
        super().__init__()
        self.group_size = group_size

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + (int4_dequantized(weight, self.group_size) - weight).detach()


def int4_fits(module: nn.Linear, group_size: int) -> bool:
    """Whether int4-weight stores this Linear as int4 (the kernel's shape rules); else it stays int8."""
    k, n = module.in_features, module.out_features
    return k % group_size == 0 and n % INT4_N_MULTIPLE == 0 and k % INT8_K_MULTIPLE == 0


def int4_aware(model: PreTrainedModel, group_size: int) -> list[str]:
    """Make every Linear that int4-weight will store as int4 compute with its int4 weight from
    now on (:class:`Int4FakeQuant`), so training learns around the rounding. Returns their names.
    :func:`int4_unaware` takes it off before saving; the float weights kept are the ones whose
    int4 rounding was trained, so ``compress quantize --method int4-weight`` reproduces it exactly."""
    from torch.nn.utils import parametrize

    head = model.get_output_embeddings()
    names = [name for name, module in model.named_modules()
             if isinstance(module, nn.Linear) and module is not head and int4_fits(module, group_size)]
    for name in names:
        parametrize.register_parametrization(model.get_submodule(name), "weight", Int4FakeQuant(group_size))
    return names


def int4_unaware(model: PreTrainedModel) -> None:
    """Undo :func:`int4_aware`: plain Linears holding the trained float weights."""
    from torch.nn.utils import parametrize

    for module in model.modules():
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)


class Int4WeightLinear(nn.Module):
    """``y = x W^T + b`` with W in int4 groups (``aten::_weight_int4pack_mm_for_cpu``).

    The state dict keeps plain nibbles (``weight_uint4x2``); the kernel's own packed layout is
    made at first use, because it depends on the CPU's vector width and must not be saved."""

    def __init__(self, in_features: int, out_features: int, bias: bool, group_size: int) -> None:
        super().__init__()
        self.in_features, self.out_features, self.group_size = in_features, out_features, group_size
        self.register_buffer("weight_uint4x2", torch.zeros(out_features, in_features // 2, dtype=torch.uint8))
        self.register_buffer("scales_and_zeros",
                             torch.zeros(in_features // group_size, out_features, 2, dtype=torch.bfloat16))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)
        self._kernel_weight: torch.Tensor | None = None

    @classmethod
    def from_float(cls, linear: nn.Linear, group_size: int) -> "Int4WeightLinear":
        module = cls(linear.in_features, linear.out_features, linear.bias is not None, group_size)
        module.weight_uint4x2, module.scales_and_zeros = int4_groups(linear.weight.detach().float(), group_size)
        if linear.bias is not None:
            module.bias = linear.bias.detach().float().clone()
        return module

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._kernel_weight = None  # new nibbles: repack at next use

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._kernel_weight is None:
            nibbles = torch.stack([self.weight_uint4x2 & 15, self.weight_uint4x2 >> 4], dim=-1)
            q = nibbles.reshape(self.out_features, self.in_features).to(torch.int32)
            self._kernel_weight = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
        flat = x.reshape(-1, self.in_features).to(torch.bfloat16)
        out = torch.ops.aten._weight_int4pack_mm_for_cpu(flat, self._kernel_weight, self.group_size,
                                                         self.scales_and_zeros)
        out = out.reshape(*x.shape[:-1], self.out_features).to(x.dtype)
        return out + self.bias if self.bias is not None else out


def _int8_embedding(model: PreTrainedModel, from_weights: bool) -> tuple[str, Int8Embedding]:
    """Swap the input embedding for int8 rows (empty ones when not ``from_weights``); (its name, the table)."""
    embedding = model.get_input_embeddings()
    name = next(n for n, module in model.named_modules() if module is embedding)
    table = Int8Embedding(embedding.num_embeddings, embedding.embedding_dim)
    if from_weights:
        table.weight_int8, table.scales = int8_rows(embedding.weight.detach().float())
    _set_module(model, name, table)
    return name, table


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def quantize_weights(model: PreTrainedModel, bits: int, group_size: int = 32,
                     from_weights: bool = True) -> dict[str, list[str]]:
    """Weight-only quantization in place: every decoder Linear to int4 (``bits=4``) or int8, the
    embedding and lm_head to int8 (one shared table when tied). ``from_weights=False`` builds
    empty modules of the same shapes, for loading a saved state dict into.
    Returns the module names per storage format."""
    embedding, head = model.get_input_embeddings(), model.get_output_embeddings()
    tied = head is not None and head.weight is embedding.weight
    kept: dict[str, list[str]] = {"int4": [], "int8": [], "float": []}
    for name, module in list(model.named_modules()):
        if not isinstance(module, nn.Linear):
            continue
        k, n, has_bias = module.in_features, module.out_features, module.bias is not None
        if bits == 4 and module is not head and int4_fits(module, group_size):
            new = (Int4WeightLinear.from_float(module, group_size) if from_weights
                   else Int4WeightLinear(k, n, has_bias, group_size))
            kept["int4"].append(name)
        elif k % INT8_K_MULTIPLE == 0:
            new = Int8WeightLinear.from_float(module) if from_weights else Int8WeightLinear(k, n, has_bias)
            kept["int8"].append(name)
        else:
            kept["float"].append(name)
            continue
        _set_module(model, name, new)

    # The embedding: int8 rows in the lm_head's format; one table for both names when tied.
    emb_name, table = _int8_embedding(model, from_weights)
    kept["int8"].append(emb_name)
    new_head = model.get_output_embeddings()
    if tied and isinstance(new_head, Int8WeightLinear):
        new_head.weight_int8, new_head.scales = table.weight_int8, table.scales  # same tensors: one table
    return kept


def quantize_model(model: PreTrainedModel, method: str, group_size: int = 32,
                   from_weights: bool = True) -> dict[str, list[str]]:
    """Apply ``method`` in place; returns the module names per storage format."""
    if method == "int8-smooth":
        return quantize_smooth(model, from_weights=from_weights)
    if method == "int8-dynamic":
        quantize_linears(model)
        dynamic = torch.ao.nn.quantized.dynamic.Linear
        return {"int8-dynamic": [n for n, m in model.named_modules() if isinstance(m, dynamic)],
                "float": [n for n, m in model.named_modules()
                          if type(m) is nn.Linear or m is model.get_input_embeddings()]}
    return quantize_weights(model, bits=4 if method == "int4-weight" else 8, group_size=group_size,
                            from_weights=from_weights)


# ---- the job --------------------------------------------------------------------------------


def _check(model_dir: Path, out_dir: Path, config: QuantizeConfig) -> None:
    # Range checks here rather than in pydantic: every bad value is one line naming the field.
    if not (model_dir / "config.json").is_file():
        raise UserError(f"{model_dir}: not a model directory (no config.json); pass a saved model dir")
    if out_dir.resolve() == model_dir.resolve():
        raise UserError(f"{out_dir}: output dir is the input model dir; choose a new directory")
    if config.max_drop < 0:
        raise UserError(f"max_drop={config.max_drop}: must be >= 0, e.g. 0.01")
    if not 0 <= config.smooth_alpha <= 1:
        raise UserError(f"smooth_alpha={config.smooth_alpha}: must be between 0 and 1, e.g. 0.75")
    if config.group_size not in INT4_GROUP_SIZES:
        raise UserError(f"group_size={config.group_size}: must be one of {INT4_GROUP_SIZES}")
    for field, least in (("eval_texts", 1), ("max_length", 2), ("timing_prompts", 1), ("new_tokens", 2),
                         ("threads", 1)):
        if getattr(config, field) is not None and getattr(config, field) < least:
            raise UserError(f"{field}={getattr(config, field)}: must be >= {least}")


def measure_methods(float_model: PreTrainedModel, variants: dict[str, PreTrainedModel], tokenizer: Any,
                    texts: list[str], config: QuantizeConfig) -> dict[str, dict[str, Any]]:
    """Accuracy drop, agreement with the float model, decode speed and the matmul kernels that
    ran, per method, all on the same texts; timings interleave the models prompt by prompt, so a
    burst of load from elsewhere slows them alike."""
    models = {"float32": float_model, **variants}
    stats = next_token_stats(models, tokenizer, texts[:config.eval_texts], config.max_length, reference="float32",
                             batch_size=4)
    prompts = texts[:config.timing_prompts]
    first_token: dict[str, list[float]] = {name: [] for name in models}
    whole: dict[str, list[float]] = {name: [] for name in models}
    kernels = {}
    for name, model in models.items():  # warm-up (first-call allocations, int4 packing)
        batch = tokenizer([prompts[0]], return_tensors="pt", truncation=True, max_length=config.max_length)
        greedy_seconds(model, tokenizer, batch, 2)
        kernels[name] = onnx_kernels(model) if isinstance(model, OnnxCausalLM) else matmul_kernels(model, batch)
    for prompt in prompts:
        batch = tokenizer([prompt], return_tensors="pt", truncation=True, max_length=config.max_length)
        for name, model in models.items():
            first_token[name].append(greedy_seconds(model, tokenizer, batch, 1)[0])
            whole[name].append(greedy_seconds(model, tokenizer, batch, config.new_tokens)[0])
    report = {}
    for name in models:
        # Decode time per token: the N-token generation minus its prefill + first token.
        decode = max(statistics.median(whole[name]) - statistics.median(first_token[name]), 1e-9)
        report[name] = {**stats[name], "accuracy_drop": stats["float32"]["accuracy"] - stats[name]["accuracy"],
                        "decode_ms_per_token": 1000 * decode / (config.new_tokens - 1),
                        "kernels": kernels[name]}
    return report


def onnx_kernels(model: OnnxCausalLM) -> dict[str, int]:
    """The matrix-multiply operators of an exported graph (``onnxruntime::MatMulNBits`` for int8/int4
    weights, ``MatMul`` for float ones), named like :func:`matmul_kernels` names torch's."""
    return {f"onnxruntime::{op}": n for op, n in graph_ops(model.path).items() if "MatMul" in op}


def quantize(model_dir: str | Path, out_dir: str | Path, config: QuantizeConfig,
             texts: list[str] | None = None) -> dict[str, Any]:
    """Quantize a (possibly pruned) model dir with ``config.method`` (or the best of
    :data:`AUTO_METHODS` for ``auto``), save it with its measurements in the manifest, return
    the manifest.

    ``texts``: held-out texts for the accuracy and speed measurements (required for ``auto``;
    without them an explicit method is applied unmeasured). No method fits anything to them.
    """
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    _check(model_dir, out_dir, config)
    texts = [t for t in (texts or []) if t.strip()]
    if config.method in NEEDS_TEXTS and not texts:
        raise UserError(f"quantize --method {config.method}: no calibration texts to measure accuracy on and to "
                        "smooth with; pass --calibration-dataset (or generate tasks) or choose another --method")
    # Smoothing factors come from texts other than the held-out ones when there are enough.
    smoothing_texts = texts[config.eval_texts:] if len(texts) > config.eval_texts else texts

    # Setup: the kernels take float32 Linears, whatever dtype the dir was saved in.
    float_model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    params = count_params(float_model)  # counted before packing: packed weights are not Parameters
    methods = list(AUTO_METHODS) if config.method == "auto" else [config.method]
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # ONNX candidates are exported next to out_dir; only the kept one is copied into it.
    with tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=f".{out_dir.name}-candidates-") as scratch:
        variants, formats = {}, {}
        for method in methods:
            if method in ONNX_METHODS:
                export_onnx(model_dir, Path(scratch) / method, method, config.group_size)
                variants[method] = OnnxCausalLM(Path(scratch) / method, threads=config.threads)
                formats[method] = {"onnx-graph": [f"{op} x{n}" for op, n in graph_ops(Path(scratch) / method).items()]}
                continue
            # The last one may consume the float model; the others quantize a copy.
            variants[method] = float_model if method == methods[-1] and not texts else copy.deepcopy(float_model)
            if method == "int8-smooth":
                smooth_activations(variants[method], tokenizer, smoothing_texts, config.smooth_alpha, config.max_length)
            formats[method] = quantize_model(variants[method], method, config.group_size)

        measured: dict[str, dict[str, Any]] = {}
        if texts:
            threads = torch.get_num_threads()
            torch.set_num_threads(config.threads or threads)
            try:
                measured = measure_methods(float_model, variants, tokenizer, texts, config)
            finally:
                torch.set_num_threads(threads)
        chosen = methods[0]
        if config.method == "auto":
            within = [m for m in methods if measured[m]["accuracy_drop"] <= config.max_drop]
            if not within:
                drops = ", ".join(f"{m} {measured[m]['accuracy_drop']:.3f}" for m in methods)
                raise UserError(f"quantize --max-drop {config.max_drop}: every method loses more accuracy ({drops}); "
                                "raise --max-drop or keep the float model")
            chosen = min(within, key=lambda m: measured[m]["decode_ms_per_token"])

        if chosen in ONNX_METHODS:
            shutil.copytree(Path(scratch) / chosen, out_dir, dirs_exist_ok=True)
        else:
            _save_quantized(variants[chosen], tokenizer, out_dir)
    return write_manifest(
        out_dir,
        kind="quantized",
        parent=str(model_dir),
        method=chosen,
        quantization={"method": chosen, "group_size": config.group_size,
                      **({"smooth_alpha": config.smooth_alpha, "smoothing_texts": len(smoothing_texts)}
                         if chosen == "int8-smooth" else {}),
                      **({"runtime": "onnxruntime-genai"} if chosen in ONNX_METHODS else {})},
        config=config.model_dump(),
        quantized_modules=formats[chosen],
        kernels=measured.get(chosen, {}).get("kernels"),
        measured=measured,  # every method tried (and float32), on the same texts
        held_out_texts=min(len(texts), config.eval_texts),
        params=params,
        bytes=dir_bytes(out_dir),
    )


def _save_quantized(model: PreTrainedModel, tokenizer: Any, out_dir: Path) -> None:
    """config + generation config + tokenizer + the quantized state dict, for :func:`load_quantized`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model.config.dtype = torch.float32  # what load_quantized must rebuild before swapping modules
    model.config.save_pretrained(out_dir)
    if model.generation_config is not None:
        model.generation_config.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    # torch.save keeps storage sharing, so a tied table is written once.
    torch.save(model.state_dict(), out_dir / STATE_DICT_NAME)


def quantize_int8(model_dir: str | Path, out_dir: str | Path) -> dict[str, Any]:
    """int8 dynamic quantization, unmeasured (what ``supertiny demo`` has always used)."""
    return quantize(model_dir, out_dir, QuantizeConfig(method="int8-dynamic"))


def load_quantized(path: str | Path) -> tuple[PreTrainedModel, Any]:
    """Rebuild the architecture from config, swap in the same quantized modules (empty), load
    the saved weights as they are."""
    path = Path(path)
    manifest = read_manifest(path)
    method = (manifest.get("quantization") or {}).get("method") or manifest.get("method") or "int8-dynamic"
    method = LEGACY_METHODS.get(method, method)
    if method in ONNX_METHODS:
        return load_onnx(path)
    weights = path / STATE_DICT_NAME
    if not weights.is_file() or not (path / "config.json").is_file():
        raise UserError(f"{path}: no quantized model here (needs config.json and {STATE_DICT_NAME}); run quantize first")
    if method not in METHODS:
        raise UserError(f"{path}/supertiny_manifest.json: unknown quantization method {method!r}; "
                        f"expected one of {', '.join(METHODS)}")

    config = AutoConfig.from_pretrained(path)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.eval()
    # Same module tree as at save time, so every key has a home (int8-dynamic quantizes the
    # random init once: torch.ao has no empty constructor for its packed weights).
    quantize_model(model, method, (manifest.get("quantization") or {}).get("group_size", 32), from_weights=False)
    # The packed params serialize as plain (qint8 tensor, bias) tuples, which the safe
    # weights_only unpickler accepts in torch 2.13, so no arbitrary-pickle loading is needed.
    # Rebuilding quantized tensors goes through the deprecated TypedStorage path and warns
    # once per tensor; that is torch internals, not something the user can act on.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        state = torch.load(weights, map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    if (path / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    return model, tokenizer
