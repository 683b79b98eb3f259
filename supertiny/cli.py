"""``supertiny``: thin noun groups over the library.

    supertiny tasks     generate | import | list
    supertiny agent     run | chat | generate
    supertiny jobs      list | status | resume | cancel | prices | set-price
    supertiny traces    list | show | sql | import | verify | judge | consistency | dedup | review
    supertiny dataset   build | list | export | diff
    supertiny student   train | dpo | grpo | distill
    supertiny serve
    supertiny compress  prune | quantize | bench
    supertiny models    list
    supertiny lineage
    supertiny eval
    supertiny demo
    supertiny bench     snips
    supertiny report

Every command takes the global ``--db`` (or ``SUPERTINY_DB``); data commands take ``--json``.
"""
from __future__ import annotations

import contextlib
import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Optional

import click
import typer
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)
from rich.text import Text

from supertiny.errors import UserError
from supertiny.output import console, emit, err_console, evaluation_table

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Turn an LLM function-calling pipeline into a super-tiny model.")
tasks_app = typer.Typer(no_args_is_help=True, help="Tasks: requests with context and gold calls.")
agent_app = typer.Typer(no_args_is_help=True, help="The teacher agent: single runs and batch generation.")
traces_app = typer.Typer(no_args_is_help=True, help="Stored agent runs.")
dataset_app = typer.Typer(no_args_is_help=True, help="Versioned datasets built from verified traces.")
student_app = typer.Typer(no_args_is_help=True, help="Train the student.")
compress_app = typer.Typer(no_args_is_help=True, help="Prune and quantize a model directory.")
models_app = typer.Typer(no_args_is_help=True, help="Registered model artifacts and their lineage.")
for name, sub in [("tasks", tasks_app), ("agent", agent_app), ("traces", traces_app), ("dataset", dataset_app),
                  ("student", student_app), ("compress", compress_app), ("models", models_app)]:
    app.add_typer(sub, name=name)
bench_app = typer.Typer(no_args_is_help=True, help="Public benchmarks, end to end.")
app.add_typer(bench_app, name="bench")

STATE: dict[str, Any] = {"db": None, "store": None}
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
DomainOpt = Annotated[str, typer.Option("--domain", help="Built-in domain name, importable module or .py file.")]
ModelOpt = Annotated[str, typer.Option("--model", help="'planner' (offline), 'openai:<model>' or 'local:<model dir>'.")]
BaseUrlOpt = Annotated[Optional[str], typer.Option("--base-url", help="OpenAI-compatible endpoint (or OPENAI_BASE_URL).")]
ApiKeyOpt = Annotated[Optional[str], typer.Option("--api-key", help="API key (or OPENAI_API_KEY).")]
# The endpoint bundle shared by agent run / generate / chat (agent.backends.ModelOptions).
MaxTokensOpt = Annotated[Optional[int], typer.Option("--max-tokens", help="Most completion tokens per model call.")]
TimeoutOpt = Annotated[float, typer.Option("--timeout", help="Seconds before an HTTP request is abandoned.")]
RetriesOpt = Annotated[int, typer.Option("--max-retries", help="Client retries on 429, 5xx and timeouts.")]
ParallelOpt = Annotated[Optional[bool], typer.Option("--parallel-tool-calls/--no-parallel-tool-calls",
                                                     help="Several tool calls per turn (default: the endpoint's).")]
LogprobsOpt = Annotated[int, typer.Option("--top-logprobs", help="Store this many top log-probs per token (0: off).")]
# How a generation job runs (agent.batch.GenerateConfig): may change from one run of a job to the next.
RpmOpt = Annotated[Optional[float], typer.Option("--rpm", help="Most model requests per minute (default: no limit).")]
TpmOpt = Annotated[Optional[float], typer.Option("--tpm", help="Most tokens per minute, prompt + completion.")]
MaxAttemptsOpt = Annotated[int, typer.Option("--max-attempts", help="Tries per model request (429, 5xx, timeouts, "
                                                                    "bad bodies are retried); every one is recorded.")]
RetryDelayOpt = Annotated[float, typer.Option("--retry-delay", help="Seconds before the first retry, doubled each "
                                                                     "time, with jitter; a Retry-After header wins.")]
ContextOpt = Annotated[Optional[str], typer.Option(
    "--context", help='Request context as a JSON object, e.g. \'{"limit": 500}\'; default: now and weekday.')]


def parse_request_options(now: Optional[str], context: Optional[str]) -> tuple[Optional[datetime], Optional[dict]]:
    """``--now`` and ``--context`` checked and parsed, for ``agent.run.context_for_request`` to combine
    into a request's context (``agent chat`` does that per request, at the minute it is typed)."""
    try:
        moment = datetime.fromisoformat(now) if now else None
    except ValueError:
        raise UserError(f"--now: not an ISO 8601 time: {now!r} (e.g. 2026-03-14T09:30)") from None
    if context is None:
        return moment, None
    try:
        parsed = json.loads(context)
    except json.JSONDecodeError as exc:
        raise UserError(f"--context: not JSON ({exc.msg} at column {exc.colno}): {context!r}") from None
    if not isinstance(parsed, dict):
        raise UserError(f"--context: must be a JSON object, got {context!r}")
    return moment, parsed


def endpoint_options(max_tokens: Optional[int], timeout: float, max_retries: int, parallel_tool_calls: Optional[bool],
                     top_logprobs: int) -> dict:
    return {"max_tokens": max_tokens, "timeout": timeout, "max_retries": max_retries,
            "parallel_tool_calls": parallel_tool_calls, "top_logprobs": top_logprobs}


@app.callback()
def _global(db: Annotated[Optional[str], typer.Option(
        "--db", envvar="SUPERTINY_DB",
        help="SQLite file (default db/supertiny.db) or SQLAlchemy URL, e.g. postgresql+psycopg://user@host/db.")] = None,
        ) -> None:
    STATE["db"], STATE["store"] = db, None  # db a string, not a Path: Path would fold the '//' of a URL


def store():
    """The command's one Store: opened (and migrated) on first use, then shared by its steps."""
    from dataengine.store import Store

    if STATE.get("store") is None:
        STATE["store"] = Store(STATE["db"])
    return STATE["store"]


def progress(on_stderr: bool = False) -> Progress:
    """A progress bar; ``on_stderr`` when stdout carries ``--json`` data."""
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                    console=err_console if on_stderr else console)


# ---- tasks ----------------------------------------------------------------------------------


@tasks_app.command("generate")
def tasks_generate(domain: DomainOpt = "home", seed: int = 0, train: int = 400, dev: int = 60, test: int = 120,
                   as_json: JsonOpt = False) -> None:
    """Generate a domain's seeded train/dev/test tasks (idempotent for a seed)."""
    d = store().domain(domain)
    if d.generate_tasks is None:
        raise UserError(f"domain {d.name!r} has no task generator: import tasks with `supertiny tasks import`")
    inserted, present = store().add_tasks(d.generate_tasks(seed=seed, n_train=train, n_dev=dev, n_test=test))
    emit([{"domain": d.name, "seed": seed, "inserted": inserted, "already_present": present}], as_json=as_json)


@tasks_app.command("import")
def tasks_import(path: Path, domain: DomainOpt = "home", as_json: JsonOpt = False) -> None:
    """Import tasks from JSONL ({"input", "context", "gold", "split", "slice", "id", "meta"} per
    line), from any file or directory the domain's own loader reads (--domain snips: the SNIPS
    benchmark's directory), or from CSV (a header row naming those fields; context, gold and
    meta cells hold JSON). The whole file is checked first: a bad one stores nothing."""
    s = store()
    d = s.domain(domain)
    if not path.exists():
        raise UserError(f"task file not found: {path}")
    if path.suffix == ".jsonl":
        inserted, present = s.import_tasks_jsonl(path, d.name)
    elif d.load_tasks is not None:
        inserted, present = s.add_tasks(d.load_tasks(path))
    elif path.suffix == ".csv":
        inserted, present = s.import_tasks_csv(path, d.name)
    else:
        raise UserError(f"{path}: not a task file: use .jsonl or .csv (domain {d.name!r} has no loader of its own)")
    emit([{"file": str(path), "inserted": inserted, "already_present": present}], as_json=as_json)


