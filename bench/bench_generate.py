"""Batch-generation throughput: our job runner against a raw async ``openai`` client.

Both send the same requests (the home domain's system prompt, one task's request, every tool
schema) to the same ``ScriptedOpenAIServer``, which runs in its own process and answers each
request with the action call after ``--latency`` seconds, at the same ``--concurrency``:

- **ours**: ``agent.batch.generate`` as ``supertiny agent generate`` runs it: the agent graph on
  its async path (one model call per task: the answer is the action), ChatOpenAI's async client
  behind our retry / rate-limit / attempt-recording wrapper, and every trace and attempt written
  to a SQLite file, one transaction per batch. Twice: in one process (``--workers 1``, the
  default of ``agent generate``) and with ``--workers N`` processes sharing the concurrency;
- **raw**: ``AsyncOpenAI().chat.completions.create`` under a semaphore, responses discarded.

Each repeat runs raw, ours with one process and ours with N on fresh state, and prints the rates
and their ratios to raw (goal: >= 0.9), plus the CPU raw and one-process ours spend per request.
At 50 ms the raw client is CPU-bound itself (~3 ms of CPU a request: the openai client's request
building and HTTP), and ours spends ~2.5 ms more per request in LangGraph and langchain-openai, so
one process gets ~0.7 of raw: the job's extra CPU has to go to another core
(docs/batch_throughput.md). On a machine shared with other work compare ratios of several runs,
not absolute rates::

    python bench/bench_generate.py --tasks 600 --concurrency 32 --latency 0.05 --workers 2 --repeat 3
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

ACTION = {"name": "set_timer", "arguments": {"duration": "PT20M"}}


def serve(latency: float) -> None:
    """The server process: print the base URL, answer until stdin closes."""
    from supertiny.testing import ScriptedOpenAIServer

    step = {"tool_calls": [ACTION], "delay": latency}
    with ScriptedOpenAIServer(lambda body: step) as server:
        print(server.base_url, flush=True)
        sys.stdin.read()


@contextlib.contextmanager
def server(latency: float) -> Iterator[str]:
    """A fresh server process for one measurement; yields its base URL. (The server keeps every
    request body it answered: ~28 KB each here, and its collector walks them all, so one server
    for every run would slow down whichever client ran last.)"""
    process = subprocess.Popen([sys.executable, __file__, "--serve", "--latency", str(latency)],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        yield process.stdout.readline().strip()
    finally:
        process.stdin.close()
        process.wait()


async def raw_client(base_url: str, tasks: list, concurrency: int) -> float:
    """Seconds for the raw client to send one request per task."""
    import openai
    from langchain_core.utils.function_calling import convert_to_openai_tool

    from tools.registry import get_domain

    domain = get_domain("home")
    tools = [convert_to_openai_tool(t) for t in domain.tools + domain.actions]
    client = openai.AsyncOpenAI(base_url=base_url, api_key="k", max_retries=0)
    gate = asyncio.Semaphore(concurrency)

    async def one(task) -> None:
        messages = [{"role": "system", "content": domain.system_prompt},
                    {"role": "user", "content": domain.render_request(task.input, task.context)}]
        async with gate:
            await client.chat.completions.create(model="test-model", messages=messages, tools=tools, temperature=0.0)

    started = time.perf_counter()
    await asyncio.gather(*(one(task) for task in tasks))
    elapsed = time.perf_counter() - started
    await client.close()
    return elapsed


def ours(base_url: str, db: Path, n_tasks: int, concurrency: int, workers: int = 1) -> float:
    """Seconds for a fresh job of one sample per task, from the job's start (its first progress
    report: model, graph and client built, like the raw client; with workers, every worker process
    started and ready) to its end (every trace stored)."""
    from agent.batch import GenerateConfig, generate
    from dataengine.store import Store
    from tools.home.tasks import generate_tasks

    store = Store(db)
    store.add_tasks(generate_tasks(seed=0, n_train=n_tasks, n_dev=0, n_test=0))
    config = GenerateConfig(split="train", samples=1, model="openai:test-model", temperature=0.0, limit=n_tasks,
                            base_url=base_url, api_key="k", concurrency=concurrency, workers=workers)
    started: list[float] = []
    counts = generate(store, config, on_progress=lambda _: started or started.append(time.perf_counter()))
    elapsed = time.perf_counter() - started[0]
    assert counts["status"] == "done" and counts["new"] == n_tasks and counts["not_ok"] == 0, counts
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=600, help="requests per run")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--latency", type=float, default=0.05, help="seconds the server waits before each answer")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="worker processes of the second run of ours")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.latency)
        return
    if args.workers < 2:
        parser.error("--workers: at least 2 (the one-process run is always there)")

    from tools.home.tasks import generate_tasks

    print("$ python bench/bench_generate.py " + " ".join(shlex.quote(a) for a in sys.argv[1:]))
    tasks = generate_tasks(seed=0, n_train=args.tasks, n_dev=0, n_test=0)[:args.tasks]
    bound = args.concurrency / args.latency if args.latency else float("inf")
    print(f"{args.tasks} requests, concurrency {args.concurrency}, {args.latency * 1000:.0f} ms server latency "
          f"(at most {bound:.0f} req/s if nothing else limits)")
    n = args.workers
    print(f"{'run':>4} {'raw req/s':>10} {'ours req/s':>11} {'ratio':>6} {f'ours x{n} req/s':>15} {f'ratio x{n}':>9} "
          f"{'raw cpu ms/req':>15} {'ours cpu ms/req':>16}")
    ratios: dict[int, list[float]] = {1: [], n: []}
    with tempfile.TemporaryDirectory() as tmp:
        with server(args.latency) as base_url:  # warm-up: imports, first-use caches
            asyncio.run(raw_client(base_url, tasks[:50], args.concurrency))
            ours(base_url, Path(tmp) / "warmup.db", 50, args.concurrency)
        for run in range(1, args.repeat + 1):
            with server(args.latency) as base_url:
                cpu = time.process_time()
                raw_s = asyncio.run(raw_client(base_url, tasks, args.concurrency))
                raw_cpu = time.process_time() - cpu
            with server(args.latency) as base_url:
                cpu = time.process_time()
                ours_s = ours(base_url, Path(tmp) / f"run{run}.db", args.tasks, args.concurrency)
                ours_cpu = time.process_time() - cpu
            with server(args.latency) as base_url:
                # the worker processes' CPU (their start-up included) is theirs, not this process's: not shown
                workers_s = ours(base_url, Path(tmp) / f"run{run}-x{n}.db", args.tasks, args.concurrency, workers=n)
            ratios[1].append(raw_s / ours_s)
            ratios[n].append(raw_s / workers_s)
            print(f"{run:>4} {args.tasks / raw_s:>10.1f} {args.tasks / ours_s:>11.1f} {raw_s / ours_s:>6.2f} "
                  f"{args.tasks / workers_s:>15.1f} {raw_s / workers_s:>9.2f} "
                  f"{raw_cpu / args.tasks * 1000:>15.2f} {ours_cpu / args.tasks * 1000:>16.2f}", flush=True)
    print(f"median ratio ours/raw: {statistics.median(ratios[1]):.2f} in one process, "
          f"{statistics.median(ratios[n]):.2f} with --workers {n} (goal >= 0.90)")


if __name__ == "__main__":
    main()
