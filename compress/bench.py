"""Side-by-side benchmark of model directories: size, memory, speed, and the bandwidth bound.

Per model: parameters, bytes on disk, peak RAM, time to first token, decode tokens/s, p50/p95
latency per request at batch 1 and at a realistic batch, and how close the decode speed comes to
the memory-bandwidth bound (weight bytes read per generated token / measured copy bandwidth of
this machine: at batch 1 every weight is read once per token, so no kernel can beat that bound).
Also, against the *first* model: ratios of everything, next-token agreement (teacher-forced) and
the share of greedy tokens generated before the first divergence.

Every model runs in its own subprocess (``python -m compress.bench`` reading a job on stdin),
so its peak RSS is its own and one model's allocations cannot slow the next.
Models run one after the other in one call; nothing here asserts on time.
"""
from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, Field

from supertiny.errors import UserError

PROJECT_ROOT = Path(__file__).resolve().parents[1]


class BenchConfig(BaseModel):
    new_tokens: int = Field(32, description="Tokens generated per request (exactly: EOS is suppressed); >= 2.")
    prompts: int = Field(4, description="Distinct prompts per measurement; >= 1.")
    repeats: int = Field(2, description="Timed runs per prompt (batch 1) or per batch; >= 1.")
    batch_size: int = Field(8, description="The realistic batch: requests decoded together; >= 1.")
    threads: int = Field(1, description="torch CPU threads in each model's process; >= 1.")
    fidelity_texts: int = Field(16, description="Texts for next-token agreement with the first model; >= 1.")
    bandwidth_mib: int = Field(256, description="Size of the tensor copied to measure memory bandwidth; >= 16.")


def default_texts(n: int) -> list[str]:
    """Real requests of the home domain, as the student sees them."""
    from student.format import direct_prompt
    from tools.home.tasks import generate_tasks

    return [direct_prompt(t.input, t.context) for t in generate_tasks(seed=0, n_train=max(n, 1), n_dev=0, n_test=0)]


# ---- in the model's own process -------------------------------------------------------------


def memory_bandwidth(mib: int, repeats: int = 5) -> float:
    """Bytes/s of a large tensor copy (read + write), best of ``repeats``."""
    src = torch.ones(mib * 2**20 // 4, dtype=torch.float32)
    dst = torch.empty_like(src)
    dst.copy_(src)  # touch the pages first
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - start)
    return 2 * src.numel() * src.element_size() / best


