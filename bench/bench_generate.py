"""Batch-generation throughput: our job runner against a raw async ``openai`` client.

Both send the same requests (the home domain's system prompt, one task's request, every tool
schema) to the same ``ScriptedOpenAIServer``, which runs in its own process and answers each
request with the action call after ``--latency`` seconds, at the same ``--concurrency``:

- **ours**: ``agent.batch.generate`` as ``supertiny agent generate`` runs it: the agent graph on
  its async path (one model call per task: the answer is the action), ChatOpenAI's async client
  behind our retry / rate-limit / attempt-recording wrapper, and every trace and attempt written
  to a SQLite file, one transaction per batch;
- **raw**: ``AsyncOpenAI().chat.completions.create`` under a semaphore, responses discarded.

Each repeat runs raw then ours on fresh state and prints both rates and their ratio (goal: >= 0.9),
plus the CPU each spends per request: where the machine has fewer free cores than the two clients
and the server need, the client with more work per request is CPU-bound and the ratio shows that,
not waiting. Run it on an idle machine::

    python bench/bench_generate.py --tasks 600 --concurrency 32 --latency 0.05
"""
from __future__ import annotations

import argparse
import asyncio
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

ACTION = {"name": "set_timer", "arguments": {"duration": "PT20M"}}


def serve(latency: float) -> None:
    """The server process: print the base URL, answer until stdin closes."""
    from supertiny.testing import ScriptedOpenAIServer

    step = {"tool_calls": [ACTION], "delay": latency}
    with ScriptedOpenAIServer(lambda body: step) as server:
        print(server.base_url, flush=True)
        sys.stdin.read()


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


def ours(base_url: str, db: Path, n_tasks: int, concurrency: int) -> float:
    """Seconds for a fresh job of one sample per task, from the job's start (its first progress
    report: model, graph and client built, like the raw client) to its end (every trace stored)."""
    from agent.batch import GenerateConfig, generate
    from dataengine.store import Store
    from tools.home.tasks import generate_tasks

    store = Store(db)
    store.add_tasks(generate_tasks(seed=0, n_train=n_tasks, n_dev=0, n_test=0))
    config = GenerateConfig(split="train", samples=1, model="openai:test-model", temperature=0.0, limit=n_tasks,
                            base_url=base_url, api_key="k", concurrency=concurrency)
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
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.latency)
        return

    from tools.home.tasks import generate_tasks

    print("$ python bench/bench_generate.py " + " ".join(shlex.quote(a) for a in sys.argv[1:]))
    server = subprocess.Popen([sys.executable, __file__, "--serve", "--latency", str(args.latency)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    base_url = server.stdout.readline().strip()
    tasks = generate_tasks(seed=0, n_train=args.tasks, n_dev=0, n_test=0)[:args.tasks]
    bound = args.concurrency / args.latency if args.latency else float("inf")
    print(f"{args.tasks} requests, concurrency {args.concurrency}, {args.latency * 1000:.0f} ms server latency "
          f"(at most {bound:.0f} req/s if nothing else limits)")
    print(f"{'run':>4} {'raw req/s':>10} {'ours req/s':>11} {'ratio':>6} {'raw cpu ms/req':>15} {'ours cpu ms/req':>16}")
    ratios = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            asyncio.run(raw_client(base_url, tasks[:50], args.concurrency))  # warm-up: imports, connections
            ours(base_url, Path(tmp) / "warmup.db", 50, args.concurrency)
            for run in range(1, args.repeat + 1):
                cpu = time.process_time()
                raw_s = asyncio.run(raw_client(base_url, tasks, args.concurrency))
                raw_cpu, cpu = time.process_time() - cpu, time.process_time()
                ours_s = ours(base_url, Path(tmp) / f"run{run}.db", args.tasks, args.concurrency)
                ours_cpu = time.process_time() - cpu
                ratio = raw_s / ours_s
                ratios.append(ratio)
                print(f"{run:>4} {args.tasks / raw_s:>10.1f} {args.tasks / ours_s:>11.1f} {ratio:>6.2f} "
                      f"{raw_cpu / args.tasks * 1000:>15.2f} {ours_cpu / args.tasks * 1000:>16.2f}", flush=True)
    finally:
        server.stdin.close()
        server.wait()
    print(f"median ratio ours/raw: {statistics.median(ratios):.2f} (goal >= 0.90)")


if __name__ == "__main__":
    main()