@tasks_app.command("list")
def tasks_list(domain: Annotated[Optional[str], typer.Option()] = None, split: Optional[str] = None,
               limit: int = 20, as_json: JsonOpt = False) -> None:
    """List tasks."""
    rows = [t.model_dump() for t in store().tasks(domain=domain, split=split, limit=limit)]
    emit(rows, as_json=as_json, title="tasks", columns=["id", "split", "slice", "input", "gold"])


# ---- agent ----------------------------------------------------------------------------------


@agent_app.command("run")
def agent_run(text: str, domain: DomainOpt = "home", model: ModelOpt = "planner",
              now: Annotated[Optional[str], typer.Option(help="Local time for the request (ISO 8601); default: now.")] = None,
              context: ContextOpt = None,
              temperature: float = 0.0, seed: int = 0, max_model_calls: int = 6,
              label: Annotated[Optional[str], typer.Option(help="Label stored with the trace.")] = None,
              base_url: BaseUrlOpt = None, api_key: ApiKeyOpt = None, max_tokens: MaxTokensOpt = None,
              timeout: TimeoutOpt = 60.0, max_retries: RetriesOpt = 2, parallel_tool_calls: ParallelOpt = None,
              top_logprobs: LogprobsOpt = 0, as_json: JsonOpt = False) -> None:
    """Run the teacher on one request, print each step and store the trace."""
    from agent.backends import make_chat_model
    from agent.render import render_update
    from agent.run import context_for_request, run_request
    d = store().domain(domain)
    request_context = context_for_request(*parse_request_options(now, context))
    chat = make_chat_model(model, domain=d, temperature=temperature, seed=seed, base_url=base_url, api_key=api_key,
                           **endpoint_options(max_tokens, timeout, max_retries, parallel_tool_calls, top_logprobs))
    on_update = None if as_json else (lambda node, update: render_update(console, node, update))
    result = run_request(d, chat, text, request_context, max_model_calls=max_model_calls, on_update=on_update)
    trace_id = store().add_trace(result, domain=d.name, model=model, input=text, context=request_context, label=label)
    summary = {"trace_id": trace_id, "status": result.status, "final_call": result.final_call,
               "model_calls": result.model_calls, "tokens": result.prompt_tokens + result.completion_tokens,
               "latency_ms": result.latency_ms, "error": result.error}
    if as_json:
        print(json.dumps(summary, ensure_ascii=False))
    else:
        console.print(f"[dim]trace {trace_id} stored · {result.status} · {result.model_calls} model calls · "
                      f"{summary['tokens']} tokens · {result.latency_ms:.0f} ms[/]")
    if result.status == "error":
        raise typer.Exit(1)


@agent_app.command("chat")
def agent_chat(domain: DomainOpt = "home", model: ModelOpt = "planner", temperature: float = 0.0, seed: int = 0,
               max_model_calls: int = 6,
               now: Annotated[Optional[str], typer.Option(help="Local time for requests (ISO 8601); default: now.")] = None,
               context: ContextOpt = None,
               checkpoints: Annotated[Optional[Path], typer.Option(
                   help="SQLite file for the session's checkpoints (default: checkpoints.db next to --db).")] = None,
               step: Annotated[bool, typer.Option("--step", help="Start in step mode (pause before tool calls).")] = False,
               base_url: BaseUrlOpt = None, api_key: ApiKeyOpt = None, max_tokens: MaxTokensOpt = None,
               timeout: TimeoutOpt = 60.0, max_retries: RetriesOpt = 2, parallel_tool_calls: ParallelOpt = None,
               top_logprobs: LogprobsOpt = 0) -> None:
    """Interactive step-debugger: type a request and watch each step; pause before tool calls,
    edit or answer them, rewind, branch, save traces and replay them (:help inside)."""
    from agent.debugger import DebuggerShell, DebugSession, enable_line_editing, open_checkpointer

    moment, fixed_context = parse_request_options(now, context)
    s = store()
    checkpoints = checkpoints or (s.path.parent if s.path else Path("db")) / "checkpoints.db"  # no file on a server
    session = DebugSession(s.domain(domain), s, open_checkpointer(checkpoints), model=model, temperature=temperature,
                           seed=seed, max_model_calls=max_model_calls, now=moment, context=fixed_context,
                           model_options={"base_url": base_url, "api_key": api_key,
                                          **endpoint_options(max_tokens, timeout, max_retries, parallel_tool_calls,
                                                             top_logprobs)})
    session.step_mode = step
    enable_line_editing()
    try:
        DebuggerShell(session, console, checkpoints=checkpoints).loop()
    finally:
        session.close()


@agent_app.command("generate")
def agent_generate(split: str = "train", samples: int = 4, concurrency: int = 8,
                   workers: Annotated[int, typer.Option(help="Processes sharing the samples, --concurrency, --rpm and "
                                                             "--tpm (more CPU for fast endpoints).")] = 1,
                   domain: DomainOpt = "home",
                   model: ModelOpt = "planner", temperature: float = 0.7, seed: int = 0,
                   limit: Annotated[Optional[int], typer.Option(help="Only the first N tasks.")] = None,
                   max_model_calls: int = 6, base_url: BaseUrlOpt = None, api_key: ApiKeyOpt = None,
                   max_tokens: MaxTokensOpt = None, timeout: TimeoutOpt = 60.0,
                   parallel_tool_calls: ParallelOpt = None, top_logprobs: LogprobsOpt = 0,
                   rpm: RpmOpt = None, tpm: TpmOpt = None, max_attempts: MaxAttemptsOpt = 5,
                   retry_delay: RetryDelayOpt = 0.5, as_json: JsonOpt = False) -> None:
    """Run the teacher over a split's tasks, N samples each, as a job: re-run (or `jobs resume ID`)
    to resume it; error traces are retried then. Ctrl-C stops it cleanly."""
    from agent.batch import GenerateConfig, generate

    config = GenerateConfig(domain=domain, split=split, model=model, samples=samples, temperature=temperature,
                            seed=seed, concurrency=concurrency, workers=workers, max_model_calls=max_model_calls,
                            limit=limit,
                            base_url=base_url, api_key=api_key, rpm=rpm, tpm=tpm, max_attempts=max_attempts,
                            retry_delay=retry_delay,
                            model_options={k: v for k, v in endpoint_options(
                                max_tokens, timeout, 0, parallel_tool_calls, top_logprobs).items() if k != "max_retries"})
    counts = run_job_with_progress(f"{model} on {split}",
                                   lambda on_progress: generate(store(), config, on_progress=on_progress))
    print_job_result(counts, as_json)


# ---- jobs -----------------------------------------------------------------------------------

jobs_app = typer.Typer(no_args_is_help=True, help="Batch generation jobs: progress, cost, resume, cancel.")
app.add_typer(jobs_app, name="jobs")
JOB_COLUMNS = ["id", "kind", "status", "model", "split", "progress", "errors", "failed attempts", "cost_usd",
               "updated_at"]


class RateColumn(ProgressColumn):
    """Samples per second, as rich measures it over the last 30 s."""

    def render(self, task) -> Text:
        return Text(f"{task.speed:.1f}/s" if task.speed else "-/s", style="progress.data.speed")


