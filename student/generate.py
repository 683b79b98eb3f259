"""Run a trained student: utterance + context -> one parsed call, with latency and token counts.

The prompt is tokenized exactly as TRL's SFTTrainer tokenized it in training: ``tokenizer(prompt)``
with the tokenizer's default special tokens (a BOS only if that tokenizer adds one by default),
so the model sees at inference the same token sequence it was trained to continue.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import torch
from transformers import (
    AutoModelForCausalLM, AutoTokenizer, LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList,
)

from supertiny.errors import UserError
from student.format import direct_prompt, parse_call
from student.manifest import inherited_field, read_manifest


def load_model(path: str | Path) -> tuple[Any, Any]:
    """(model, tokenizer) from a model directory, in eval mode; quantized dirs go through compress."""
    model_dir = Path(path)
    if not model_dir.is_dir():
        raise UserError(f"model path not found: {path} (give a directory written by 'supertiny train' or 'compress')")
    if read_manifest(model_dir).get("kind") == "quantized":
        # Lazy: compress pulls in quantization code that plain students never need.
        from compress.quantize import load_quantized

        model, tokenizer = load_quantized(model_dir)
    else:
        if not (model_dir / "config.json").is_file():
            raise UserError(f"not a model directory (no config.json): {path}")
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModelForCausalLM.from_pretrained(model_dir)
    model.eval()
    return model, tokenizer


@dataclass
class Prediction:
    call: dict[str, Any] | None  # parsed call, None when the output is not a call
    raw: str  # the generated text, first line only
    latency_ms: float  # tokenize + generate + decode
    prompt_tokens: int
    completion_tokens: int  # tokens generated, including a final EOS


class _StopAtNewline(StoppingCriteria):
    """A direct-mode completion is one line: stop as soon as the new text contains a newline.

    Decoding the new tokens (rather than matching a token id) works for any tokenizer, where
    "\\n" may be its own token, merged with others, or split across byte tokens.
    """

    def __init__(self, tokenizer: Any, prompt_len: int):
        self.tokenizer = tokenizer
        self.prompt_len = prompt_len

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        new_text = self.tokenizer.batch_decode(input_ids[:, self.prompt_len :], skip_special_tokens=True)
        return torch.tensor(["\n" in text for text in new_text], dtype=torch.bool, device=input_ids.device)


class _AllowedNames(LogitsProcessor):
    """Greedy decoding that may only spell one of the allowed function names.

    ``sequences`` are the token ids each allowed ``" name"`` adds after the prompt. While the
    generated tokens are a proper prefix of some sequence, every token that would leave all of
    them is masked; once a whole name is spelled the model decodes freely ("(" and arguments).
    No extra forward pass: the constraint rides along the one generation.
    """

    def __init__(self, sequences: list[list[int]], prompt_len: int):
        self.sequences = sequences
        self.prompt_len = prompt_len

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        for row in range(input_ids.shape[0]):  # one row per sampled sequence
            generated = input_ids[row, self.prompt_len:].tolist()
            if any(generated[: len(seq)] == seq for seq in self.sequences if len(generated) >= len(seq)):
                continue  # a whole name is spelled
            allowed = {seq[len(generated)] for seq in self.sequences
                       if len(seq) > len(generated) and seq[: len(generated)] == generated}
            if allowed:
                mask = torch.full_like(scores[row], float("-inf"))
                mask[sorted(allowed)] = 0.0
                scores[row] = scores[row] + mask
        return scores


def function_names_of(path: str | Path) -> list[str] | None:
    """The function names a student was trained to start its answer with."""
    names = inherited_field(path, "function_names")
    return list(names) if names else None


class DirectStudent:
    """A loaded student model answering direct-mode prompts with greedy decoding.

    With ``function_names`` (by default: the names recorded in its manifest lineage) the
    function name is *constrained*: greedy decoding may only spell one of them, then decodes
    the arguments freely. A small model otherwise copies the user's verb ("save ... to ..."
    -> ``save_to_playlist``).

    A student trained in program mode (lineage ``format: program``, see :mod:`student.program`)
    writes lookups and the action in one line; ``domain`` (the one it was trained on) runs the
    lookups with its tools to produce the call.
    """

    def __init__(self, path: str | Path, max_new_tokens: int | None = None, function_names: list[str] | None = None,
                 domain: Any = None, fallback_samples: int = 4, fallback_temperature: float = 0.7):
        self.path = Path(path)
        self.fallback_samples = fallback_samples  # program mode: plans sampled when the greedy one fails
        self.fallback_temperature = fallback_temperature
        self.format = inherited_field(self.path, "format") or "direct"
        if self.format == "program" and domain is None:
            from tools.registry import get_domain

            domain = get_domain(inherited_field(self.path, "domain") or "home")
        self.domain = domain
        self.max_new_tokens = max_new_tokens or (128 if self.format == "program" else 64)
        self.model, self.tokenizer = load_model(self.path)
        pad = self.tokenizer.pad_token_id
        self.pad_token_id = pad if pad is not None else self.tokenizer.eos_token_id
        self.function_names = function_names if function_names is not None else function_names_of(self.path)

    def predict(self, text: str, context: dict[str, Any] | None) -> Prediction:
        start = time.perf_counter()
        prompt = direct_prompt(text, context)
        # Same call as TRL's training-time tokenization (default add_special_tokens).
        inputs = self.tokenizer(prompt, return_tensors="pt")
        prompt_len = inputs["input_ids"].shape[1]
        candidates = self._generate(prompt, inputs, do_sample=False)
        raw, completion_tokens = candidates[0]
        if self.format == "direct":
            call = parse_call(raw)
        else:
            call = self._run_program(raw, context)
            if call is None and self.fallback_samples:
                # The tools rejected the greedy plan (no such room, no such argument...): sample
                # a few more in one batched generation and keep the first the tools accept.
                # A plan longer than the greedy one by more than a few tokens is babble: cap it.
                cap = min(self.max_new_tokens, completion_tokens + 16)
                for raw_sample, tokens in self._generate(prompt, inputs, do_sample=True, max_new_tokens=cap):
                    completion_tokens += tokens
                    call = self._run_program(raw_sample, context)
                    if call is not None:
                        raw = raw_sample
                        break
        latency_ms = (time.perf_counter() - start) * 1000.0
        return Prediction(
            call=call,
            raw=raw,
            latency_ms=latency_ms,
            prompt_tokens=int(prompt_len),
            completion_tokens=int(completion_tokens),
        )

    def _generate(self, prompt: str, inputs: Any, do_sample: bool, max_new_tokens: int | None = None
                  ) -> list[tuple[str, int]]:
        """[(first line of the completion, tokens generated)]: one greedy, or ``fallback_samples`` sampled."""
        prompt_len = inputs["input_ids"].shape[1]
        processors = LogitsProcessorList()
        if self.function_names:
            # The tokens each name adds after this prompt, tokenized together with the prompt as
            # in training ("(" stays out: BPE splits it from the name's letters anyway).
            sequences = [self.tokenizer(f"{prompt} {name}")["input_ids"][prompt_len:] for name in self.function_names]
            processors.append(_AllowedNames(sequences, prompt_len))
        sampling = {"do_sample": True, "temperature": self.fallback_temperature,
                    "num_return_sequences": self.fallback_samples} if do_sample else {"do_sample": False}
        with torch.inference_mode():
            output = self.model.generate(
                **inputs,
                max_new_tokens=max_new_tokens or self.max_new_tokens,
                pad_token_id=self.pad_token_id,
                eos_token_id=self.tokenizer.eos_token_id,
                logits_processor=processors,
                stopping_criteria=StoppingCriteriaList([_StopAtNewline(self.tokenizer, prompt_len)]),
                **sampling,
            )
        results = []
        for row in output[:, prompt_len:]:
            tokens = int((row != self.pad_token_id).sum()) if do_sample else int(row.shape[0])
            results.append((self.tokenizer.decode(row, skip_special_tokens=True).split("\n", 1)[0].strip(), tokens))
        return results

    def _run_program(self, raw: str, context: dict[str, Any] | None) -> dict[str, Any] | None:
        from student.program import ProgramError, parse_program, run_program

        try:
            return run_program(parse_program(raw), self.domain, context)
        except ProgramError:
            return None  # a plan that does not parse or run is a wrong answer

    def predict_many(self, items: Iterable[tuple[str, dict[str, Any] | None] | dict[str, Any]]) -> list[Prediction]:
        """``items``: (text, context) pairs or dicts with "text" and "context"; one generation each, in order."""
        predictions = []
        for item in items:
            text, context = (item["text"], item.get("context")) if isinstance(item, dict) else item
            predictions.append(self.predict(text, context))
        return predictions
