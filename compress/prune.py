"""Depth pruning by block influence (ShortGPT, Men et al. 2024, arXiv:2403.03853).

A decoder layer that barely rotates its input hidden state is close to an identity map and
can be dropped with little damage. Its *block influence* is

    BI_i = 1 - mean over real (attention-masked) tokens of cos(h_in_i, h_out_i)

measured on calibration texts. We score every layer once, then drop the lowest-BI layers one
at a time until the model is small enough. No retraining happens here: a pruned student is
meant to be healed by a short fine-tune afterwards.

Works for Llama-family Hugging Face models (``model.model.layers`` is an ``nn.ModuleList``).

``method="width"`` makes every layer thinner instead (MLP channels and key/value groups ranked by
activation importance, see :mod:`compress.width`); ``method="both"`` drops layers for part of the
budget (``depth_share``) and thins the remaining layers for the rest.

``vocab_size`` first trims the vocabulary to the tokens the dataset uses plus the commonest ones
(:mod:`compress.vocab`); layers and width then only remove what the smaller embedding did not.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional

import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from compress.vocab import trim_vocabulary
from compress.width import attention_shape, prune_width, removable_group_counts
from student.manifest import dir_bytes, write_manifest
from supertiny.errors import UserError

# Texts per forward pass during calibration: small enough that the 31 hidden-state tensors of
# a 135M model at 128 tokens stay well under a GB, large enough to keep the CPU busy.
CALIBRATION_BATCH = 8


class PruneConfig(BaseModel):
    target_param_ratio: float = Field(
        0.8,
        description="Drop layers until total params <= this fraction of the original; in (0, 1].",
    )
    calibration_samples: int = Field(
        64, description="How many calibration texts (from the start of the list) to score layers on; >= 1."
    )
    max_length: int = Field(128, description="Calibration texts are truncated to this many tokens; >= 2.")
    method: Literal["depth", "width", "both"] = Field(
        "depth",
        description="depth: drop whole layers (block influence); width: drop MLP channels and key/value "
        "groups in every layer (activation importance); both: depth for depth_share of the budget, then width.",
    )
    target_params: Optional[int] = Field(
        None, description="Absolute parameter budget; when set it replaces target_param_ratio; >= 1."
    )
    remove_kv_groups: Optional[int] = Field(
        None,
        description="Width: key/value groups (each with its query heads) removed per layer. None: try every "
        "count that fits the budget and keep the one with the lowest loss (on the calibration examples' "
        "completions when given, else on the calibration texts).",
    )
    channel_multiple: int = Field(
        32, description="Width: kept MLP channels per layer are a multiple of this (SIMD- and int4-group-friendly); >= 1."
    )
    depth_share: float = Field(
        0.5, description="Both: the share of the removed parameters that dropping layers may take; in [0, 1]."
    )
    vocab_size: Optional[int] = Field(
        None,
        description="First keep only about this many tokens (every token of the vocabulary texts, then the "
        "commonest), so the embedding shrinks; depth/width pruning then removes the rest of the budget. "
        "None: keep the vocabulary; >= 1.",
    )


def count_params(module: nn.Module) -> int:
    # parameters() yields a tied weight once, so the shared embedding/lm_head counts once.
    return sum(p.numel() for p in module.parameters())


def _decoder_layers(model: PreTrainedModel, model_dir: Path) -> nn.ModuleList:
    layers = getattr(getattr(model, "model", None), "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise UserError(
            f"{model_dir}: {type(model).__name__} has no model.layers ModuleList; "
            "depth pruning supports Llama-family decoder models only"
        )
    if getattr(model.config, "is_heterogeneous", False):
        raise UserError(f"{model_dir}/config.json: per_layer_config models are not supported by depth pruning")
    return layers


@torch.inference_mode()
def block_influence(model: PreTrainedModel, tokenizer: Any, texts: list[str], max_length: int) -> list[float]:
    """BI score per decoder layer (higher = the layer changes its input more = more important)."""
    num_layers = len(model.model.layers)
    cos_sums = torch.zeros(num_layers, dtype=torch.float64)
    token_count = 0

    # hidden_states[-1] is normally replaced by the *post-final-norm* output, which would make
    # the last layer's cosine compare across the RMSNorm weights. transformers 5 reads this
    # config flag to hand back the raw output of the last layer instead; restore it afterwards
    # so it never ends up in the saved config.
    had_flag = "tie_last_hidden_states" in model.config.__dict__
    old_flag = getattr(model.config, "tie_last_hidden_states", None)
    model.config.tie_last_hidden_states = False
    try:
        for start in range(0, len(texts), CALIBRATION_BATCH):
            batch = tokenizer(
                texts[start : start + CALIBRATION_BATCH],
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=max_length,
            )
            out = model(**batch, output_hidden_states=True, use_cache=False)
            hidden = out.hidden_states  # embeddings, then the output of each layer
            if len(hidden) != num_layers + 1:
                raise RuntimeError(f"expected {num_layers + 1} hidden states, got {len(hidden)}")
            mask = batch["attention_mask"].bool()
            for i in range(num_layers):
                # float32 for the cosine: bf16 dot products over 500+ dims lose the small
                # differences between near-identity layers that we are ranking.
                cos = F.cosine_similarity(hidden[i].float(), hidden[i + 1].float(), dim=-1)
                cos_sums[i] += cos[mask].double().sum()
            token_count += int(mask.sum())
    finally:
        if had_flag:
            model.config.tie_last_hidden_states = old_flag
        else:
            del model.config.tie_last_hidden_states
    return [float(1.0 - s / token_count) for s in cos_sums]


def remove_layers(model: PreTrainedModel, drop: set[int]) -> None:
    """Delete decoder layers in place and fix everything that indexes layers by position."""
    config = model.config
    keep = [i for i in range(len(model.model.layers)) if i not in drop]
    model.model.layers = nn.ModuleList(model.model.layers[i] for i in keep)
    for new_idx, layer in enumerate(model.model.layers):
        # The KV cache is a list indexed by attention.layer_idx; stale indices would point past
        # the end of a cache sized from num_hidden_layers (or at another layer's keys).
        if hasattr(layer, "self_attn") and hasattr(layer.self_attn, "layer_idx"):
            layer.self_attn.layer_idx = new_idx
        if hasattr(layer, "layer_idx"):
            layer.layer_idx = new_idx
    config.num_hidden_layers = len(keep)
    # transformers 5 builds the cache (sliding vs full attention per layer) from layer_types,
    # so it must stay one entry per remaining layer, in order.
    if getattr(config, "layer_types", None) is not None:
        config.layer_types = [config.layer_types[i] for i in keep]


def choose_layers(layers: nn.ModuleList, scores: list[float], params_now: int, budget: float) -> set[int]:
    """Lowest-BI layers, one at a time, until the model fits ``budget`` params; keeps >= 1 layer."""
    drop: set[int] = set()
    for i in sorted(range(len(layers)), key=lambda i: scores[i]):
        if params_now <= budget or len(drop) == len(layers) - 1:
            break
        drop.add(i)
        params_now -= count_params(layers[i])
    return drop


def prune(
    model_dir: str | Path,
    out_dir: str | Path,
    config: PruneConfig,
    calibration_texts: list[str],
    vocabulary_texts: list[str] | None = None,
    calibration_examples: list[dict[str, str]] | None = None,
) -> dict[str, Any]:
    """Vocabulary trimming (``config.vocab_size``, keeping every token of ``vocabulary_texts``),
    then depth and/or width pruning to a parameter budget; saves a loadable model dir + manifest.
    ``calibration_examples`` (prompt/completion pairs, the first ``calibration_samples`` used):
    width compares its candidate cuts on their completion loss instead of the texts' loss."""
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    if not 0.0 < config.target_param_ratio <= 1.0:
        raise UserError(f"target_param_ratio={config.target_param_ratio}: must be in (0, 1], e.g. 0.8")
    # Range checks live here rather than in the pydantic model so every bad value surfaces as
    # a one-line UserError, whether the config came from the CLI, a YAML file or Python.
    if config.calibration_samples < 1:
        raise UserError(f"calibration_samples={config.calibration_samples}: must be >= 1, e.g. 64")
    if config.max_length < 2:
        raise UserError(f"max_length={config.max_length}: must be >= 2 tokens, e.g. 128")
    if config.target_params is not None and config.target_params < 1:
        raise UserError(f"target_params={config.target_params}: must be >= 1, e.g. 100000000")
    if config.channel_multiple < 1:
        raise UserError(f"channel_multiple={config.channel_multiple}: must be >= 1, e.g. 32")
    if not 0.0 <= config.depth_share <= 1.0:
        raise UserError(f"depth_share={config.depth_share}: must be in [0, 1], e.g. 0.5")
    if config.vocab_size is not None and config.vocab_size < 1:
        raise UserError(f"vocab_size={config.vocab_size}: must be >= 1, e.g. 16384")
    if config.vocab_size is not None and not vocabulary_texts:
        raise UserError("vocab_size needs vocabulary texts (the dataset's prompts and completions, whose every token "
                        "is kept): pass --calibration-dataset")
    if not (model_dir / "config.json").is_file():
        raise UserError(f"{model_dir}: not a model directory (no config.json); pass a saved model dir")
    if out_dir.resolve() == model_dir.resolve():
        raise UserError(f"{out_dir}: output dir is the input model dir; choose a new directory")
    texts = [t for t in calibration_texts if t.strip()][: config.calibration_samples]
    if not texts:
        raise UserError("calibration_texts: empty; pass a few prompts the model will see (e.g. direct_prompt)")

    # Setup: full-precision model in eval mode, a pad token for batched calibration.
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    model.eval()
    layers = _decoder_layers(model, model_dir)
    if config.method != "depth":
        _check_width_support(model, model_dir, config.remove_kv_groups)
    added_pad = tokenizer.pad_token is None
    if added_pad:
        tokenizer.pad_token = tokenizer.eos_token

    params_before = count_params(model)
    budget = config.target_params if config.target_params is not None else config.target_param_ratio * params_before
    num_layers_before = len(layers)
    scores, drop, width, vocabulary = None, set(), None, None

    # Vocabulary first: the texts' tokens keep their ids' rows, so calibration below sees the same
    # scores over them, and depth/width only have to remove what the embedding did not.
    if config.vocab_size is not None:
        model, tokenizer, vocabulary = trim_vocabulary(model, tokenizer, vocabulary_texts or [], config.vocab_size,
                                                       model_dir)
        del vocabulary["kept_token_ids"]  # the saved tokenizer.json is the record of which

    # Depth: score every layer once (ShortGPT does not re-score after removal), drop the
    # lowest-BI layers until the (depth part of the) budget is met.
    if config.method in ("depth", "both"):
        depth_budget = budget if config.method == "depth" else (
            params_before - config.depth_share * max(params_before - budget, 0))
        scores = block_influence(model, tokenizer, texts, config.max_length)
        drop = choose_layers(layers, scores, params_before, depth_budget)
        remove_layers(model, drop)

    # Width: thin the remaining layers to the full budget (importance measured after depth).
    if config.method in ("width", "both") and count_params(model) > budget:
        model, width = prune_width(model, tokenizer, texts, target_params=budget, max_length=config.max_length,
                                   channel_multiple=config.channel_multiple, remove_kv_groups=config.remove_kv_groups,
                                   examples=(calibration_examples or [])[: config.calibration_samples])
    if added_pad:
        tokenizer.pad_token = None  # calibration-only; the saved tokenizer stays as it was
    params_after = count_params(model)

    # Save: a plain HF model dir, so every later stage loads it like any pretrained model.
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    methods = {"depth": "block_influence_depth", "width": "activation_importance_width",
               "both": "block_influence_depth+activation_importance_width"}
    return write_manifest(
        out_dir,
        kind="pruned",
        parent=str(model_dir),
        method=("vocabulary_trim+" if vocabulary else "") + methods[config.method],
        config=config.model_dump(),
        calibration_texts=len(texts),
        block_influence=scores,
        removed_layers=sorted(drop),
        num_layers_before=num_layers_before,
        num_layers_after=num_layers_before - len(drop),
        width=width,
        vocabulary=vocabulary,
        params_before=params_before,
        params_after=params_after,
        target_params=int(budget),
        target_met=params_after <= budget,
        bytes=dir_bytes(out_dir),
    )