def run_job_with_progress(description: str, run) -> dict:
    """``run(on_progress)`` under a progress bar (rate, ETA, errors so far). A job that stops early
    is one line on stderr saying how to resume it; exit 130 after Ctrl-C, else 1."""
    from agent.batch import JobInterrupted, JobProgress, JobStopped

    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), RateColumn(),
               TextColumn("ETA"), TimeRemainingColumn(), TextColumn("{task.fields[info]}"))
    try:
        with Progress(*columns, console=err_console, disable=not err_console.is_terminal) as bar:
            task = bar.add_task(description, total=None, info="")

            def on_progress(p: JobProgress) -> None:
                cost = "" if p.cost_usd is None else f" · ${p.cost_usd:.4f}"
                bar.update(task, completed=p.done, total=p.total, description=f"job {p.job_id} {description}",
                           info=f"errors {p.errors} · failed attempts {p.failed_attempts}{cost}")

            return run(on_progress)
    except JobStopped as stopped:
        db = f" --db {STATE['db']}" if STATE["db"] else ""
        err_console.print(f"{'Interrupted' if isinstance(stopped, JobInterrupted) else 'Stopped'}: job "
                          f"{stopped.job_id} {stopped.reason} with {stopped.done}/{stopped.total} samples stored; "
                          f"resume with `supertiny{db} jobs resume {stopped.job_id}`",
                          highlight=False, soft_wrap=True, markup=False)
        raise typer.Exit(130 if isinstance(stopped, JobInterrupted) else 1)


def print_job_result(counts: dict, as_json: bool) -> None:
    if as_json:
        emit([counts], as_json=True)  # a list of one, as `agent generate --json` always printed
        return
    cost = "no price for this model (`supertiny jobs set-price`)" if counts["cost_usd"] is None else \
        f"${counts['cost_usd']:.4f}"
    console.print(f"job {counts['job_id']} {counts['status']}: {counts['total']} samples ({counts['new']} run now, "
                  f"{counts['retried']} of them retried error traces) · {counts['errors']} error traces · "
                  f"{counts['attempts']} attempts, {counts['failed_attempts']} failed · "
                  f"{counts['prompt_tokens'] + counts['completion_tokens']} tokens · {cost}", highlight=False)


def job_summary(job) -> dict:
    return {"id": job.id, "kind": job.kind, "status": job.status, "model": job.model, "split": job.split,
            "samples": job.samples, "progress": f"{job.samples_done}/{job.samples_total}", "done": job.samples_done,
            "total": job.samples_total, "errors": job.samples_error, "attempts": job.attempts,
            "failed attempts": job.attempts_failed, "tokens": job.prompt_tokens + job.completion_tokens,
            "prompt_tokens": job.prompt_tokens, "completion_tokens": job.completion_tokens, "cost_usd": job.cost_usd,
            "stop_reason": job.stop_reason, "pid": job.pid, "created_at": job.created_at, "updated_at": job.updated_at}


@jobs_app.command("list")
def jobs_list(limit: int = 20, as_json: JsonOpt = False) -> None:
    """Jobs, newest first: status, progress, errors, tokens and cost."""
    emit([job_summary(j) for j in store().jobs(limit=limit)], as_json=as_json, title="jobs", columns=JOB_COLUMNS)


@jobs_app.command("status")
def jobs_status(job_id: int, as_json: JsonOpt = False) -> None:
    """One job: counters, cost, why it stopped, its attempts by outcome, and its settings."""
    from agent.batch import process_alive

    s = store()
    job = s.existing_job(job_id)
    summary = {**job_summary(job), "running_here": job.status == "running" and bool(job.pid) and process_alive(job.pid),
               "attempts_by_outcome": s.job_attempts(job_id), "config": job.config}
    if as_json:
        print(json.dumps(summary, indent=2, ensure_ascii=False, default=str))
        return
    if job.status == "running" and not summary["running_here"]:
        summary["status"] = "running (no process: it was killed; resume it)"
    emit([{"field": k, "value": v} for k, v in summary.items() if k not in ("attempts_by_outcome", "config")],
         as_json=False, title=f"job {job_id}", columns=["field", "value"])
    emit(summary["attempts_by_outcome"], as_json=False, title="attempts")
    if job.status in ("interrupted", "cancelled") or summary["status"].startswith("running ("):
        console.print(f"resume with `supertiny jobs resume {job_id}`")


@jobs_app.command("resume")
def jobs_resume(job_id: int, concurrency: Annotated[Optional[int], typer.Option(help="Default: the job's.")] = None,
                workers: Annotated[Optional[int], typer.Option(help="Default: the job's.")] = None,
                rpm: RpmOpt = None, tpm: TpmOpt = None,
                max_attempts: Annotated[Optional[int], typer.Option(help="Default: the job's.")] = None,
                retry_delay: Annotated[Optional[float], typer.Option(help="Default: the job's.")] = None,
                base_url: BaseUrlOpt = None, api_key: ApiKeyOpt = None, as_json: JsonOpt = False) -> None:
    """Run a job again with its own settings: samples without a trace, and error traces (replaced).
    Runs a cancelled job too. The API key is never stored: pass --api-key or set OPENAI_API_KEY."""
    from agent.batch import resume

    s = store()
    job = s.existing_job(job_id)
    if job.kind != "generate":
        raise UserError(f"job {job_id} is a {job.kind!r} job: only generate jobs can be resumed")
    counts = run_job_with_progress(f"{job.model} on {job.split}", lambda on_progress: resume(
        s, job_id, on_progress, concurrency=concurrency, workers=workers, rpm=rpm, tpm=tpm, max_attempts=max_attempts,
        retry_delay=retry_delay, base_url=base_url, api_key=api_key))
    print_job_result(counts, as_json)


@jobs_app.command("cancel")
def jobs_cancel(job_id: int, as_json: JsonOpt = False) -> None:
    """Cancel a job: a process running it stops within a second; re-running its command refuses
    until `jobs resume` runs it again."""
    job = store().cancel_job(job_id)
    emit([job_summary(job)], as_json=as_json, title="cancelled", columns=JOB_COLUMNS)


@jobs_app.command("prices")
def jobs_prices(as_json: JsonOpt = False) -> None:
    """USD per million tokens per model: the built-in table and this database's own (which wins)."""
    from agent.pricing import BUILTIN_PRICES

    rows = [{"model": r.model, "prompt_usd_per_1m": r.prompt_usd_per_1m,
             "completion_usd_per_1m": r.completion_usd_per_1m, "source": "database"} for r in store().prices()]
    rows += [{"model": name, "prompt_usd_per_1m": p.prompt_usd_per_1m, "completion_usd_per_1m": p.completion_usd_per_1m,
              "source": "built-in"} for name, p in BUILTIN_PRICES.items()]
    emit(rows, as_json=as_json, title="prices (USD per 1M tokens)")


@jobs_app.command("set-price")
def jobs_set_price(model: Annotated[str, typer.Argument(help="A --model spec (openai:gpt-4o-mini) or bare name.")],
                   prompt: Annotated[float, typer.Option("--prompt", help="USD per 1M prompt tokens.")],
                   completion: Annotated[float, typer.Option("--completion", help="USD per 1M completion tokens.")],
                   as_json: JsonOpt = False) -> None:
    """Set a model's price in this database (overrides the built-in one); jobs cost it from their next write."""
    row = store().set_price(model, prompt, completion)
    emit([row.model_dump()], as_json=as_json, title="price")


# ---- traces ---------------------------------------------------------------------------------


@traces_app.command("list")
def traces_list(job: Optional[int] = None,
                model: Annotated[Optional[str], typer.Option(help="Only traces of this teacher model.")] = None,
                status: Optional[str] = None,
                split: Annotated[Optional[str], typer.Option(help="Only traces of tasks in this split.")] = None,
                domain: Annotated[Optional[str], typer.Option()] = None,
                score: Annotated[Optional[list[str]], typer.Option(
                    "--score", help="SCORER<op>VALUE, e.g. gold_match>=1; SCORER alone: it passed. Repeatable.")] = None,
                limit: Annotated[int, typer.Option(help="The newest N; 0: every match, oldest first.")] = 20,
                as_json: JsonOpt = False) -> None:
    """List the newest traces (without their messages), filtered, with their scores."""
    from dataengine.curate import parse_condition
    from dataengine.query import TraceFilter

    if limit < 0:
        raise UserError(f"--limit must be >= 0, got {limit}")
    where = TraceFilter(job_id=job, model=model, status=status, split=split, domain=domain,
                        scores=[parse_condition(text, "--score") for text in score or []], limit=limit or None)
    emit(store().trace_summaries(where), as_json=as_json, title="traces",
         columns=["id", "task_id", "job_id", "sample_index", "model", "status", "final_call", "scores", "model_calls",
                  "prompt_tokens", "latency_ms"])


