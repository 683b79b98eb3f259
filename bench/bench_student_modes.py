"""Direct-mode student against its own base model in agent mode: requests/s and tokens/request.

The point of the student (issue 5): one short prompt and one generation per request, where the
base model it was trained from, put in the teacher's place, needs the long agent prompt (system
prompt and every tool schema, ~1.8k tokens) at every step of a multi-call conversation. Both
sides answer the same tasks, one request at a time (batch 1), interleaved task by task so that
other load on the machine falls on both alike:

- **direct**: the trained student (``student.generate.DirectStudent``, greedy; a program-format
  student writes a one-line plan that the domain's tools run, with its sampled fallback when the
  tools reject the greedy plan: the student as ``supertiny eval`` and ``serve`` run it);
- **agent**: the student's base model (its manifest's ``base_model``, or ``--base``) driving the
  real LangGraph teacher graph (``agent.graph.build_agent`` + ``agent.run.run_request``) through
  the ``local:`` backend, greedy, with the default step budget and at most ``--max-tokens`` new
  tokens per model call.

Per side: requests/s (requests / summed wall time of its requests), prompt+completion tokens per
request (prompt tokens counted once per model call, completion tokens of every sampled sequence),
model calls (generations) per request, p50 latency and exact match against gold (the domain's
verifier: ``dataengine.verify.compare_calls`` for home). An untrained base model in agent mode
rarely produces a valid call: its exact match near 0% is expected, and printed. Then the speed
ratio (direct req/s over agent req/s, goal >= 10x) and the token ratio (agent tokens over direct
tokens, goal >= 20x). Model loading and one warm-up generation per side are not timed. It is a
measurement, not a test: nothing here asserts on time::

    python bench/bench_student_modes.py --student $A/student --db $A/../demo.db --tasks 8   # A: the demo's --out
    python bench/bench_student_modes.py --student DIR --json > modes.json
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from supertiny.errors import UserError  # noqa: E402

SPEED_GOAL = 10.0  # direct req/s over agent req/s
TOKEN_GOAL = 20.0  # agent tokens per request over direct tokens per request


# ---- setup: the models and the tasks ---------------------------------------------------------


def base_of(student_dir: Path) -> Path:
    """The model the student was trained from: its manifest's ``base_model`` (its parents' for a
    pruned or quantized student), by path, else by alias; else the default base model."""
    from student.base import DEFAULT_BASE_MODEL, resolve_base_model
    from student.manifest import inherited_field

    base = inherited_field(student_dir, "base_model") or {}
    path = base.get("path") or base.get("name")
    if path and Path(path).is_dir():
        return Path(path)
    return resolve_base_model(base.get("alias") or DEFAULT_BASE_MODEL)


def pick_tasks(n: int, domain_name: str, db: Path | None, split: str) -> list[Any]:
    """``n`` tasks with gold, evenly spaced over the split (so the test split's seen and novel
    slices both appear): from the store ``db``, else the home generator's (seed 0)."""
    if db is not None:
        from dataengine.store import Store

        if not db.is_file():
            raise UserError(f"--db {db}: no such file (give the SQLite store the student's tasks are in)")
        tasks = [t for t in Store(db).tasks(domain=domain_name, split=split) if t.gold is not None]
        where = f"{db} ({split} split)"
    elif domain_name == "home":
        from tools.home.tasks import generate_tasks

        tasks = [t for t in generate_tasks(seed=0) if t.split == split]
        where = f"tools/home/tasks.py generate_tasks(seed=0) ({split} split)"
    else:
        raise UserError(f"domain {domain_name!r} has no built-in task generator here: pass --db with its tasks")
    if not tasks:
        raise UserError(f"no {split} tasks with gold for domain {domain_name!r} in {where}")
    n = min(n, len(tasks))
    return [tasks[i * len(tasks) // n] for i in range(n)]


# ---- one request on each side ----------------------------------------------------------------


def direct_side(student_dir: Path, domain: Any) -> tuple[Callable[[Any], dict[str, Any]], Callable[[], None]]:
    """(answer one task, warm up) for the direct-mode student."""
    import torch

    from student.generate import DirectStudent

    student = DirectStudent(student_dir, domain=domain)

    # A program-mode student whose greedy plan the tools reject samples a batch of fallback plans
    # in a second generation, which reads the prompt again (``Prediction.generations``).
    def answer(task: Any) -> dict[str, Any]:
        torch.manual_seed(0)  # the fallback plans are sampled: the same draws on every run
        started = time.perf_counter()
        p = student.predict(task.input, task.context)
        seconds = time.perf_counter() - started
        return {"call": p.call, "seconds": seconds, "prompt_tokens": p.prompt_tokens * p.generations,
                "completion_tokens": p.completion_tokens, "model_calls": p.generations,
                "status": "ok" if p.call is not None else "no_call"}

    def warm_up() -> None:
        student.predict("turn on the light", {"now": "2026-01-01T08:00", "weekday": "Thursday"})

    return answer, warm_up


def agent_side(base_dir: Path, domain: Any, max_tokens: int, max_model_calls: int
               ) -> tuple[Callable[[Any], dict[str, Any]], Callable[[], None]]:
    """(answer one task, warm up) for the base model driving the teacher graph, greedy."""
    from agent.backends import make_chat_model
    from agent.graph import build_agent
    from agent.run import run_request

    model = make_chat_model(f"local:{base_dir}", domain=domain, temperature=0.0, max_tokens=max_tokens)
    graph = build_agent(domain, model, max_model_calls=max_model_calls)

    def answer(task: Any) -> dict[str, Any]:
        started = time.perf_counter()
        result = run_request(domain, model, task.input, task.context, graph=graph,
                             max_model_calls=max_model_calls)
        seconds = time.perf_counter() - started
        return {"call": result.final_call, "seconds": seconds, "prompt_tokens": result.prompt_tokens,
                "completion_tokens": result.completion_tokens, "model_calls": result.model_calls,
                "status": result.status}

    def warm_up() -> None:
        model.complete([{"role": "user", "content": "hello"}], max_tokens=4)

    return answer, warm_up


# ---- the measurement -------------------------------------------------------------------------


def summarize(name: str, model_dir: Path, answers: list[dict[str, Any]], exact: list[bool]) -> dict[str, Any]:
    """One side's row: rates, tokens, calls and latency per request, exact match."""
    n = len(answers)
    seconds = sum(a["seconds"] for a in answers)
    prompt = sum(a["prompt_tokens"] for a in answers) / n
    completion = sum(a["completion_tokens"] for a in answers) / n
    return {
        "side": name,
        "model": str(model_dir),
        "requests": n,
        "seconds": round(seconds, 3),
        "requests_per_s": n / seconds if seconds else float("inf"),
        "tokens_per_request": prompt + completion,
        "prompt_tokens_per_request": prompt,
        "completion_tokens_per_request": completion,
        "model_calls_per_request": sum(a["model_calls"] for a in answers) / n,
        "latency_ms_p50": statistics.median(a["seconds"] for a in answers) * 1000.0,
        "exact_match": sum(exact) / n,
        "statuses": dict(Counter(a["status"] for a in answers)),
    }


def measure(student_dir: Path, base_dir: Path, tasks: list[Any], domain: Any, *, max_tokens: int = 128,
            max_model_calls: int | None = None, on_task: Callable[[int, dict, dict], None] | None = None
            ) -> dict[str, Any]:
    """Both sides on ``tasks``, task by task (direct, then agent), after one untimed warm-up each.

    Returns ``{"direct": row, "agent": row, "speed_ratio", "token_ratio", "speed_goal_met",
    "token_goal_met"}`` with the rows of :func:`summarize`."""
    from agent.graph import DEFAULT_MAX_MODEL_CALLS

    budget = max_model_calls or DEFAULT_MAX_MODEL_CALLS
    answer_direct, warm_direct = direct_side(student_dir, domain)
    answer_agent, warm_agent = agent_side(base_dir, domain, max_tokens, budget)
    warm_direct()
    warm_agent()
    answers: dict[str, list[dict[str, Any]]] = {"direct": [], "agent": []}
    exact: dict[str, list[bool]] = {"direct": [], "agent": []}
    for index, task in enumerate(tasks):
        for name, answer in (("direct", answer_direct), ("agent", answer_agent)):
            result = answer(task)
            answers[name].append(result)
            exact[name].append(bool(domain.compare(result["call"], task.gold)["exact"]))
        if on_task:
            on_task(index, answers["direct"][-1], answers["agent"][-1])
    direct = summarize("direct", student_dir, answers["direct"], exact["direct"])
    agent = summarize("agent", base_dir, answers["agent"], exact["agent"])
    speed = direct["requests_per_s"] / agent["requests_per_s"]
    tokens = agent["tokens_per_request"] / direct["tokens_per_request"] if direct["tokens_per_request"] else float("inf")
    return {"direct": direct, "agent": agent, "max_tokens": max_tokens, "max_model_calls": budget,
            "speed_ratio": speed, "token_ratio": tokens,
            "speed_goal_met": speed >= SPEED_GOAL, "token_goal_met": tokens >= TOKEN_GOAL}


# ---- the report ------------------------------------------------------------------------------


def print_table(result: dict[str, Any]) -> None:
    header = (f"{'side':<7} {'req/s':>8} {'p50 ms':>9} {'tokens/req':>11} {'prompt':>8} {'completion':>11} "
              f"{'calls/req':>10} {'exact':>6}  statuses")
    print(header)
    for row in (result["direct"], result["agent"]):
        statuses = " ".join(f"{k}={v}" for k, v in sorted(row["statuses"].items()))
        print(f"{row['side']:<7} {row['requests_per_s']:>8.3f} {row['latency_ms_p50']:>9.0f} "
              f"{row['tokens_per_request']:>11.1f} {row['prompt_tokens_per_request']:>8.1f} "
              f"{row['completion_tokens_per_request']:>11.1f} {row['model_calls_per_request']:>10.2f} "
              f"{row['exact_match']:>6.1%}  {statuses}")

    def verdict(met: bool) -> str:
        return "met" if met else "NOT met"

    print(f"speed: direct {result['speed_ratio']:.1f}x the agent's requests/s "
          f"(goal >= {SPEED_GOAL:.0f}x: {verdict(result['speed_goal_met'])})")
    print(f"tokens: agent reads and writes {result['token_ratio']:.1f}x the direct student's tokens per request "
          f"(goal >= {TOKEN_GOAL:.0f}x: {verdict(result['token_goal_met'])})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--student", type=Path, required=True, help="a trained direct- or program-format student dir")
    parser.add_argument("--base", help="the agent side's model (default: the student's base_model from its manifest)")
    parser.add_argument("--db", type=Path, help="store to take the tasks from (default: generate home test tasks)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--tasks", type=int, default=8, help="requests per side")
    parser.add_argument("--max-tokens", type=int, default=128,
                        help="most new tokens per agent model call (an untrained base rambles to any cap)")
    parser.add_argument("--max-model-calls", type=int, help="agent step budget (default: the graph's default)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads for both sides (default 1: steady timings on a shared machine)")
    parser.add_argument("--json", action="store_true", help="print the measurements as JSON")
    args = parser.parse_args()
    if args.tasks < 1:
        parser.error("--tasks: at least 1")

    import torch
    from transformers.utils import logging as hf_logging

    from student.base import resolve_base_model
    from student.manifest import inherited_field
    from tools.registry import get_domain

    hf_logging.set_verbosity_error()  # per-call generation-flag warnings would bury the table
    hf_logging.disable_progress_bar()
    torch.set_num_threads(args.threads)
    if not (args.student / "config.json").is_file():
        raise UserError(f"--student {args.student}: not a model directory (no config.json)")
    student_format = inherited_field(args.student, "format") or "direct"
    if student_format not in ("direct", "program"):
        raise UserError(f"--student {args.student}: format {student_format!r}; this bench compares a direct- or "
                        "program-format student with its base in agent mode")
    domain_name = inherited_field(args.student, "domain") or "home"
    domain = get_domain(domain_name)
    base_dir = resolve_base_model(args.base) if args.base else base_of(args.student)
    tasks = pick_tasks(args.tasks, domain_name, args.db, args.split)

    log = sys.stderr if args.json else sys.stdout
    print("$ python bench/bench_student_modes.py " + " ".join(shlex.quote(a) for a in sys.argv[1:]), file=log)
    print(f"direct: {args.student} ({student_format} format)\nagent:  {base_dir} through the teacher graph, "
          f"local: backend, greedy, max_tokens {args.max_tokens} per model call\n{len(tasks)} {domain_name} "
          f"{args.split} tasks, batch 1, sequential, interleaved; {args.threads} torch thread(s)", file=log, flush=True)

    def progress(index: int, direct: dict, agent: dict) -> None:
        print(f"  task {index + 1}/{len(tasks)}: direct {direct['seconds']:.2f}s {direct['model_calls']} call(s), "
              f"agent {agent['seconds']:.1f}s {agent['model_calls']} call(s) {agent['status']}", file=sys.stderr,
              flush=True)

    load_before = os.getloadavg()[0]
    result = measure(args.student, base_dir, tasks, domain, max_tokens=args.max_tokens,
                     max_model_calls=args.max_model_calls, on_task=progress)
    load_after = os.getloadavg()[0]
    result.update(tasks=[t.id for t in tasks], threads=args.threads, load_average=[load_before, load_after])
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print_table(result)
    print(f"(agent: step budget {result['max_model_calls']} model calls, at most {args.max_tokens} new tokens each; "
          "model load and one warm-up generation per side untimed)")
    cores = os.cpu_count() or 1
    if max(load_before, load_after) > cores:
        print(f"load average {load_before:.1f} -> {load_after:.1f} on {cores} cores: other processes were competing "
              "for the CPU; absolute rates are deflated, the ratios less so (both sides ran interleaved).")


if __name__ == "__main__":
    try:
        main()
    except UserError as exc:
        sys.exit(f"error: {exc}")
