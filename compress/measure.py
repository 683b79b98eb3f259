"""Small measurements shared by quantization (choosing a method) and the benchmark.

* :func:`greedy_seconds`: wall time of one greedy generation of exactly N new tokens.
* :func:`matmul_kernels`: which matrix-multiply ops a forward pass really dispatched.
* :func:`next_token_stats`: teacher-forced next-token accuracy and agreement with a reference.
"""
from __future__ import annotations

import time
from collections import Counter
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode


def generation_kwargs(tokenizer: Any, new_tokens: int) -> dict[str, Any]:
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    # No EOS: every model does exactly the same amount of work. (Not min_new_tokens: its logits
    # processor runs isin over the whole vocabulary at every step, 0.7 ms per token for a 49k
    # vocabulary, work that serving never does and that would be timed as decode.)
    return dict(max_new_tokens=new_tokens, eos_token_id=None, do_sample=False, pad_token_id=pad_id)


@torch.inference_mode()
def greedy_seconds(model: Any, tokenizer: Any, batch: dict[str, torch.Tensor], new_tokens: int) -> tuple[float, torch.Tensor]:
    """(wall seconds, generated token ids) of one greedy generation of exactly ``new_tokens``."""
    start = time.perf_counter()
    out = model.generate(**batch, **generation_kwargs(tokenizer, new_tokens))
    return time.perf_counter() - start, out[:, batch["input_ids"].shape[1]:]


class _OpCounter(TorchDispatchMode):
    """Counts every aten / quantized op as the dispatcher runs it (below autograd and
    decompositions such as linear -> t + mm, so the names are the kernels that really ran)."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[func.overloadpacket._qualified_op_name] += 1
        return func(*args, **(kwargs or {}))


@torch.no_grad()  # not inference_mode: under it the mode would see aten::linear, not the mm it becomes
def matmul_kernels(model: Any, batch: dict[str, torch.Tensor]) -> dict[str, int]:
    """Matrix-multiply ops (name -> calls) of one forward pass: ``aten::mm``/``addmm`` for float
    Linears, ``quantized::linear_dynamic``, ``aten::_weight_int8pack_mm``, ... ."""
    with _OpCounter() as counter:
        model(**batch, use_cache=False)
    return {name: n for name, n in sorted(counter.counts.items())
            if name.startswith("quantized::") or "mm" in name.split("::")[-1] or name == "aten::linear"}


@torch.inference_mode()
def next_token_stats(models: dict[str, Any], tokenizer: Any, texts: list[str], max_length: int,
                     reference: str, batch_size: int = 8) -> dict[str, dict[str, float]]:
    """Per model, over the real tokens of ``texts`` (teacher forcing): next-token ``accuracy``
    against the text itself, ``agreement`` of the argmax with the ``reference`` model's, and the
    largest absolute logit difference from the reference."""
    correct = Counter()
    agree = Counter()
    max_diff: dict[str, float] = {name: 0.0 for name in models}
    count = 0
    pad_added = tokenizer.pad_token is None
    if pad_added:
        tokenizer.pad_token = tokenizer.eos_token
    side, tokenizer.padding_side = tokenizer.padding_side, "right"  # positions line up across models
    try:
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(texts[start:start + batch_size], return_tensors="pt", padding=True,
                              truncation=True, max_length=max_length)
            real = batch["attention_mask"][:, 1:].bool()
            targets = batch["input_ids"][:, 1:][real]
            logits = {name: model(**batch, use_cache=False).logits[:, :-1][real].float()
                      for name, model in models.items()}
            ref_pred = logits[reference].argmax(-1)
            for name, value in logits.items():
                pred = value.argmax(-1)
                correct[name] += int((pred == targets).sum())
                agree[name] += int((pred == ref_pred).sum())
                max_diff[name] = max(max_diff[name], float((value - logits[reference]).abs().max()))
            count += int(real.sum())
    finally:
        tokenizer.padding_side = side
        if pad_added:
            tokenizer.pad_token = None
    return {name: {"accuracy": correct[name] / max(count, 1), "agreement": agree[name] / max(count, 1),
                   "max_logit_diff": max_diff[name]} for name in models}