@traces_app.command("show")
def traces_show(trace_id: int, as_json: JsonOpt = False) -> None:
    """One trace as a tree: each model call (tokens, latency) with the tool calls it asked for
    (arguments, result or error), the final call, and the scores."""
    from supertiny.views import trace_tree

    s = store()
    trace = s.trace(trace_id)
    model_calls, tool_calls, scores = s.model_calls_of(trace_id), s.tool_calls(trace_id), s.scores_of(trace_id)
    if as_json:
        print(json.dumps({**trace.model_dump(), "model_calls": [c.model_dump() for c in model_calls],
                          "tool_calls": [c.model_dump() for c in tool_calls],
                          "scores": [c.model_dump() for c in scores]}, indent=2, ensure_ascii=False))
        return
    console.print(trace_tree(trace, model_calls, tool_calls, scores))


@traces_app.command("sql")
def traces_sql(query: Annotated[str, typer.Argument(help="One SELECT (or WITH ... SELECT) statement.")],
               limit: Annotated[int, typer.Option(help="Print at most N rows; 0: all.")] = 1000,
               as_json: JsonOpt = False) -> None:
    """Run one reading SQL statement through a read-only connection; anything that writes is
    refused. Tables and example queries: docs/schema.md."""
    if limit < 0:
        raise UserError(f"--limit must be >= 0, got {limit}")
    result = store().read_only_sql(query, limit or None)
    emit([dict(zip(result.columns, row)) for row in result.rows], as_json=as_json, title="rows",
         columns=result.columns)
    if result.truncated:
        err_console.print(f"[dim]first {limit} rows shown: --limit 0 for all[/]")


@traces_app.command("import")
def traces_import(path: Path,
                  model: Annotated[str, typer.Option("--model", help="The model that had the conversations.")],
                  domain: DomainOpt = "home", as_json: JsonOpt = False) -> None:
    """Import external traces from OpenAI chat-log JSONL: one {"messages": [...]} conversation
    per line (optional "context", "task_id"). The final call is the last assistant tool call that
    is one of the domain's actions. Re-importing the same file adds nothing."""
    emit([store().import_chat_log(path, domain, model)], as_json=as_json, title="imported traces")


@traces_app.command("verify")
def traces_verify(split: str = "train", domain: DomainOpt = "home", as_json: JsonOpt = False) -> None:
    """Score every trace of a split against gold (scorer 'gold_match')."""
    from dataengine.curate import verify_traces

    emit([verify_traces(store(), domain=domain, split=split)], as_json=as_json, title="verification")


# ---- traces: curation (judge, self-consistency, dedup, review; every result a score with provenance) ----

SplitFilter = Annotated[Optional[str], typer.Option("--split", help="Only traces of tasks in this split.")]
JobFilter = Annotated[Optional[int], typer.Option("--job", help="Only traces of this generation job.")]


@traces_app.command("judge")
def traces_judge(model: Annotated[str, typer.Option("--model", help="The judge model: openai:<model>.")],
                 rubric: Annotated[Optional[Path], typer.Option(
                     help="Text file with the grading criteria (default: built-in for the domain).")] = None,
                 domain: DomainOpt = "home", split: SplitFilter = None, job: JobFilter = None,
                 limit: Annotated[Optional[int], typer.Option(help="Judge at most N traces.")] = None,
                 scorer: Annotated[str, typer.Option(help="Store under this scorer name (judges side by side).")] = "judge",
                 force: Annotated[bool, typer.Option(
                     "--force", help="Judge again traces already judged with the same settings.")] = False,
                 concurrency: int = 4, temperature: float = 0.0, base_url: BaseUrlOpt = None, api_key: ApiKeyOpt = None,
                 max_tokens: Annotated[int, typer.Option("--max-tokens", help="Most tokens per judgement.")] = 512,
                 timeout: TimeoutOpt = 60.0, max_retries: RetriesOpt = 2, as_json: JsonOpt = False) -> None:
    """LLM-as-judge: score each answer 1-5 against a rubric (stored 0..1 as scorer 'judge')."""
    from dataengine.judge import JudgeEndpoint, judge_traces

    endpoint = JudgeEndpoint(model=model, base_url=base_url, api_key=api_key, temperature=temperature,
                             max_tokens=max_tokens, timeout=timeout, max_retries=max_retries)
    arguments = dict(domain=domain, split=split, job_id=job, limit=limit, rubric_file=rubric, scorer=scorer,
                     concurrency=concurrency, force=force)
    if as_json:
        counts = judge_traces(store(), endpoint, **arguments)
    else:
        with progress() as bar:
            task = bar.add_task(f"judge {model}", total=None, info="")
            counts = judge_traces(store(), endpoint, **arguments,
                                  on_progress=lambda done, total: bar.update(task, completed=done, total=total))
    emit([counts], as_json=as_json, title="judgements")


@traces_app.command("consistency")
def traces_consistency(domain: DomainOpt = "home", split: SplitFilter = None, job: JobFilter = None,
                       model: Annotated[Optional[str], typer.Option(help="Only samples of this teacher model.")] = None,
                       min_samples: int = 2, as_json: JsonOpt = False) -> None:
    """Self-consistency without gold: each trace scores the share of its task's samples that gave
    the same answer (scorer 'self_consistency'; answers compared with the domain's compare)."""
    from dataengine.curate import self_consistency

    counts = self_consistency(store(), domain=domain, split=split, job_id=job, model=model, min_samples=min_samples)
    emit([counts], as_json=as_json, title="self-consistency")


@traces_app.command("dedup")
def traces_dedup(on: Annotated[str, typer.Option("--on", help="input, trajectory or both.")] = "both",
                 threshold: Annotated[Optional[float], typer.Option(
                     help="Near-duplicate Jaccard similarity (default 0.85 for inputs, 0.9 for trajectories).")] = None,
                 ngram: Annotated[int, typer.Option(help="Character n-gram size for the similarity.")] = 4,
                 rank_by: Annotated[Optional[list[str]], typer.Option(
                     "--rank-by", help="Scorers that pick a cluster's representative, best first "
                                       "(default: review, gold_match, judge).")] = None,
                 domain: DomainOpt = "home", split: SplitFilter = None, job: JobFilter = None,
                 as_json: JsonOpt = False) -> None:
    """Mark exact and near duplicates (scorers 'dedup_input', 'dedup_trajectory': 1 kept, 0 duplicate)."""
    from dataengine.dedup import DEFAULT_RANK_BY, dedup_inputs, dedup_trajectories

    if on not in ("input", "trajectory", "both"):
        raise UserError(f"--on must be input, trajectory or both, not {on!r}")
    options = dict(domain=domain, split=split, job_id=job, ngram=ngram, rank_by=tuple(rank_by or DEFAULT_RANK_BY))
    if threshold is not None:
        options["threshold"] = threshold
    rows = []
    if on in ("input", "both"):
        rows.append(dedup_inputs(store(), **options))
    if on in ("trajectory", "both"):
        rows.append(dedup_trajectories(store(), **options))
    emit(rows, as_json=as_json, title="deduplication")