def prune_depth(
    model_dir: str | Path,
    out_dir: str | Path,
    config: PruneConfig,
    calibration_texts: list[str],
) -> dict[str, Any]:
    """Score layers by block influence, drop the least influential, save a loadable model dir."""
    return prune(model_dir, out_dir, config.model_copy(update={"method": "depth"}), calibration_texts)


def _check_width_support(model: PreTrainedModel, model_dir: Path, remove_kv_groups: int | None) -> None:
    """Width pruning needs gated MLPs (gate/up/down) and q/k/v/o attention in every layer."""
    for layer in model.model.layers:
        mlp, attn = getattr(layer, "mlp", None), getattr(layer, "self_attn", None)
        if not all(hasattr(mlp, n) for n in ("gate_proj", "up_proj", "down_proj")) or not all(
                hasattr(attn, n) for n in ("q_proj", "k_proj", "v_proj", "o_proj", "head_dim")):
            raise UserError(f"{model_dir}: {type(model).__name__} layers lack gate/up/down and q/k/v/o projections; "
                            "width pruning supports Llama and Qwen2 models; use --method depth")
    groups = attention_shape(model)[1]
    if remove_kv_groups is not None and not 0 <= remove_kv_groups < groups:
        raise UserError(f"remove_kv_groups={remove_kv_groups}: must be in [0, {groups - 1}] "
                        f"(the model has {groups} key/value groups per layer and keeps at least one)")
    if remove_kv_groups is not None and remove_kv_groups not in removable_group_counts(model):
        raise UserError(f"remove_kv_groups={remove_kv_groups}: the heads left would not divide hidden_size "
                        f"{model.config.hidden_size}, which transformers refuses; use one of "
                        f"{removable_group_counts(model)}")


def prune_summary(manifest: dict[str, Any]) -> dict[str, Any]:
    """What a prune removed, in a few fields for people and ``--json`` (details stay in the manifest)."""
    width = manifest.get("width")
    summary: dict[str, Any] = {
        "method": manifest.get("method"),
        "params": f"{manifest['params_before']} -> {manifest['params_after']}",
        "target_met": manifest.get("target_met"),
        "layers": manifest.get("removed_layers", []),
        "num_layers": f"{manifest['num_layers_before']} -> {manifest['num_layers_after']}",
    }
    vocabulary = manifest.get("vocabulary")
    if vocabulary:
        summary["vocabulary"] = f"{vocabulary['before']} -> {vocabulary['after']} tokens"
    if width:
        summary.update({
            "intermediate_size": f"{width['intermediate_size']['before']} -> {width['intermediate_size']['after']}",
            "mlp_channels_per_layer": width["intermediate_size"]["before"] - width["intermediate_size"]["after"],
            "key_value_groups": f"{width['key_value_groups']['before']} -> {width['key_value_groups']['after']}",
            "attention_heads": f"{width['attention_heads']['before']} -> {width['attention_heads']['after']}",
            "removed_heads_per_layer": width["removed_attention_heads"],
        })
    return summary