def _tensors(value: Any) -> list[torch.Tensor]:
    """Tensors in a state-dict value (dynamic int8 weights serialize as (weight, bias) tuples)."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _tensors(v)]
    return []


def weight_bytes_per_token(model: Any) -> int:
    """Bytes of weights one decode step reads: every weight once, except an input embedding
    table that is not also the output head (a lookup reads one row of it)."""
    def pointers(module: Any) -> set[int]:
        return {t.data_ptr() for v in module.state_dict().values() for t in _tensors(v)} if module is not None else set()

    embedding_only = pointers(model.get_input_embeddings()) - pointers(model.get_output_embeddings())
    seen, total = set(), 0
    for value in model.state_dict().values():
        for t in _tensors(value):
            if t.data_ptr() in seen or t.data_ptr() in embedding_only:
                continue
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


def _weight_bytes(model: Any) -> int:
    from compress.onnx import OnnxCausalLM, weight_bytes_per_token as onnx_weight_bytes

    return onnx_weight_bytes(model.path) if isinstance(model, OnnxCausalLM) else weight_bytes_per_token(model)


def peak_rss_bytes() -> int:
    """This process's peak resident memory: ``VmHWM`` from /proc where there is one, because
    ``ru_maxrss`` survives fork + exec on Linux, so a child of a big parent reports the parent's peak."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # kB
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss if sys.platform == "darwin" else maxrss * 1024  # bytes on macOS, KiB elsewhere


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def bench_one(model_dir: str | Path, config: BenchConfig, prompts: list[str], fidelity_texts: list[str]) -> dict[str, Any]:
    """Measure one model in this process (call it in a fresh one: peak RSS is per process)."""
    from compress.measure import greedy_seconds
    from compress.prune import count_params
    from student.generate import load_model
    from student.manifest import dir_bytes, read_manifest

    torch.set_num_threads(config.threads)
    baseline_rss = peak_rss_bytes()
    start = time.perf_counter()
    model, tokenizer = load_model(model_dir)
    load_s = time.perf_counter() - start
    manifest = read_manifest(model_dir)
    params = manifest.get("params") if manifest.get("kind") == "quantized" else count_params(model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"  # batched generation continues every row from its last token

    def batch_of(texts: list[str]) -> dict[str, torch.Tensor]:
        return tokenizer(texts, return_tensors="pt", padding=True)

    greedy_seconds(model, tokenizer, batch_of(prompts[:1]), 2)  # warm-up
    first_token, request, decode, outputs = [], [], [], []
    for rep in range(config.repeats):
        for prompt in prompts:
            first_token.append(greedy_seconds(model, tokenizer, batch_of([prompt]), 1)[0])
            seconds, tokens = greedy_seconds(model, tokenizer, batch_of([prompt]), config.new_tokens)
            request.append(seconds)
            # Per token after the first: the same prompt's N-token run minus its 1-token run.
            decode.append(max(seconds - first_token[-1], 1e-9) / (config.new_tokens - 1))
            if rep == 0:
                # As token strings: a vocabulary-trimmed model numbers the same tokens differently.
                outputs.append(tokenizer.convert_ids_to_tokens(tokens[0].tolist()))
    batched = []
    requests = [prompts[i % len(prompts)] for i in range(config.batch_size)]
    for _ in range(config.repeats):
        batched.append(greedy_seconds(model, tokenizer, batch_of(requests), config.new_tokens)[0])
    # Peak RAM of loading and generating, before the fidelity pass (an ONNX dir opens a second
    # session for teacher-forced logits, which serving never does) and the bandwidth buffers.
    peak_rss = peak_rss_bytes()
    predictions, accuracy = _argmax_tokens(model, tokenizer, fidelity_texts)

    bandwidth = memory_bandwidth(config.bandwidth_mib)
    per_token = _weight_bytes(model)
    decode_s = statistics.median(decode)
    bound = bandwidth / per_token
    return {
        "model": str(model_dir),
        "kind": manifest.get("kind", "base"),
        "method": manifest.get("method"),
        "params": int(params) if params is not None else None,
        "bytes_on_disk": dir_bytes(model_dir),
        "weight_bytes_per_token": per_token,
        "peak_rss_bytes": peak_rss,
        "baseline_rss_bytes": baseline_rss,  # after imports, before the model: python + torch
        "model_rss_bytes": peak_rss - baseline_rss,
        "load_s": load_s,
        "ttft_ms": 1000 * statistics.median(first_token),
        "decode_tokens_per_s": 1 / decode_s,
        "latency_ms_p50": 1000 * _percentile(request, 0.5),
        "latency_ms_p95": 1000 * _percentile(request, 0.95),
        "batch_size": config.batch_size,
        "batch_latency_ms_p50": 1000 * _percentile(batched, 0.5),
        "batch_latency_ms_p95": 1000 * _percentile(batched, 0.95),
        "batch_tokens_per_s": config.batch_size * config.new_tokens / statistics.median(batched),
        "bandwidth_gb_s": bandwidth / 1e9,
        "bandwidth_bound_tokens_per_s": bound,
        "bandwidth_efficiency": (1 / decode_s) / bound,
        "next_token_accuracy": accuracy,
        "threads": torch.get_num_threads(),
        "_greedy_tokens": outputs,
        "_argmax_tokens": predictions,
    }


@torch.inference_mode()
def _argmax_tokens(model: Any, tokenizer: Any, texts: list[str]) -> tuple[list[str], float]:
    """Teacher-forced argmax at every token, one text at a time (no padding: positions line up
    across models), as token strings (ids differ after vocabulary trimming), and the share that
    equals the text's own next token."""
    preds, correct, count = [], 0, 0
    for text in texts:
        ids = tokenizer([text], return_tensors="pt", truncation=True, max_length=128)
        pred = model(**ids).logits[0].argmax(-1)
        preds.extend(tokenizer.convert_ids_to_tokens(pred.tolist()))
        correct += int((pred[:-1] == ids["input_ids"][0, 1:]).sum())
        count += ids["input_ids"].shape[1] - 1
    return preds, correct / max(count, 1)


# ---- the parent: one subprocess per model, then ratios against the first --------------------


def _prefix_agreement(ref: list[list[int]], got: list[list[int]]) -> float:
    """Mean share of generated tokens before the first divergence from the reference."""
    shares = []
    for a, b in zip(ref, got):
        same = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        shares.append(same / max(len(a), 1))
    return sum(shares) / max(len(shares), 1)


def bench_models(model_dirs: list[str | Path], config: BenchConfig, texts: list[str] | None = None) -> list[dict[str, Any]]:
    """Measure every model dir in its own subprocess, in order; add ratios against the first."""
    for field, least in (("new_tokens", 2), ("prompts", 1), ("repeats", 1), ("batch_size", 1), ("threads", 1),
                         ("fidelity_texts", 1), ("bandwidth_mib", 16)):
        if getattr(config, field) < least:
            raise UserError(f"{field}={getattr(config, field)}: must be >= {least}")
    if not model_dirs:
        raise UserError("compress bench: give at least one model directory")
    for model_dir in model_dirs:
        if not (Path(model_dir) / "config.json").is_file():
            raise UserError(f"{model_dir}: not a model directory (no config.json)")
    texts = texts or default_texts(max(config.prompts, config.fidelity_texts))
    job = {"config": config.model_dump(), "prompts": texts[:config.prompts],
           "fidelity_texts": texts[:config.fidelity_texts]}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": str(config.threads), "TOKENIZERS_PARALLELISM": "false"}
    rows = []
    for model_dir in model_dirs:
        proc = subprocess.run([sys.executable, "-m", "compress.bench"], input=json.dumps({**job, "model_dir": str(model_dir)}),
                              capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise UserError(f"{model_dir}: benchmark process failed: {last}")
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))

    base = rows[0]
    for row in rows:
        # Positions line up when both tokenized the texts into as many tokens (a trimmed
        # vocabulary splits the words it dropped into more pieces).
        aligned = len(row["_argmax_tokens"]) == len(base["_argmax_tokens"])
        row["top1_agreement_with_first"] = (
            sum(a == b for a, b in zip(row["_argmax_tokens"], base["_argmax_tokens"])) / max(len(base["_argmax_tokens"]), 1)
            if aligned else None)
        row["generation_agreement_with_first"] = _prefix_agreement(base["_greedy_tokens"], row["_greedy_tokens"])
        row["relative_to_first"] = {
            "params": row["params"] / base["params"] if row["params"] and base["params"] else None,
            "bytes_on_disk": row["bytes_on_disk"] / base["bytes_on_disk"],
            "peak_rss": row["peak_rss_bytes"] / base["peak_rss_bytes"],
            "ttft": row["ttft_ms"] / base["ttft_ms"],
            "decode_speedup": row["decode_tokens_per_s"] / base["decode_tokens_per_s"],
            "latency_p50": row["latency_ms_p50"] / base["latency_ms_p50"],
            "batch_speedup": row["batch_tokens_per_s"] / base["batch_tokens_per_s"],
        }
    for row in rows:
        del row["_argmax_tokens"], row["_greedy_tokens"]
    return rows