@traces_app.command("review")
def traces_review(split: SplitFilter = None, status: Optional[str] = None,
                  domain: Annotated[Optional[str], typer.Option(help="Only traces of this domain.")] = None,
                  job: JobFilter = None,
                  score: Annotated[Optional[list[str]], typer.Option(
                      "--score", help="Only traces whose score satisfies this, e.g. 'gold_match<1' (repeatable).")] = None,
                  pending: Annotated[bool, typer.Option("--pending", help="Only traces not reviewed yet.")] = False,
                  limit: Optional[int] = None) -> None:
    """Step through traces and accept, reject or edit their answers (scorer 'review'); ? for keys."""
    from agent.debugger import enable_line_editing
    from dataengine.curate import parse_condition
    from dataengine.review import ReviewSession, ReviewShell, select_traces

    s = store()
    conditions = [parse_condition(text, option="--score") for text in score or []]
    trace_ids = select_traces(s, domain=s.domain(domain).name if domain else None, split=split, status=status,
                              job_id=job, where=conditions, pending=pending, limit=limit)
    enable_line_editing()
    ReviewShell(ReviewSession(s, trace_ids), console).loop()


# ---- datasets -------------------------------------------------------------------------------


@dataset_app.command("build")
def dataset_build(name: str, split: str = "train", domain: DomainOpt = "home", min_score: float = 1.0,
                  model: Annotated[Optional[str], typer.Option(help="Only traces of this teacher model.")] = None,
                  scorer: Annotated[str, typer.Option(
                      help="The score compared with --min-score (e.g. self_consistency when there is no gold).")] = "gold_match",
                  require: Annotated[Optional[list[str]], typer.Option(
                      "--require", help="Also require this score, e.g. dedup_input or 'judge>=0.75' (repeatable).")] = None,
                  from_gold: Annotated[bool, typer.Option(
                      "--from-gold", help="No teacher: train on the tasks' own gold calls (human-labelled data "
                                          "such as SNIPS), stored as traces of model 'gold'.")] = False,
                  limit: Annotated[Optional[int], typer.Option(
                      help="With --from-gold: only N tasks, spread evenly over the split.")] = None,
                  as_json: JsonOpt = False) -> None:
    """Best-of-N rejection sampling: one verified trace per task, as a new version NAME@N.
    Reviewed traces follow the reviewer: rejected ones are dropped, accepted ones pass (edited answers included).
    With --from-gold: one gold trace per task instead."""
    from dataengine.curate import best_of_n

    if from_gold:
        from dataengine.gold import gold_dataset

        if model or require:
            raise UserError("--from-gold takes every task's gold call: --model and --require do not apply")
        dataset, counts = gold_dataset(store(), name=name, domain=domain, split=split, limit=limit)
        emit([{"dataset": f"{dataset.name}@{dataset.version}", **counts}], as_json=as_json, title="dataset")
        return
    if limit is not None:
        raise UserError("--limit applies to --from-gold only")
    dataset, counts = best_of_n(store(), name=name, domain=domain, split=split, min_score=min_score, model=model,
                                scorer=scorer, require=require or [])
    emit([{"dataset": f"{dataset.name}@{dataset.version}", **counts}], as_json=as_json, title="dataset")


@dataset_app.command("list")
def dataset_list(as_json: JsonOpt = False) -> None:
    """List datasets and versions."""
    s = store()
    rows = [{"dataset": f"{d.name}@{d.version}", "domain": d.domain, "items": len(s.dataset_items(d.id)),
             "spec": d.spec, "created_at": d.created_at} for d in s.datasets()]
    emit(rows, as_json=as_json, title="datasets")


@dataset_app.command("export")
def dataset_export(name: str, out: Annotated[Optional[Path], typer.Option("--out", "-o")] = None,
                   format: Annotated[str, typer.Option(
                       help="chat (OpenAI messages + tools), direct (prompt/completion) or hf (a Hugging Face "
                            "datasets directory; needs --out).")] = "chat") -> None:
    """Write a dataset as JSONL (to stdout without --out), or as a Hugging Face dataset directory."""
    from dataengine.export import export_jsonl, iter_chat_records, iter_direct_examples, save_hf_dataset

    if format not in ("chat", "direct", "hf"):
        raise UserError(f"--format must be 'chat', 'direct' or 'hf', not {format!r}")
    if format == "hf":
        if out is None:
            raise UserError("--format hf writes a directory: give --out DIR")
        rows = save_hf_dataset(store(), name, out)
        err_console.print(f"wrote {rows} rows to {out} (read it with datasets.load_from_disk)")
        return
    if out is None:  # streamed: a version of any size holds one batch of rows at a time
        records = iter_chat_records(store(), name) if format == "chat" else iter_direct_examples(store(), name)
        for record in records:
            print(json.dumps(record, ensure_ascii=False))
    else:
        count = export_jsonl(store(), name, format, out)
        err_console.print(f"wrote {count} records to {out}")


@dataset_app.command("diff")
def dataset_diff(a: Annotated[str, typer.Argument(help="NAME@N (or NAME: its latest version).")],
                 b: Annotated[str, typer.Argument(help="NAME@N (or NAME: its latest version).")],
                 as_json: JsonOpt = False) -> None:
    """Items added, removed, and changed (another trace for the same task) from version A to B."""
    from dataengine.lineage import dataset_diff as diff_versions
    from supertiny.views import diff_table

    diff = diff_versions(store(), a, b)
    if as_json:
        print(json.dumps(diff, indent=2, ensure_ascii=False))
    else:
        console.print(diff_table(diff))


# ---- student, compress, models ----------------------------------------------------------------


@student_app.command("train")
def student_train(dataset: Annotated[str, typer.Option(help="NAME or NAME@N.")],
                  out: Annotated[Path, typer.Option(help="Output model directory.")],
                  base: Annotated[str, typer.Option(help="'smollm2-135m' or a local model directory.")] = "smollm2-135m",
                  mode: Annotated[str, typer.Option(help="'full' or 'lora' (adapters merged in after).")] = "full",
                  lora_r: Annotated[int, typer.Option(min=1, help="LoRA rank with --mode lora.")] = 16,
                  epochs: float = 2.0, max_steps: int = -1, learning_rate: Optional[float] = None,
                  batch_size: int = 8,
                  bf16: Annotated[Optional[bool], typer.Option(
                      help="bf16 autocast (float32 weights). Default: on when the CPU has native bf16.")] = None,
                  format: Annotated[str, typer.Option(
                      "--format", help="'direct' (request -> one call), 'program' (request -> lookups and the "
                                       "call in one line, run by the domain's tools) or 'agent' (the teacher's "
                                       "conversations with tool calls; runs in the agent graph via local:).")] = "direct",
                  max_length: Annotated[Optional[int], typer.Option(
                      help="--format agent: most tokens per conversation; longer ones are left out (default 2048).")] = None,
                  save_steps: Annotated[int, typer.Option(
                      min=0, help="Checkpoint into --out every N steps (direct/program), so --resume can continue.")] = 0,
                  resume: Annotated[bool, typer.Option(
                      help="Continue from the last checkpoint in --out (written with --save-steps).")] = False,
                  name_swaps: Annotated[int, typer.Option(
                      min=0, help="--format program: N extra copies of each example whose lookups copy a name "
                                  "(song, city, room) from the request, with the name made up, so the student "
                                  "learns to copy names it has never seen.")] = 0,
                  as_json: JsonOpt = False) -> None:
    """Supervised fine-tuning (TRL SFTTrainer) of a direct-, program- or agent-mode student."""
    from supertiny.pipeline import train_and_register

    if format not in ("direct", "program", "agent"):
        raise UserError(f"--format must be 'direct', 'program' or 'agent', not {format!r}")
    if format == "agent":
        from student.train_agent import train_agent_and_register

        if name_swaps:
            raise UserError("--name-swaps applies to --format program only (plans that look names up)")
        row = train_agent_and_register(store(), dataset_ref=dataset, base=base, out=out, mode=mode, epochs=epochs,
                                       max_steps=max_steps, learning_rate=learning_rate, batch_size=batch_size,
                                       max_length=max_length, bf16=bf16, lora_r=lora_r)
        emit([row.model_dump()], as_json=as_json, title="student",
             columns=["id", "name", "kind", "path", "params", "bytes"])
        return
    if max_length is not None:
        raise UserError("--max-length applies to --format agent only")
    if resume and not any(out.glob("checkpoint-*")):
        raise UserError(f"--resume: no checkpoint in {out} (train with --save-steps N to write them)")
    row = train_and_register(store(), dataset_ref=dataset, base=base, out=out, mode=mode, epochs=epochs,
                             max_steps=max_steps, learning_rate=learning_rate, batch_size=batch_size, bf16=bf16,
                             format=format, lora_r=lora_r, save_steps=save_steps, resume=resume,
                             name_swaps=name_swaps)
    emit([row.model_dump()], as_json=as_json, title="student", columns=["id", "name", "kind", "path", "params", "bytes"])


