"""Vocabulary trimming: keep the tokens a deployed student needs, drop the other embedding rows.

SmolLM2-135M spends 28.3M of its 134.5M parameters on a 49,152-token embedding, and the output
layer shares it: every decoding step multiplies the whole table. A student that serves one
domain reads and writes a small part of that vocabulary (SNIPS train: 9,864 distinct tokens),
so removing the rest makes the model smaller and each step cheaper (vocabulary trimming, as for
monolingual use of multilingual models: Ushio et al. 2023, arXiv:2305.15020).

The tokens kept:

- every token of the given texts (the dataset's prompts and completions);
- every special and added token, and every one-character token (byte-level BPE's alphabet: with
  it any text still tokenizes);
- the lowest ids up to ``size``: byte-level BPE numbers tokens in merge order, commonest first;
- the two parts every kept token is merged from, so the tokenizer can still build it.

Text made only of kept tokens tokenizes exactly as before: BPE picks, at each step, the
lowest-ranked merge that applies, and every merge it used for such text produced a kept token,
so it is still there and still the lowest applicable one. Other text falls back to the smaller
pieces it is made of. The output layer's rows are the kept tokens' rows: over those tokens the
model's next-token scores are the same as before.

Byte-level BPE tokenizers (``tokenizer.json`` with a ``BPE`` model: Llama 3, Qwen2, SmolLM2,
GPT-2 style) only; others are refused.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoTokenizer, PreTrainedModel

from supertiny.errors import UserError


def kept_token_ids(tokenizer: Any, texts: list[str], size: int, also: set[int] | None = None) -> list[int]:
    """Old ids of the tokens to keep, ascending: see the module docstring for which; ``also``:
    ids to keep besides (the special-token ids a model config names)."""
    state = json.loads(tokenizer.backend_tokenizer.to_str())
    vocab: dict[str, int] = state["model"]["vocab"]
    token_of = {i: t for t, i in vocab.items()}
    keep = set(range(min(size, len(tokenizer))))
    keep |= {token_id for ids in tokenizer(texts)["input_ids"] for token_id in ids}
    keep |= {token["id"] for token in state["added_tokens"]}
    keep |= {i for t, i in vocab.items() if len(t) == 1}
    keep |= also or set()
    parts = _merge_parts(state["model"]["merges"])
    pending = [token_of[i] for i in keep if i in token_of]
    while pending:  # close under "made from": a kept token's parts are kept too
        for part in parts.get(pending.pop(), ()):
            if vocab[part] not in keep:
                keep.add(vocab[part])
                pending.append(part)
    return sorted(keep)


def trim_vocabulary(model: PreTrainedModel, tokenizer: Any, texts: list[str], size: int,
                    model_dir: Path | str = "model") -> tuple[PreTrainedModel, Any, dict[str, Any]]:
    """Keep about ``size`` tokens (more if ``texts`` need more); returns the model (changed in
    place), a new tokenizer, and what was removed. ``model_dir`` names the model in errors.
    ``size`` and ``texts`` are checked where the request comes in (:func:`compress.prune.prune`)."""
    state = json.loads(tokenizer.backend_tokenizer.to_str()) if hasattr(tokenizer, "backend_tokenizer") else {}
    if (state.get("model") or {}).get("type") != "BPE":
        raise UserError(f"{model_dir}: vocabulary trimming needs a byte-level BPE tokenizer (tokenizer.json with a BPE "
                        "model, as Llama 3, Qwen2 and SmolLM2 have); leave out --vocab")
    rows = model.get_input_embeddings().weight.shape[0]
    configs = [model.config, getattr(model, "generation_config", None)]
    special_ids = {i for config in configs if config is not None for name in _SPECIAL_IDS
                   for i in _as_list(getattr(config, name, None))}
    keep = kept_token_ids(tokenizer, texts, size, also=special_ids)
    new_id = {old: new for new, old in enumerate(keep)}

    # The tokenizer: kept tokens renumbered in their old order; merges that build a dropped token go.
    bpe = state["model"]
    bpe["vocab"] = {token: new_id[i] for token, i in bpe["vocab"].items() if i in new_id}
    bpe["merges"] = [m for m in bpe["merges"] if "".join(_pair(m)) in bpe["vocab"]]
    for token in state["added_tokens"]:
        token["id"] = new_id[token["id"]]
    for special in ((state.get("post_processor") or {}).get("special_tokens") or {}).values():
        special["ids"] = [new_id[i] for i in special.get("ids", [])]
    new_tokenizer = _rebuilt_tokenizer(tokenizer, state)

    # The model: the kept rows of the embedding, and of the output layer when it has its own.
    index = torch.tensor(keep)
    embedding, head = model.get_input_embeddings(), model.get_output_embeddings()
    tied = head is not None and head.weight is embedding.weight
    new_embedding = nn.Embedding(len(keep), embedding.embedding_dim, dtype=embedding.weight.dtype)
    new_embedding.weight.data = embedding.weight.data[index].clone()
    model.set_input_embeddings(new_embedding)
    if head is not None:
        new_head = nn.Linear(head.in_features, len(keep), bias=head.bias is not None, dtype=head.weight.dtype)
        new_head.weight = new_embedding.weight if tied else nn.Parameter(head.weight.data[index].clone())
        if head.bias is not None:
            new_head.bias = nn.Parameter(head.bias.data[index].clone())
        model.set_output_embeddings(new_head)
    model.config.vocab_size = len(keep)
    for config in configs:
        for name in _SPECIAL_IDS:
            value = getattr(config, name, None) if config is not None else None
            if isinstance(value, int):
                setattr(config, name, new_id[value])
            elif isinstance(value, list):
                setattr(config, name, [new_id[v] for v in value])
    return model, new_tokenizer, {"before": rows, "after": len(keep), "requested": size,
                                  "from_texts": len(texts), "kept_token_ids": keep}


_SPECIAL_IDS = ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id")


def _as_list(value: Any) -> list[int]:
    """A config's token id field (an id, a list of ids, or None) as a list."""
    if isinstance(value, int):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, int)]
    return []


def _pair(merge: str | list[str]) -> tuple[str, str]:
    """A merge as written in tokenizer.json: "a b" (older files) or ["a", "b"]."""
    if isinstance(merge, str):
        left, right = merge.split(" ", 1)
        return left, right
    return merge[0], merge[1]


def _merge_parts(merges: list[Any]) -> dict[str, tuple[str, str]]:
    """Token -> the two tokens its merge joins (the lowest-ranked merge, if several build it)."""
    parts: dict[str, tuple[str, str]] = {}
    for merge in merges:
        left, right = _pair(merge)
        parts.setdefault(left + right, (left, right))
    return parts


def _rebuilt_tokenizer(tokenizer: Any, state: dict[str, Any]) -> Any:
    """The same tokenizer (chat template, special tokens, settings) over the trimmed tokenizer.json."""
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        (Path(tmp) / "tokenizer.json").write_text(json.dumps(state, ensure_ascii=False))
        config_path = Path(tmp) / "tokenizer_config.json"
        config = json.loads(config_path.read_text())
        config.pop("added_tokens_decoder", None)  # keyed by the old ids; tokenizer.json lists them again
        config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False))
        return AutoTokenizer.from_pretrained(tmp)