def bench_table(rows: list[dict[str, Any]], title: str = "compress bench") -> Any:
    """A rich table with one *column* per model (side by side, narrow enough for a terminal) and
    one row per measurement; ``(x)`` is the ratio to the first model."""
    from rich.table import Table

    def ratio(key: str) -> Any:
        return lambda r: f" ({r['relative_to_first'][key]:.2f}x)" if r["relative_to_first"].get(key) else ""

    def share(value: float | None) -> str:
        return "-" if value is None else f"{value:.0%}"

    batch = rows[0]["batch_size"]
    lines = [  # (label, value, ratio to the first model)
        ("params", lambda r: f"{r['params'] / 1e6:.1f}M" if r["params"] else "?", ratio("params")),
        ("MB on disk", lambda r: f"{r['bytes_on_disk'] / 1e6:.1f}", ratio("bytes_on_disk")),
        ("peak RAM MiB", lambda r: f"{r['peak_rss_bytes'] / 2**20:.0f}", ratio("peak_rss")),
        ("time to 1st token ms", lambda r: f"{r['ttft_ms']:.0f}", ratio("ttft")),
        ("decode tok/s (batch 1)", lambda r: f"{r['decode_tokens_per_s']:.1f}", ratio("decode_speedup")),
        ("request p50 / p95 ms", lambda r: f"{r['latency_ms_p50']:.0f} / {r['latency_ms_p95']:.0f}", ratio("latency_p50")),
        (f"batch {batch} p50 / p95 ms",
         lambda r: f"{r['batch_latency_ms_p50']:.0f} / {r['batch_latency_ms_p95']:.0f}", None),
        (f"batch {batch} tok/s", lambda r: f"{r['batch_tokens_per_s']:.1f}", ratio("batch_speedup")),
        ("weight MB read / token", lambda r: f"{r['weight_bytes_per_token'] / 1e6:.0f}", None),
        ("copy bandwidth GB/s", lambda r: f"{r['bandwidth_gb_s']:.1f}", None),
        ("bandwidth bound tok/s", lambda r: f"{r['bandwidth_bound_tokens_per_s']:.0f}", None),
        ("decode / bound", lambda r: share(r["bandwidth_efficiency"]), None),
        ("next-token accuracy", lambda r: share(r["next_token_accuracy"]), None),
        ("top-1 = first model", lambda r: share(r["top1_agreement_with_first"]), None),
        ("greedy = first model", lambda r: share(r["generation_agreement_with_first"]), None),
    ]
    table = Table(title=title, caption="(x): ratio to the first model. decode / bound: decode tok/s over "
                                       "copy bandwidth / weight bytes read per token.")
    table.add_column("", no_wrap=True)
    for r in rows:
        table.add_column(Path(r["model"]).name, justify="right", overflow="fold")
    for label, value, rel in lines:
        table.add_row(label, *(value(r) + (rel(r) if rel else "") for r in rows))
    return table


if __name__ == "__main__":
    # One model, in this fresh process: a job (JSON) on stdin, the measurements (JSON) on stdout.
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    request = json.loads(sys.stdin.read())
    result = bench_one(request["model_dir"], BenchConfig(**request["config"]), request["prompts"],
                       request["fidelity_texts"])
    print(json.dumps(result))