StudentDirOpt = Annotated[Path, typer.Option("--model", help="The student directory to start from (an SFT student).")]
Bf16Opt = Annotated[Optional[bool], typer.Option(help="bf16 autocast (float32 weights). Default: on when the CPU "
                                                      "has native bf16.")]


@student_app.command("dpo")
def student_dpo(model: StudentDirOpt,
                dataset: Annotated[str, typer.Option(help="NAME or NAME@N: its tasks and verified answers.")],
                out: Annotated[Path, typer.Option(help="Output model directory.")],
                pairs: Annotated[str, typer.Option(
                    help="Rejected answers from: teacher (its failed samples), self (the student's wrong "
                         "answers) or both.")] = "both",
                self_samples: Annotated[int, typer.Option(help="Sampled student answers per task on top of "
                                                               "the greedy one.")] = 0,
                beta: float = 0.1, learning_rate: float = 5e-6, epochs: float = 1.0, max_steps: int = -1,
                batch_size: int = 8, mode: str = "full", bf16: Bf16Opt = None, as_json: JsonOpt = False) -> None:
    """Direct preference optimization (TRL DPOTrainer) of an SFT student: verified answers over wrong ones."""
    from supertiny.pipeline import dpo_and_register

    row = dpo_and_register(store(), dataset_ref=dataset, model_dir=model, out=out, pairs=pairs,
                           self_samples=self_samples, beta=beta, learning_rate=learning_rate, epochs=epochs,
                           max_steps=max_steps, batch_size=batch_size, mode=mode, bf16=bf16)
    emit([{**row.model_dump(), "pairs": _manifest_of(row.path).get("pairs")}], as_json=as_json,
         title="student (dpo)", columns=["id", "name", "kind", "path", "pairs", "params"])


@student_app.command("grpo")
def student_grpo(model: StudentDirOpt, out: Annotated[Path, typer.Option(help="Output model directory.")],
                 split: str = "train", domain: DomainOpt = "home",
                 limit: Annotated[Optional[int], typer.Option(help="Only the first N tasks.")] = None,
                 max_steps: int = 100, num_generations: int = 4, prompts_per_step: int = 2,
                 max_completion_length: Annotated[Optional[int], typer.Option(
                     help="Tokens per sampled answer. Default: 48 direct, 128 for a program plan.")] = None,
                 temperature: float = 1.0, learning_rate: float = 1e-6,
                 beta: Annotated[float, typer.Option(help="KL penalty towards the starting model.")] = 0.0,
                 bf16: Bf16Opt = None, as_json: JsonOpt = False) -> None:
    """On-policy RL (TRL GRPOTrainer): the student samples answers, the domain's verifier rewards them
    (1 exact; else partial credit for the name and argument F1; 0 for a non-call)."""
    from supertiny.pipeline import grpo_and_register

    row = grpo_and_register(store(), model_dir=model, out=out, domain=domain, split=split, limit=limit,
                            max_steps=max_steps, num_generations=num_generations, prompts_per_step=prompts_per_step,
                            max_completion_length=max_completion_length, temperature=temperature,
                            learning_rate=learning_rate, beta=beta, bf16=bf16)
    manifest = _manifest_of(row.path)
    emit([{**row.model_dump(), "first_mean_reward": manifest.get("first_mean_reward"),
           "final_mean_reward": manifest.get("final_mean_reward")}], as_json=as_json, title="student (grpo)",
         columns=["id", "name", "kind", "path", "first_mean_reward", "final_mean_reward"])


LossOpt = Annotated[str, typer.Option("--loss", help="Divergence: fkl (forward KL), rkl (reverse KL) or jsd.")]


@student_app.command("distill")
def student_distill(model: StudentDirOpt, dataset: Annotated[str, typer.Option(help="NAME or NAME@N.")],
                    out: Annotated[Path, typer.Option(help="Output model directory.")],
                    teacher: Annotated[Optional[Path], typer.Option(
                        help="Local teacher model directory with the student's tokenizer. Without it: the top-k "
                             "logprobs stored with the dataset's traces (agent generate --top-logprobs K).")] = None,
                    loss: LossOpt = "fkl", temperature: float = 1.0,
                    top_k: Annotated[Optional[int], typer.Option(
                        help="Compare on the teacher's k most likely tokens only.")] = None,
                    alpha: Annotated[float, typer.Option(help="KD weight per token; 1 - alpha weights the "
                                                              "cross-entropy on the data.")] = 0.5,
                    learning_rate: float = 5e-5, epochs: float = 2.0, max_steps: int = -1, batch_size: int = 8,
                    bf16: Bf16Opt = None, as_json: JsonOpt = False) -> None:
    """Logit knowledge distillation: a teacher's next-token distributions mixed with the hard labels."""
    from supertiny.pipeline import distill_and_register

    row = distill_and_register(store(), dataset_ref=dataset, model_dir=model, out=out, teacher=teacher, loss=loss,
                               temperature=temperature, top_k=top_k, alpha=alpha, learning_rate=learning_rate,
                               epochs=epochs, max_steps=max_steps, batch_size=batch_size, bf16=bf16)
    manifest = _manifest_of(row.path)
    emit([{**row.model_dump(), "teacher": manifest.get("teacher"), "final_train_loss": manifest.get("final_train_loss")}],
         as_json=as_json, title="student (distilled)",
         columns=["id", "name", "kind", "path", "teacher", "final_train_loss"])


def _manifest_of(path: str) -> dict:
    from student.manifest import read_manifest

    return read_manifest(path)


@app.command("serve")
def serve_command(model_dir: Annotated[Path, typer.Argument(help="A student or compressed student directory.")],
                  host: Annotated[str, typer.Option(help="Address to listen on; 127.0.0.1 is this machine only.")] = "127.0.0.1",
                  port: Annotated[int, typer.Option(help="TCP port (0: any free one).")] = 8000,
                  api_key: Annotated[Optional[str], typer.Option(
                      "--api-key", envvar="SUPERTINY_API_KEY",
                      help="Require 'Authorization: Bearer KEY' on every request (or SUPERTINY_API_KEY).")] = None,
                  name: Annotated[Optional[str], typer.Option(help="Model id reported to clients (default: the directory name).")] = None,
                  verbose: Annotated[bool, typer.Option(help="Log every request on stderr.")] = False) -> None:
    """An OpenAI-compatible /v1/chat/completions endpoint (and /v1/models) for a student: tool calls,
    streaming, usage. Agent-mode students answer with the tools they are given; direct-mode ones
    with their one call. Ctrl-C stops it."""
    from student.serve import StudentServer

    server = StudentServer(model_dir, host=host, port=port, api_key=api_key, name=name, verbose=verbose)
    if api_key is None and host not in ("127.0.0.1", "localhost", "::1"):
        err_console.print(f"[yellow]Warning:[/] listening on {host} without --api-key: anyone who reaches it can use it")
    err_console.print(f"serving {model_dir} ({server.mode}-mode) as {server.name!r} on {server.base_url}  "
                      "(Ctrl-C stops)", highlight=False)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        err_console.print("stopped")


