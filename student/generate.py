"""Run a trained student: utterance + context -> one parsed call, with latency and token counts.

The prompt is tokenized exactly as TRL's SFTTrainer tokenized it in training: ``tokenizer(prompt)``
with the tokenizer's default special tokens (a BOS only if that tokenizer adds one by default),
so the model sees at inference the same token sequence it was trained to continue.
"""
from __future__ import annotations

import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import torch
from transformers import (
    AutoModelForCausalLM, AutoTokenizer, LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList,
)

from supertiny.errors import UserError
from student.format import direct_prompt
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
    generations: int = 1  # 2 when the tools rejected the greedy plan and fallback plans were sampled


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

    ``sequences[i]`` are the token ids each allowed ``" name"`` adds after prompt ``i`` (rows of a
    sampled batch map to their prompt: ``row // rows_per_prompt``). While a row's generated
    tokens are a proper prefix of some sequence, every token that would leave all of them is
    masked; once a whole name is spelled the model decodes freely ("(" and arguments). No extra
    forward pass: the constraint rides along the one generation.
    """

    def __init__(self, sequences: list[list[list[int]]], prompt_len: int, rows_per_prompt: int = 1):
        self.sequences = sequences
        self.prompt_len = prompt_len
        self.rows_per_prompt = rows_per_prompt

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        for row in range(input_ids.shape[0]):
            sequences = self.sequences[row // self.rows_per_prompt]
            generated = input_ids[row, self.prompt_len:].tolist()
            if any(generated[: len(seq)] == seq for seq in sequences if len(generated) >= len(seq)):
                continue  # a whole name is spelled
            allowed = {seq[len(generated)] for seq in sequences
                       if len(seq) > len(generated) and seq[: len(generated)] == generated}
            if allowed:
                mask = torch.full_like(scores[row], float("-inf"))
                mask[sorted(allowed)] = 0.0
                scores[row] = scores[row] + mask
        return scores


def quoted_values(text: str) -> list[str]:
    """The string literals of a call's text, in order; the last one may still be open (no closing
    quote yet). Backslash escapes are kept as the character they escape."""
    values, current, in_string, escaped = [], [], False, False
    for char in text:
        if not in_string:
            if char == '"':
                in_string, current = True, []
            continue
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == '"':
            values.append("".join(current))
            in_string = False
        else:
            current.append(char)
    if in_string:
        values.append("".join(current))
    return values


class _ValuesFromRequest(LogitsProcessor):
    """Greedy decoding whose quoted argument values are verbatim spans of the request.

    For domains whose arguments are copied from the utterance (SNIPS slots): a small model
    otherwise rewrites rare words it has to copy ("lofty fake anagram" -> "lifted fake
    anagram"). At each step the candidates are tried in the model's order among its ``top_k``
    best; every one whose text would put a non-span into a quoted value is masked, so greedy
    picks the best that keeps every value a substring of the request. When none of the ``top_k``
    fits, the step is left to the model. Greedy only: it masks just the tokens ranked above the
    first that fits.
    """

    def __init__(self, tokenizer: Any, requests: list[str], prompt_len: int, top_k: int = 32):
        self.tokenizer = tokenizer
        self.requests = requests
        self.prompt_len = prompt_len
        self.top_k = top_k

    def _fits(self, ids: list[int], request: str) -> bool:
        # A token can end inside a multi-byte character: judge the characters decoded so far.
        text = self.tokenizer.decode(ids, skip_special_tokens=True).rstrip("\ufffd")
        return all(value in request for value in quoted_values(text))

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        for row in range(input_ids.shape[0]):
            generated = input_ids[row, self.prompt_len:].tolist()
            candidates = scores[row].topk(min(self.top_k, scores.shape[-1])).indices.tolist()
            for rank, token in enumerate(candidates):
                if self._fits(generated + [token], self.requests[row]):
                    scores[row, candidates[:rank]] = float("-inf")
                    break
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
                 domain: Any = None, fallback_samples: int = 4, fallback_temperature: float = 0.7, seed: int = 0,
                 format: str | None = None):
        self.path = Path(path)
        self.fallback_samples = fallback_samples  # program mode: plans sampled when the greedy one fails
        self.fallback_temperature = fallback_temperature
        self.seed = seed  # of those samples
        # ``format`` for a directory whose manifest is not written yet (measured while it is made)
        self.format = format or inherited_field(self.path, "format") or "direct"
        lineage_domain = inherited_field(self.path, "domain")
        if domain is None:
            from tools.registry import BUILTIN_DOMAINS, get_domain

            # program plans need the tools; a direct student only the domain's decoding flags
            if self.format == "program" or lineage_domain in BUILTIN_DOMAINS:
                domain = get_domain(lineage_domain or "home")
        self.domain = domain
        # Arguments copied from the request (SNIPS slots): values are decoded as spans of it.
        self.values_from_request = bool(getattr(domain, "values_from_request", False)) and self.format == "direct"
        self.max_new_tokens = max_new_tokens or (128 if self.format == "program" else 64)
        self.model, self.tokenizer = load_model(self.path)
        if self.tokenizer.pad_token is None:  # batches need one; these rows end at EOS anyway
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.tokenizer.padding_side = "left"  # generation continues every row from the same index
        self.pad_token_id = self.tokenizer.pad_token_id
        self.function_names = function_names if function_names is not None else function_names_of(self.path)

    def predict(self, text: str, context: dict[str, Any] | None) -> Prediction:
        return self.predict_batch([(text, context)])[0]

    def predict_batch(self, items: list[tuple[str, dict[str, Any] | None]]) -> list[Prediction]:
        """Greedy answers to several requests in one left-padded generation.

        On a CPU, decoding is bound by reading the weights once per step, so a batch of 8 costs
        little more per step than one request. Each prediction's ``latency_ms`` is the batch's
        wall time: what every request in it waited. A program plan the tools reject falls back
        to sampling (one more generation per failed request, seeded by the request).
        """
        start = time.perf_counter()
        prompts = [direct_prompt(text, context) for text, context in items]
        # Same call as TRL's training-time tokenization (default add_special_tokens), padded on the left.
        inputs = self.tokenizer(prompts, return_tensors="pt", padding=True)
        prompt_lens = [int(n) for n in inputs["attention_mask"].sum(dim=1)]
        requests = [text.strip() for text, _ in items]
        raws, tokens = map(list, zip(*self._generate(prompts, prompt_lens, inputs, do_sample=False, requests=requests)))
        calls = [self._call(raw, context) for raw, (_, context) in zip(raws, items)]
        generations = [1] * len(items)
        # Retry only the plans that ended by themselves: a line that ran to max_new_tokens is
        # babble (an untrained model's) that sampling would not fix, at the highest cost in tokens.
        failed = [i for i, call in enumerate(calls) if call is None and tokens[i] < self.max_new_tokens]
        if self.format == "program" and self.fallback_samples and failed:
            # The tools rejected these greedy plans (no such room, no such argument...): sample a
            # few more per request and keep the first the tools accept.
            for i in failed:
                generations[i] = 2
                for raw, n in self._sampled_plans(prompts[i], prompt_lens[i], tokens[i]):
                    tokens[i] += n
                    calls[i] = self._call(raw, items[i][1])
                    if calls[i] is not None:
                        raws[i] = raw
                        break
        latency_ms = (time.perf_counter() - start) * 1000.0
        return [Prediction(call=call, raw=raw, latency_ms=latency_ms, prompt_tokens=prompt_len,
                           completion_tokens=int(n), generations=g)
                for call, raw, prompt_len, n, g in zip(calls, raws, prompt_lens, tokens, generations)]

    def _sampled_plans(self, prompt: str, prompt_len: int, greedy_tokens: int) -> list[tuple[str, int]]:
        """``fallback_samples`` sampled plans for one request, in one generation. Seeded by the
        request itself, inside a forked RNG: the same request gets the same samples whatever else
        shares its batch, and the caller's random state is untouched. A plan longer than the
        greedy one by more than a few tokens is babble: capped there."""
        inputs = self.tokenizer([prompt], return_tensors="pt")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed + zlib.crc32(prompt.encode("utf-8")))
            return self._generate([prompt], [prompt_len], inputs, do_sample=True,
                                  max_new_tokens=min(self.max_new_tokens, greedy_tokens + 16))

    def _generate(self, prompts: list[str], prompt_lens: list[int], inputs: Any, do_sample: bool,
                  max_new_tokens: int | None = None, requests: list[str] | None = None) -> list[tuple[str, int]]:
        """[(first line of the completion, tokens generated)] per row: one greedy row per prompt,
        or ``fallback_samples`` sampled rows per prompt. ``requests``: the utterances, for
        greedy decoding whose quoted values must be spans of them."""
        padded_len = inputs["input_ids"].shape[1]
        rows_per_prompt = self.fallback_samples if do_sample else 1
        processors = LogitsProcessorList()
        if self.function_names:
            # The tokens each name adds after a prompt, tokenized together with the prompt as in
            # training ("(" stays out: BPE splits it from the name's letters anyway).
            sequences = [[self.tokenizer(f"{prompt} {name}")["input_ids"][n:] for name in self.function_names]
                         for prompt, n in zip(prompts, prompt_lens)]
            processors.append(_AllowedNames(sequences, padded_len, rows_per_prompt))
        if self.values_from_request and requests and not do_sample:
            processors.append(_ValuesFromRequest(self.tokenizer, requests, padded_len))
        sampling = {"do_sample": True, "temperature": self.fallback_temperature,
                    "num_return_sequences": rows_per_prompt} if do_sample else {"do_sample": False}
        with torch.inference_mode():
            output = self.model.generate(
                **inputs,
                max_new_tokens=max_new_tokens or self.max_new_tokens,
                pad_token_id=self.pad_token_id,
                eos_token_id=self.tokenizer.eos_token_id,
                logits_processor=processors,
                stopping_criteria=StoppingCriteriaList([_StopAtNewline(self.tokenizer, padded_len)]),
                **sampling,
            )
        results = []
        for row in output[:, padded_len:]:
            tokens = _generated_length(row.tolist(), self.pad_token_id, self.tokenizer.eos_token_id)
            results.append((self.tokenizer.decode(row, skip_special_tokens=True).split("\n", 1)[0].strip(), tokens))
        return results

    def _call(self, raw: str, context: dict[str, Any] | None) -> dict[str, Any] | None:
        from student.program import completion_call  # a plan that does not parse or run is a wrong answer

        return completion_call(raw, self.format, self.domain, context)

    def predict_many(self, items: Iterable[tuple[str, dict[str, Any] | None] | dict[str, Any]],
                     batch_size: int = 1) -> list[Prediction]:
        """``items``: (text, context) pairs or dicts with "text" and "context"; answers in order,
        ``batch_size`` requests per generation."""
        pairs = [(item["text"], item.get("context")) if isinstance(item, dict) else item for item in items]
        predictions = []
        for i in range(0, len(pairs), batch_size):
            predictions += self.predict_batch(pairs[i:i + batch_size])
        return predictions


def _generated_length(row: list[int], pad_token_id: int, eos_token_id: int | None) -> int:
    """Tokens a row really generated: up to and including its EOS; a row that stopped early is
    padded after that (with the pad id, which may be the EOS id itself)."""
    for i, token in enumerate(row):
        if token == eos_token_id:
            return i + 1
        if token == pad_token_id:
            return i
    return len(row)
