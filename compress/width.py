"""Width pruning by activation importance (Minitron, Muralidharan et al. 2024, arXiv:2407.14679).

Instead of dropping whole layers, make every layer thinner:

* **MLP channels.** Channel ``j`` of a gated MLP is row ``j`` of ``gate_proj`` and ``up_proj`` and
  column ``j`` of ``down_proj``. Its importance is the mean ``|act(gate(x)) * up(x)|_j`` over the
  real tokens of the calibration texts: the input ``down_proj`` sees. A channel that is always
  near zero contributes nothing and goes first.
* **Attention, by key/value group.** A head's importance is the mean L2 norm of its output (the
  slice of the ``o_proj`` input that belongs to it). With grouped-query attention several query
  heads share one key/value head; removing a query head alone would break the
  ``num_attention_heads / num_key_value_heads`` ratio every layer relies on, so a *group* (one
  key/value head and its query heads) is the unit: its importance is the sum over its heads.

A Hugging Face config has one ``intermediate_size`` and one head count for all layers, so every
layer loses the same *number* of channels and groups (Minitron does the same); *which* ones is
decided per layer. How to split the budget between the MLP and attention is decided by trying
every count of removed groups that fits (0, 1, ... unless fixed by ``remove_kv_groups``), filling
the rest of the budget with MLP channels, and keeping the candidate with the lowest loss. Given
prompt/completion examples, that is the loss on the completions alone, the tokens the student is
trained and judged on: the full-text loss is dominated by the prompts (on SNIPS, the user's words)
and once picked a cut whose completion loss was 5.6 times the other's. Without examples it is the
next-token loss on the calibration texts. The result is an ordinary model directory (updated
``intermediate_size``, head counts, explicit ``head_dim``), for Llama and Qwen2 (q/k/v biases).
"""
from __future__ import annotations

import copy
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel

# Texts per calibration forward pass (as in depth pruning).
CALIBRATION_BATCH = 8


def attention_shape(model: PreTrainedModel) -> tuple[int, int, int]:
    """(query heads, key/value groups, head_dim), read from the first layer's modules."""
    config = model.config
    attn = model.model.layers[0].self_attn
    head_dim = attn.head_dim
    num_heads = attn.q_proj.out_features // head_dim
    num_groups = attn.k_proj.out_features // head_dim
    if num_heads != config.num_attention_heads or num_groups != config.num_key_value_heads:
        raise RuntimeError(f"config says {config.num_attention_heads}/{config.num_key_value_heads} heads, "
                           f"q_proj/k_proj say {num_heads}/{num_groups}")
    return num_heads, num_groups, head_dim


def mlp_channel_params(mlp: nn.Module) -> int:
    """Parameters that one MLP channel owns: a row of gate/up (+ their biases), a column of down."""
    params = mlp.gate_proj.in_features + mlp.up_proj.in_features + mlp.down_proj.out_features
    return params + (mlp.gate_proj.bias is not None) + (mlp.up_proj.bias is not None)


def kv_group_params(attn: nn.Module, heads_per_group: int, head_dim: int) -> int:
    """Parameters that one key/value group owns: its q/k/v rows (+ biases) and its o_proj columns."""
    hidden = attn.q_proj.in_features
    rows = (heads_per_group + 2) * head_dim  # q rows of its heads, then its k and v rows
    biases = sum(heads_per_group * head_dim if proj is attn.q_proj else head_dim
                 for proj in (attn.q_proj, attn.k_proj, attn.v_proj) if proj.bias is not None)
    return rows * hidden + biases + heads_per_group * head_dim * attn.o_proj.out_features