@compress_app.command("prune")
def compress_prune(model_dir: Path, out: Annotated[Path, typer.Option()],
                   ratio: Annotated[float, typer.Option("--ratio", "--keep",
                                                        help="Keep this fraction of the parameters.")] = 0.8,
                   params: Annotated[Optional[int], typer.Option(
                       "--params", help="Keep at most this many parameters (replaces --ratio).")] = None,
                   method: Annotated[str, typer.Option(
                       help="depth: drop layers; width: drop MLP channels and key/value groups in every "
                            "layer; both: half the budget each way.")] = "depth",
                   kv_groups: Annotated[Optional[int], typer.Option(
                       "--kv-groups", help="Width: key/value groups removed per layer (default: the count "
                                           "with the lowest loss on the calibration dataset's completions).")] = None,
                   calibration_dataset: Annotated[Optional[str], typer.Option(help="Dataset whose prompts calibrate.")] = None,
                   vocab: Annotated[Optional[int], typer.Option(
                       "--vocab", help="First trim the vocabulary to about N tokens: every token of the "
                                       "calibration dataset, then the commonest (e.g. 16384).")] = None,
                   as_json: JsonOpt = False) -> None:
    """Prune to a parameter budget: whole layers (block influence) and/or width (activation importance),
    optionally after trimming the vocabulary."""
    from compress.prune import prune_summary
    from student.manifest import read_manifest
    from supertiny.pipeline import prune_and_register

    row = prune_and_register(store(), model_dir=model_dir, out=out, ratio=ratio, calibration_dataset=calibration_dataset,
                             method=method, target_params=params, remove_kv_groups=kv_groups, vocab_size=vocab)
    removed = prune_summary(read_manifest(row.path))
    if as_json:
        emit([{**row.model_dump(), "removed": removed}], as_json=True)
        return
    emit([row.model_dump()], as_json=False, title="pruned", columns=["id", "name", "kind", "path", "params", "bytes"])
    for key, value in removed.items():
        console.print(f"  {key}: {value}", markup=False, highlight=False)


@compress_app.command("heal")
def compress_heal(model_dir: Path, dataset: Annotated[str, typer.Option(help="NAME or NAME@N to heal on.")],
                  out: Annotated[Path, typer.Option()], epochs: float = 1.0, max_steps: int = -1,
                  learning_rate: float = 1e-4,
                  teacher: Annotated[Optional[Path], typer.Option(
                      help="Heal by logit distillation from this model (the unpruned student) instead of plain "
                           "fine-tuning; before/after metrics go into the manifest.")] = None,
                  loss: LossOpt = "fkl",
                  quant_aware: Annotated[Optional[str], typer.Option(
                      help="int4-weight: heal for the int4 model this one will become (quantization-aware "
                           "distillation; needs --teacher), then `compress quantize --method int4-weight`.")] = None,
                  as_json: JsonOpt = False) -> None:
    """Short fine-tune of a pruned model on the dataset it serves, to recover what pruning broke."""
    from supertiny.pipeline import distill_and_register, require_model_dir, train_and_register

    require_model_dir(model_dir)
    if quant_aware is not None and teacher is None:
        raise UserError("--quant-aware heals by distillation: give the unpruned model as --teacher DIR")
    if teacher is None:
        row = train_and_register(store(), dataset_ref=dataset, base=str(model_dir), out=out, epochs=epochs,
                                 max_steps=max_steps, learning_rate=learning_rate, kind="healed")
        emit([row.model_dump()], as_json=as_json, title="healed",
             columns=["id", "name", "kind", "path", "params", "bytes"])
        return
    row = distill_and_register(store(), dataset_ref=dataset, model_dir=model_dir, out=out, teacher=teacher, loss=loss,
                               learning_rate=learning_rate, epochs=epochs, max_steps=max_steps, kind="healed",
                               measure=True, quant_aware=quant_aware)
    manifest = _manifest_of(row.path)
    before, after = manifest.get("before") or {}, manifest.get("after") or {}
    if as_json:
        emit([{**row.model_dump(), "before": before, "after": after}], as_json=True)
        return
    emit([row.model_dump()], as_json=False, title="healed (distilled)",
         columns=["id", "name", "kind", "path", "params", "bytes"])
    emit([{"metric": key, "before (pruned)": before.get(key), "after (healed)": after.get(key)}
          for key in ("completion_loss", "exact_match") if key in after], as_json=False, title="heal")


@compress_app.command("quantize")
def compress_quantize(model_dir: Path, out: Annotated[Path, typer.Option()],
                      method: Annotated[str, typer.Option(
                          help="auto | int8-dynamic | int8-smooth | int8-weight | int4-weight | onnx-int8 | onnx-int4 | "
                               "onnx-fp32 (ONNX Runtime; fp32: the runtime alone). auto: measure all but onnx-fp32, "
                               "keep the fastest within --max-drop.")] = "auto",
                      max_drop: Annotated[float, typer.Option(
                          help="auto: largest allowed drop in next-token accuracy vs the float model.")] = 0.01,
                      calibration_dataset: Annotated[Optional[str], typer.Option(
                          help="Dataset whose pairs measure accuracy (default: the one the model was trained on).")] = None,
                      threads: Annotated[Optional[int], typer.Option(
                          help="torch threads while timing the methods (default: one per core); use the count "
                               "the model will serve with.")] = None,
                      as_json: JsonOpt = False) -> None:
    """Quantize the linear layers (int8 dynamic, int8 or int4 weight-only, in torch or exported to ONNX
    Runtime); auto keeps the fastest within budget."""
    from student.manifest import read_manifest
    from supertiny.pipeline import quantize_and_register

    row = quantize_and_register(store(), model_dir=model_dir, out=out, method=method, max_drop=max_drop,
                                calibration_dataset=calibration_dataset, threads=threads)
    manifest = read_manifest(row.path)
    if as_json:
        emit([{**row.model_dump(), "method": manifest["method"], "kernels": manifest.get("kernels"),
               "measured": manifest.get("measured")}], as_json=True)
        return
    emit([row.model_dump()], as_json=False, title="quantized", columns=["id", "name", "kind", "path", "params", "bytes"])
    measured = [{"method": name, **{k: v for k, v in m.items() if k != "kernels"},
                 "kernels": ", ".join(f"{op} x{n}" for op, n in m["kernels"].items())}
                for name, m in (manifest.get("measured") or {}).items()]
    if measured:
        emit(measured, as_json=False, title=f"measured (kept: {manifest['method']})",
             columns=["method", "accuracy", "accuracy_drop", "agreement", "max_logit_diff", "decode_ms_per_token",
                      "kernels"])


@compress_app.command("bench")
def compress_bench(model_dirs: Annotated[list[Path], typer.Argument(help="Model directories; ratios are against the first.")],
                   new_tokens: int = 32, prompts: int = 4, repeats: int = 2, batch_size: int = 8,
                   threads: Annotated[int, typer.Option(help="torch CPU threads per model process.")] = 1,
                   dataset: Annotated[Optional[str], typer.Option(
                       help="Prompts from this dataset (NAME or NAME@N), in the first model's format; "
                            "default: home requests.")] = None,
                   as_json: JsonOpt = False) -> None:
    """Size, peak RAM, time to first token, decode speed, p50/p95 latency (batch 1 and batch N) and the
    memory-bandwidth bound, each model in its own process, side by side."""
    from compress.bench import BenchConfig, bench_models, bench_table

    config = BenchConfig(new_tokens=new_tokens, prompts=prompts, repeats=repeats, batch_size=batch_size, threads=threads)
    texts = None
    if dataset:
        from supertiny.pipeline import dataset_prompts

        texts = dataset_prompts(store(), dataset, model_dirs[0])
    rows = bench_models(model_dirs, config, texts)  # range checks there: one-line UserErrors
    if as_json:
        emit(rows, as_json=True)
    else:
        console.print(bench_table(rows))


@models_app.command("list")
def models_list(as_json: JsonOpt = False) -> None:
    """Registered models with parent and dataset lineage."""
    rows = [m.model_dump() for m in store().models()]
    emit(rows, as_json=as_json, title="models",
         columns=["id", "name", "kind", "parent_id", "dataset_id", "params", "bytes", "path"])


