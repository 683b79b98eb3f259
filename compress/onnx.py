"""Export a student to ONNX Runtime and run it there: the fast way to serve it on a CPU.

Why a second runtime: at batch 1 a decode step of a 100M-parameter model is ~200 small matrix
multiplies plus ~1,500 small elementwise ops. In eager PyTorch the small ops cost more than the
matmuls once the weights are int8, and torch's int8/int4 CPU kernels stream weights at less
than half the rate of its float32 GEMV on some CPUs (docs/compression.md). ONNX Runtime runs the
whole step as one graph of fused operators (GroupQueryAttention, SkipSimplifiedLayerNorm, one
fused q/k/v projection) and its ``MatMulNBits`` kernels multiply int8/int4 weights in
blocks with int8 activations (VNNI/AMX where the CPU has them).

The graph is built by onnxruntime-genai's model builder (``python -m
onnxruntime_genai.models.builder``) from the saved Hugging Face directory; it knows Llama,
Qwen2, Mistral, Phi, Gemma... and reads ``head_dim``, ``vocab_size`` and the head counts from
``config.json``, so pruned and vocabulary-trimmed students export like any other.

Methods (``compress quantize --method``):

``onnx-int8``  weights int8, symmetric, one scale per block of ``block_size`` inputs
               (``MatMulNBits`` bits=8); the embedding stays float (a lookup reads one row).
``onnx-int4``  the same with 4-bit weights, round to nearest.
``onnx-fp32``  no quantization: the runtime alone, to tell what the runtime gives from what
               quantization gives.

:class:`OnnxCausalLM` runs such a directory behind the two calls the rest of supertiny makes on
a model: ``generate`` (greedy or sampled, with our logits processors and stopping criteria,
in the shapes Hugging Face returns) and ``model(input_ids, attention_mask).logits``
(teacher-forced, for agreement and accuracy measurements).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from transformers import AutoConfig, AutoTokenizer, GenerationConfig
from transformers.generation.utils import GenerateDecoderOnlyOutput

from supertiny.errors import UserError

ONNX_METHODS = ("onnx-int8", "onnx-int4", "onnx-fp32")
GRAPH_NAME = "model.onnx"
GENAI_CONFIG = "genai_config.json"


def export_onnx(model_dir: str | Path, out_dir: str | Path, method: str, block_size: int = 32) -> None:
    """Build ``out_dir`` (graph, weights, genai config, tokenizer, config.json) from a saved model dir."""
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    if method not in ONNX_METHODS:
        raise UserError(f"export: unknown ONNX method {method!r}; expected one of {', '.join(ONNX_METHODS)}")
    precision = method.removeprefix("onnx-")
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="supertiny-onnx-") as cache:
        command = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(model_dir), "-o", str(out_dir),
                   "-p", precision, "-e", "cpu", "-c", cache]
        if precision != "fp32":
            # accuracy_level 4: int8 activations into the int8/int4 kernels (the fast path on x86).
            command += ["--extra_options", f"block_size={block_size}", "accuracy_level=4"]
        # Offline by construction: everything the builder reads is in model_dir.
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        proc = subprocess.run(command, capture_output=True, text=True, env=env)
    if proc.returncode != 0 or not (out_dir / GRAPH_NAME).is_file():
        lines = [line for line in (proc.stderr + proc.stdout).splitlines() if line.strip()]
        raise UserError(f"{model_dir}: ONNX export ({method}) failed: {lines[-1] if lines else 'no output'}")
    # The Hugging Face config and generation defaults travel along: loading, counting and
    # benchmarking read them like any model dir's.
    for name in ("config.json", "generation_config.json"):
        if (model_dir / name).is_file():
            shutil.copy(model_dir / name, out_dir / name)


def graph_ops(path: str | Path) -> dict[str, int]:
    """Operator types of the exported graph (name -> nodes): which kernels a forward pass runs."""
    import onnx

    graph = onnx.load(str(Path(path) / GRAPH_NAME), load_external_data=False).graph
    counts: dict[str, int] = {}
    for node in graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items()))


def weight_bytes_per_token(path: str | Path) -> int:
    """Bytes of initializers one decode step reads: all of them except tables only looked up
    (``Gather``: the input embedding reads one row) and the rotary cos/sin caches (one row too)."""
    import onnx

    graph = onnx.load(str(Path(path) / GRAPH_NAME), load_external_data=False).graph
    looked_up = {node.input[0] for node in graph.node if node.op_type == "Gather"}
    read_by_other = {name for node in graph.node if node.op_type != "Gather" for name in node.input}
    skipped = (looked_up - read_by_other) | {init.name for init in graph.initializer
                                             if init.name.endswith(("cos_cache", "sin_cache"))}
    total = 0
    for init in graph.initializer:
        if init.name in skipped:
            continue
        external = {entry.key: entry.value for entry in init.external_data}
        if "length" in external:
            total += int(external["length"])
        else:
            total += len(init.raw_data) or int(np.prod(init.dims, dtype=np.int64)) * 4
    return total


class OnnxCausalLM:
    """An exported directory, driven like a Hugging Face causal LM by our callers.

    Decoding goes through onnxruntime-genai's ``Generator`` one row at a time (its KV cache is
    preallocated and updated in place); each step we read the row's logits, apply the caller's
    logits processors to the whole batch exactly as ``transformers`` would, pick the tokens and
    append them. Rows never share a forward pass, so left padding never reaches the graph.
    """

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        import onnxruntime_genai as og

        og.disable_telemetry_events()  # a library's telemetry has no business in a user's serving process
        self.path = Path(path)
        self._og = og
        self.threads = threads or torch.get_num_threads()
        config = og.Config(str(self.path))
        config.clear_providers()  # CPU
        config.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": self.threads}}}}))
        self._model = og.Model(config)
        self.genai_config = json.loads((self.path / GENAI_CONFIG).read_text())
        self.config = AutoConfig.from_pretrained(self.path)
        self.generation_config = (GenerationConfig.from_pretrained(self.path)
                                  if (self.path / "generation_config.json").is_file() else GenerationConfig())
        self.device = torch.device("cpu")
        self._session: Any = None  # plain onnxruntime session for teacher-forced logits, made on first use

    def eval(self) -> "OnnxCausalLM":
        return self

    # ---- generation -----------------------------------------------------------------------

    def _start(self, tokens: list[int], max_new_tokens: int) -> Any:
        params = self._og.GeneratorParams(self._model)
        params.set_search_options(max_length=len(tokens) + max_new_tokens, do_sample=False)
        generator = self._og.Generator(self._model, params)
        generator.append_tokens(np.array([tokens], dtype=np.int32))
        return generator

    @staticmethod
    def _last_logits(generator: Any) -> torch.Tensor:
        return torch.from_numpy(np.asarray(generator.get_logits(), dtype=np.float32).reshape(-1).copy())

    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 max_new_tokens: int = 20, pad_token_id: int | None = None, eos_token_id: Any = "config",
                 logits_processor: Any = None, stopping_criteria: Any = None, do_sample: bool = False,
                 temperature: float = 1.0, top_k: int | None = None, num_return_sequences: int = 1,
                 return_dict_in_generate: bool = False, output_scores: bool = False, output_logits: bool = False,
                 **unused: Any) -> Any:
        """Prompt + new tokens per row, left-padded rows as given, finished rows padded with
        ``pad_token_id`` (the shape and contents ``transformers`` returns); with
        ``return_dict_in_generate`` its output object, ``scores``/``logits`` per step as asked.
        As in ``transformers``, EOS defaults to the generation config's, and an explicit
        ``eos_token_id=None`` decodes exactly ``max_new_tokens``."""
        if eos_token_id == "config":
            eos_token_id = self.generation_config.eos_token_id
        eos_ids = torch.tensor([] if eos_token_id is None else
                               [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id), dtype=torch.long)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if num_return_sequences > 1:
            input_ids = input_ids.repeat_interleave(num_return_sequences, dim=0)
            attention_mask = attention_mask.repeat_interleave(num_return_sequences, dim=0)
        pad = pad_token_id if pad_token_id is not None else (int(eos_ids[0]) if len(eos_ids) else 0)
        top_k = top_k if top_k is not None else self.generation_config.top_k
        rows = input_ids.shape[0]
        generators = [self._start(input_ids[row][attention_mask[row].bool()].tolist(), max_new_tokens)
                      for row in range(rows)]
        sequences = input_ids.clone()
        unfinished = torch.ones(rows, dtype=torch.bool)
        vocab = None
        raw_steps, score_steps = [], []
        for step in range(max_new_tokens):
            logits = [self._last_logits(g) if alive else None for g, alive in zip(generators, unfinished.tolist())]
            vocab = vocab or next(x.numel() for x in logits if x is not None)
            scores = torch.stack([x if x is not None else torch.zeros(vocab) for x in logits])
            if output_logits:  # a copy per step only when asked: this is the decode loop
                raw_steps.append(scores.clone())
            if logits_processor is not None:
                scores = logits_processor(sequences, scores)
            if do_sample:
                scores = scores / max(temperature, 1e-5)
                if top_k:
                    kth = scores.topk(min(top_k, vocab), dim=-1).values[:, -1:]
                    scores = scores.masked_fill(scores < kth, float("-inf"))
                tokens = torch.multinomial(torch.softmax(scores, dim=-1), 1).squeeze(1)
            else:
                tokens = scores.argmax(dim=-1)
            if output_scores:
                score_steps.append(scores)
            tokens = torch.where(unfinished, tokens, torch.full_like(tokens, pad))
            sequences = torch.cat([sequences, tokens[:, None]], dim=1)
            unfinished &= ~torch.isin(tokens, eos_ids)
            if stopping_criteria is not None:
                unfinished &= ~stopping_criteria(sequences, scores)
            if not unfinished.any() or step == max_new_tokens - 1:
                break
            for row in torch.nonzero(unfinished).flatten().tolist():
                generators[row].append_tokens(np.array([[int(tokens[row])]], dtype=np.int32))
        if not return_dict_in_generate:
            return sequences
        return GenerateDecoderOnlyOutput(sequences=sequences, scores=tuple(score_steps) if output_scores else None,
                                         logits=tuple(raw_steps) if output_logits else None)

    # ---- teacher-forced logits ------------------------------------------------------------

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 **unused: Any) -> SimpleNamespace:
        """Logits at every position (``.logits``: batch x length x vocab), one row per run
        without its padding; padded positions get zeros."""
        import onnxruntime as ort

        if self._session is None:
            options = ort.SessionOptions()
            options.intra_op_num_threads = self.threads
            self._session = ort.InferenceSession(str(self.path / GRAPH_NAME), options,
                                                 providers=["CPUExecutionProvider"])
        decoder = self.genai_config["model"]["decoder"]
        empty_past = np.zeros((1, decoder["num_key_value_heads"], 0, decoder["head_size"]), dtype=np.float32)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        out = None
        for row in range(input_ids.shape[0]):
            keep = attention_mask[row].bool()
            ids = input_ids[row][keep].numpy().astype(np.int64)[None]
            feed = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
            for item in self._session.get_inputs():
                if item.name.startswith("past_key_values"):
                    feed[item.name] = empty_past
            logits = torch.from_numpy(self._session.run(["logits"], feed)[0][0])
            if out is None:
                out = torch.zeros(*input_ids.shape, logits.shape[-1])
            out[row, keep] = logits
        return SimpleNamespace(logits=out)


def load_onnx(path: str | Path) -> tuple[OnnxCausalLM, Any]:
    """(model, tokenizer) of an exported directory."""
    path = Path(path)
    if not (path / GRAPH_NAME).is_file() or not (path / GENAI_CONFIG).is_file():
        raise UserError(f"{path}: no ONNX model here (needs {GRAPH_NAME} and {GENAI_CONFIG}); "
                        "run 'supertiny compress quantize --method onnx-int8' first")
    return OnnxCausalLM(path), AutoTokenizer.from_pretrained(path)