@torch.inference_mode()
def activation_importance(model: PreTrainedModel, tokenizer: Any, texts: list[str],
                          max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per layer: mean |MLP activation| per channel ``[L, intermediate]`` and summed per-head
    output norm per key/value group ``[L, groups]``, over the real tokens of ``texts``."""
    layers = model.model.layers
    num_heads, num_groups, head_dim = attention_shape(model)
    channel_sums = torch.zeros(len(layers), model.config.intermediate_size, dtype=torch.float64)
    head_sums = torch.zeros(len(layers), num_heads, dtype=torch.float64)
    mask: dict[str, torch.Tensor] = {}  # the current batch's attention mask, for the hooks

    def mlp_hook(i: int):
        def hook(module: nn.Module, args: tuple) -> None:
            act = args[0].float()[mask["real"]]  # [tokens, intermediate]: act(gate) * up
            channel_sums[i] += act.abs().sum(0).double()
        return hook

    def attn_hook(i: int):
        def hook(module: nn.Module, args: tuple) -> None:
            out = args[0].float()[mask["real"]]  # [tokens, heads * head_dim], before o_proj
            head_sums[i] += out.view(out.shape[0], num_heads, head_dim).norm(dim=-1).sum(0).double()
        return hook

    handles = []
    for i, layer in enumerate(layers):
        handles.append(layer.mlp.down_proj.register_forward_pre_hook(mlp_hook(i)))
        handles.append(layer.self_attn.o_proj.register_forward_pre_hook(attn_hook(i)))
    tokens = 0
    try:
        for start in range(0, len(texts), CALIBRATION_BATCH):
            batch = tokenizer(texts[start:start + CALIBRATION_BATCH], return_tensors="pt", padding=True,
                              truncation=True, max_length=max_length)
            mask["real"] = batch["attention_mask"].bool()
            model(**batch, use_cache=False)
            tokens += int(mask["real"].sum())
    finally:
        for handle in handles:
            handle.remove()
    # Query heads of group g are g * heads_per_group ... (g + 1) * heads_per_group - 1
    # (repeat_kv expands each key/value head to consecutive query heads).
    group_scores = head_sums.view(len(layers), num_groups, num_heads // num_groups).sum(-1)
    return (channel_sums / tokens).float(), (group_scores / tokens).float()


def _sliced_linear(linear: nn.Linear, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None) -> nn.Linear:
    """A new Linear holding the kept output rows / input columns (and bias entries) of ``linear``."""
    weight = linear.weight.data
    if rows is not None:
        weight = weight[rows]
    if cols is not None:
        weight = weight[:, cols]
    bias = linear.bias
    new = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, dtype=weight.dtype, device=weight.device)
    new.weight.data.copy_(weight)
    if bias is not None:
        new.bias.data.copy_(bias.data[rows] if rows is not None else bias.data)
    return new


def shrink_mlp(mlp: nn.Module, keep: torch.Tensor) -> None:
    """Keep only the channels ``keep`` (sorted indices) of a gated MLP, in place."""
    mlp.gate_proj = _sliced_linear(mlp.gate_proj, rows=keep)
    mlp.up_proj = _sliced_linear(mlp.up_proj, rows=keep)
    mlp.down_proj = _sliced_linear(mlp.down_proj, cols=keep)
    if hasattr(mlp, "intermediate_size"):
        mlp.intermediate_size = len(keep)


def shrink_attention(attn: nn.Module, keep_groups: torch.Tensor, heads_per_group: int, head_dim: int) -> None:
    """Keep only the key/value groups ``keep_groups`` (sorted) and their query heads, in place."""
    kv_rows = (keep_groups[:, None] * head_dim + torch.arange(head_dim)).flatten()
    heads = (keep_groups[:, None] * heads_per_group + torch.arange(heads_per_group)).flatten()
    q_rows = (heads[:, None] * head_dim + torch.arange(head_dim)).flatten()
    attn.q_proj = _sliced_linear(attn.q_proj, rows=q_rows)
    attn.k_proj = _sliced_linear(attn.k_proj, rows=kv_rows)
    attn.v_proj = _sliced_linear(attn.v_proj, rows=kv_rows)
    attn.o_proj = _sliced_linear(attn.o_proj, cols=q_rows)
    # The forward reshapes by head_dim and repeats each kv head num_key_value_groups times: the
    # ratio is unchanged, but keep any cached head counts truthful.
    for name, value in (("num_heads", len(heads)), ("num_key_value_heads", len(keep_groups))):
        if hasattr(attn, name):
            setattr(attn, name, value)


def apply_width(model: PreTrainedModel, channel_scores: torch.Tensor, group_scores: torch.Tensor,
                keep_channels: int, keep_groups: int) -> dict[str, Any]:
    """Shrink every layer to its ``keep_channels`` most important MLP channels and
    ``keep_groups`` most important key/value groups; update the config. Returns what was removed."""
    num_heads, num_groups, head_dim = attention_shape(model)
    heads_per_group = num_heads // num_groups
    removed_channels, removed_groups = [], []  # one list per layer
    for i, layer in enumerate(model.model.layers):
        # topk then sort: the kept channels stay in their original order (nothing else changes).
        keep_c = channel_scores[i].topk(keep_channels).indices.sort().values
        keep_g = group_scores[i].topk(keep_groups).indices.sort().values
        removed_channels.append(sorted(set(range(channel_scores.shape[1])) - set(keep_c.tolist())))
        removed_groups.append(sorted(set(range(num_groups)) - set(keep_g.tolist())))
        if keep_channels < channel_scores.shape[1]:
            shrink_mlp(layer.mlp, keep_c)
        if keep_groups < num_groups:
            shrink_attention(layer.self_attn, keep_g, heads_per_group, head_dim)
    config = model.config
    config.head_dim = head_dim  # no longer hidden_size // num_attention_heads once heads go
    config.intermediate_size = keep_channels
    config.num_attention_heads = keep_groups * heads_per_group
    config.num_key_value_heads = keep_groups
    return {
        "intermediate_size": {"before": channel_scores.shape[1], "after": keep_channels},
        "key_value_groups": {"before": num_groups, "after": keep_groups},
        "attention_heads": {"before": num_heads, "after": keep_groups * heads_per_group},
        "head_dim": head_dim,
        # Per layer (after any depth pruning), indices in the parent's numbering.
        "removed_mlp_channels": removed_channels,
        "removed_kv_groups": removed_groups,
        "removed_attention_heads": [[g * heads_per_group + h for g in groups for h in range(heads_per_group)]
                                    for groups in removed_groups],
    }


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # a tied weight counts once


def removable_group_counts(model: PreTrainedModel) -> list[int]:
    """How many key/value groups per layer may go: transformers refuses a config whose hidden size
    is not a multiple of its number of attention heads (even with an explicit head_dim), so a
    4-head model cannot keep 3."""
    num_heads, num_groups, _ = attention_shape(model)
    heads_per_group = num_heads // num_groups
    return [removed for removed in range(num_groups)
            if model.config.hidden_size % ((num_groups - removed) * heads_per_group) == 0]


def width_candidates(model: PreTrainedModel, target_params: float, current_params: int,
                     channel_multiple: int, remove_kv_groups: int | None) -> list[tuple[int, int]]:
    """(kept MLP channels, kept key/value groups) per layer for each way to meet the budget.

    For each count of removed groups, the MLP loses just enough channels to reach the budget,
    rounded so the kept count is a multiple of ``channel_multiple``. When even the thinnest model
    misses the budget, the thinnest one is the only candidate.
    """
    layers = model.model.layers
    num_heads, num_groups, head_dim = attention_shape(model)
    intermediate = model.config.intermediate_size
    per_channel = len(layers) * mlp_channel_params(layers[0].mlp)
    per_group = len(layers) * kv_group_params(layers[0].self_attn, num_heads // num_groups, head_dim)
    smallest_channels = min(channel_multiple, intermediate)
    to_remove = current_params - target_params
    if to_remove <= 0:
        return [(intermediate, num_groups)]
    group_counts = [remove_kv_groups] if remove_kv_groups is not None else removable_group_counts(model)
    candidates = []
    for removed_groups in group_counts:
        rest = to_remove - removed_groups * per_group
        keep = intermediate
        if rest > 0:
            keep = (intermediate - math.ceil(rest / per_channel)) // channel_multiple * channel_multiple
        if keep >= smallest_channels:
            candidates.append((keep, num_groups - removed_groups))
    if not candidates:
        removed_groups = remove_kv_groups if remove_kv_groups is not None else max(group_counts)
        candidates.append((smallest_channels, num_groups - removed_groups))
    return candidates


@torch.inference_mode()
def calibration_loss(model: PreTrainedModel, tokenizer: Any, texts: list[str], max_length: int) -> float:
    """Mean next-token cross-entropy over the real tokens of ``texts``."""
    total, count = 0.0, 0
    for start in range(0, len(texts), CALIBRATION_BATCH):
        batch = tokenizer(texts[start:start + CALIBRATION_BATCH], return_tensors="pt", padding=True,
                          truncation=True, max_length=max_length)
        logits = model(**batch, use_cache=False).logits[:, :-1].float()
        labels = batch["input_ids"][:, 1:].masked_fill(batch["attention_mask"][:, 1:] == 0, -100)
        total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                 ignore_index=-100, reduction="sum").item()
        count += int((labels != -100).sum())
    return total / max(count, 1)


def prune_width(model: PreTrainedModel, tokenizer: Any, texts: list[str], *, target_params: float,
                max_length: int, channel_multiple: int, remove_kv_groups: int | None,
                examples: list[dict[str, str]] | None = None) -> tuple[PreTrainedModel, dict]:
    """Score channels and groups once, try each candidate split, return the best pruned model
    (a new object when candidates had to be compared) and a report of what it removed.
    ``examples`` (prompt/completion pairs): compare candidates on their completion loss."""
    channel_scores, group_scores = activation_importance(model, tokenizer, texts, max_length)
    candidates = width_candidates(model, target_params, _params(model), channel_multiple, remove_kv_groups)
    only = len(candidates) == 1  # nothing to compare: prune the model itself, skip the loss

    def loss_of(candidate: PreTrainedModel) -> float:
        if examples:
            # Imported here: student.distill imports compress.quantize, which imports compress.prune.
            from student.distill import model_completion_loss

            return model_completion_loss(candidate, tokenizer, examples)
        return calibration_loss(candidate, tokenizer, texts, max_length)

    tried, best = [], None  # best: (loss, pruned model, report)
    for keep_channels, keep_groups in candidates:
        candidate = model if only else copy.deepcopy(model)
        report = apply_width(candidate, channel_scores, group_scores, keep_channels, keep_groups)
        loss = None if only else loss_of(candidate)
        tried.append({"intermediate_size": keep_channels, "key_value_groups": keep_groups,
                      "params": _params(candidate), "calibration_loss": loss})
        if best is None or loss < best[0]:
            best = (loss, candidate, report)
    _, pruned, report = best
    report["candidates"] = tried
    if not only:  # the loss the candidates started from, and what it was measured on
        report["calibration_loss_before"] = loss_of(model)
        report["calibration_loss_on"] = (f"completions of {len(examples)} examples" if examples
                                         else f"{len(texts)} calibration texts")
    report["mean_mlp_channel_importance"] = channel_scores.mean(1).tolist()
    report["kv_group_importance"] = group_scores.tolist()
    return pruned, report