@app.command("lineage")
def lineage_command(model: Annotated[str, typer.Argument(help="Model id, name or path.")],
                    as_json: JsonOpt = False) -> None:
    """Where a model came from: its parent models, the dataset version it was trained on, the
    traces in it, the jobs that generated them and the teacher model."""
    from dataengine.lineage import model_lineage
    from supertiny.views import lineage_tree

    lineage = model_lineage(store(), model)
    if as_json:
        print(json.dumps(lineage, indent=2, ensure_ascii=False))
    else:
        console.print(lineage_tree(lineage))


# ---- eval and demo --------------------------------------------------------------------------


@app.command("eval")
def eval_command(split: str = "test", domain: DomainOpt = "home",
                 teacher: Annotated[Optional[str], typer.Option(help="Teacher model spec; '' to skip.")] = "planner",
                 model: Annotated[Optional[list[str]], typer.Option(
                     "--model", help="LABEL=MODEL_DIR, repeatable. Default: latest student and quantized models.")] = None,
                 limit: Optional[int] = None, base_url: BaseUrlOpt = None, api_key: ApiKeyOpt = None,
                 out: Annotated[Optional[Path], typer.Option(
                     "--out", help="Also write the table to this .csv, .md or .json file.")] = None,
                 batch_size: Annotated[int, typer.Option(
                     min=1, help="Direct/program students: requests per generation (same greedy answers).")] = 16,
                 latency_sample: Annotated[int, typer.Option(
                     min=0, help="Requests, spread over the tasks, run one at a time for the latency column.")] = 16,
                 fallback_samples: Annotated[int, typer.Option(
                     min=0, help="Program-mode students: plans sampled (in one generation) when the tools reject "
                                 "the greedy plan; the first one they accept is the answer. 0: greedy only.")] = 4,
                 as_json: JsonOpt = False) -> None:
    """Teacher, student and compressed student on the same tasks: one table, stored in the db.
    Intent/slot domains (snips) also get intent accuracy, slot F1 and sentence accuracy."""
    from student.evaluate import run_eval

    if out is not None and out.suffix not in (".csv", ".md", ".json"):  # before the work, not after it
        raise UserError(f"--out {out}: use a .csv, .md or .json file")
    s = store()
    students = []
    for item in model or []:
        label, sep, path = item.partition("=")
        if not sep or not label or not path:
            raise UserError(f"--model {item!r}: use LABEL=MODEL_DIR, e.g. student=artifacts/demo/student")
        students.append((label, path))
    if model is None:
        for kind, label in (("student", "student"), ("quantized", "compressed")):
            row = s.latest_model(kind)
            if row:
                students.append((label, row.path))
    with progress(on_stderr=as_json) as bar:
        def on_model(label: str, total: int):
            task = bar.add_task(f"eval {label}", total=total, info="")
            return lambda: bar.advance(task)

        run_id, rows = run_eval(s, domain=domain, split=split, teacher=teacher or None, students=students,
                                limit=limit, base_url=base_url, api_key=api_key, on_model=on_model,
                                batch_size=batch_size, latency_sample=latency_sample,
                                fallback_samples=fallback_samples)
    if out is not None:
        from supertiny.output import evaluation_records, write_records

        err_console.print(f"wrote {len(rows)} rows to {write_records(evaluation_records(rows), out)}")
    if as_json:
        print(json.dumps([r.model_dump() for r in rows], indent=2))
    else:
        console.print(evaluation_table(rows, title=f"eval {run_id} on {domain}/{split}"))


@app.command("demo")
def demo_command(quick: Annotated[bool, typer.Option(help="Tiny model and fewer tasks: a few minutes.")] = False,
                 out: Annotated[Path, typer.Option(help="Where model artifacts go.")] = Path("artifacts/demo"),
                 seed: int = 0) -> None:
    """The whole chain on embedded defaults: tasks → teacher traces → verify → dataset →
    student → prune + quantize → eval."""
    from supertiny.demo import DemoConfig, run_demo

    run_demo(store(), DemoConfig.quick(out, seed) if quick else DemoConfig.full(out, seed), console)


@bench_app.command("snips")
def bench_snips(data: Annotated[Path, typer.Option(help="SNIPS directory: train_<Intent>.json and dev_<Intent>.json.")],
                out: Annotated[Path, typer.Option(help="Where the student is written.")] = Path("artifacts/snips"),
                base: Annotated[str, typer.Option(
                    help="'smollm2-135m', a local model directory, or 'tiny' (a tiny model from a config).")] = "smollm2-135m",
                epochs: Annotated[float, typer.Option(help="Passes over the train split (1: 1,636 steps, ~63 min).")] = 1.0,
                max_steps: Annotated[int, typer.Option(help="Stop after N optimizer steps (-1: the epochs).")] = -1,
                limit: Annotated[Optional[int], typer.Option(
                    help="Train on N utterances spread over the intents (default: all 13,084).")] = None,
                eval_limit: Annotated[Optional[int], typer.Option(
                    help="Evaluate on the first N dev utterances (default: all 700).")] = None,
                mode: Annotated[str, typer.Option(help="'lora' or 'full' fine-tuning.")] = "lora",
                learning_rate: Annotated[float, typer.Option(help="Peak learning rate.")] = 1e-3,
                batch_size: int = 8, seed: int = 0,
                dataset: Annotated[str, typer.Option(help="Name of the gold dataset version.")] = "snips-gold",
                as_json: JsonOpt = False) -> None:
    """SNIPS NLU: import train+dev, dataset from the gold calls, fine-tune the student, evaluate on
    dev, print intent accuracy / slot F1 / sentence accuracy beside published numbers."""
    from pydantic import ValidationError

    from supertiny.snips_bench import SnipsBenchConfig, run_snips_bench

    try:
        config = SnipsBenchConfig(data=data, out=out, base=base, epochs=epochs, max_steps=max_steps, limit=limit,
                                  eval_limit=eval_limit, mode=mode, learning_rate=learning_rate,
                                  batch_size=batch_size, seed=seed, dataset=dataset)
    except ValidationError as exc:
        error = exc.errors()[0]
        raise UserError(f"bench snips: --{'-'.join(map(str, error['loc'])).replace('_', '-')}: {error['msg']}") from None
    if as_json:  # stdout is for the JSON: the trainer's loss lines go to stderr with the stage output
        with contextlib.redirect_stdout(sys.stderr):
            summary = run_snips_bench(store(), config, err_console)
        print(json.dumps(summary, indent=2, ensure_ascii=False))
    else:
        run_snips_bench(store(), config, console)


@app.command("report")
def report_command(out: Annotated[Path, typer.Option(help="Directory for report.md and its plots.")] = Path("report"),
                   runs: Annotated[int, typer.Option(help="The N latest evaluation runs.")] = 10,
                   as_json: JsonOpt = False) -> None:
    """Markdown report of the store: evaluation tables, accuracy vs size and vs latency plots,
    model lineage, datasets, jobs and traces."""
    from supertiny.report import write_report

    written = write_report(store(), out, runs=runs)
    emit([{"report": str(written["report"]), "plots": [str(p) for p in written["plots"]],
           "runs": written["runs"]}], as_json=as_json, title="report")


def main() -> None:
    """Entry point: user errors are one line on stderr and exit 1; usage errors exit 2."""
    try:
        code = app(standalone_mode=False)
        if isinstance(code, int) and code:  # `raise typer.Exit(n)`: click returns n instead of exiting
            sys.exit(code)
    except UserError as exc:
        err_console.print(f"[bold red]Error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except click.exceptions.Abort:
        err_console.print("Aborted.")
        sys.exit(130)
    except click.exceptions.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err_console.print("Interrupted: finished work is stored; re-run the same command to resume.")
        sys.exit(130)


if __name__ == "__main__":
    main()
