"""``supertiny``: thin noun groups over the library.

    supertiny tasks     generate | import | list
    supertiny agent     run | chat | generate
    supertiny jobs      list | status | resume | cancel | prices | set-price
    supertiny traces    list | show | sql | import | verify | judge | consistency | dedup | review
    supertiny dataset   build | list | export | diff
    supertiny student   train
    supertiny compress  prune | quantize
    supertiny models    list
    supertiny lineage
    supertiny eval
    supertiny demo

Every command takes the global ``--db`` (or ``SUPERTINY_DB``); data commands take ``--json``.
"""
from __future__ import annotations

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

STATE: dict[str, Any] = {"db": None, "store": None}
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
DomainOpt = Annotated[str, typer.Option("--domain", help="Built-in domain name, importable module or .py file.")]
ModelOpt = Annotated[str, typer.Option("--model", help="'planner' (offline) or 'openai:<model>'.")]
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


def progress() -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(), console=console)


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
def agent_generate(split: str = "train", samples: int = 4, concurrency: int = 8, domain: DomainOpt = "home",
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
                            seed=seed, concurrency=concurrency, max_model_calls=max_model_calls, limit=limit,
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
        s, job_id, on_progress, concurrency=concurrency, rpm=rpm, tpm=tpm, max_attempts=max_attempts,
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
                  as_json: JsonOpt = False) -> None:
    """Best-of-N rejection sampling: one verified trace per task, as a new version NAME@N.
    Reviewed traces follow the reviewer: rejected ones are dropped, accepted ones pass (edited answers included)."""
    from dataengine.curate import best_of_n

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
    from dataengine.export import chat_records, direct_examples, save_hf_dataset, write_jsonl

    if format not in ("chat", "direct", "hf"):
        raise UserError(f"--format must be 'chat', 'direct' or 'hf', not {format!r}")
    if format == "hf":
        if out is None:
            raise UserError("--format hf writes a directory: give --out DIR")
        rows = save_hf_dataset(store(), name, out)
        err_console.print(f"wrote {rows} rows to {out} (read it with datasets.load_from_disk)")
        return
    records = chat_records(store(), name) if format == "chat" else direct_examples(store(), name)
    if out is None:
        for record in records:
            print(json.dumps(record, ensure_ascii=False))
    else:
        write_jsonl(records, out)
        err_console.print(f"wrote {len(records)} records to {out}")


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
                  mode: str = "full", epochs: float = 2.0, max_steps: int = -1, learning_rate: Optional[float] = None,
                  batch_size: int = 8,
                  bf16: Annotated[Optional[bool], typer.Option(
                      help="bf16 autocast (float32 weights). Default: on when the CPU has native bf16.")] = None,
                  as_json: JsonOpt = False) -> None:
    """Supervised fine-tuning (TRL SFTTrainer) of a direct-mode student."""
    from supertiny.pipeline import train_and_register

    row = train_and_register(store(), dataset_ref=dataset, base=base, out=out, mode=mode, epochs=epochs,
                             max_steps=max_steps, learning_rate=learning_rate, batch_size=batch_size, bf16=bf16)
    emit([row.model_dump()], as_json=as_json, title="student", columns=["id", "name", "kind", "path", "params", "bytes"])


@compress_app.command("prune")
def compress_prune(model_dir: Path, out: Annotated[Path, typer.Option()], ratio: float = 0.8,
                   calibration_dataset: Annotated[Optional[str], typer.Option(help="Dataset whose prompts calibrate.")] = None,
                   as_json: JsonOpt = False) -> None:
    """Depth pruning by block influence to a target parameter ratio."""
    from supertiny.pipeline import prune_and_register

    row = prune_and_register(store(), model_dir=model_dir, out=out, ratio=ratio, calibration_dataset=calibration_dataset)
    emit([row.model_dump()], as_json=as_json, title="pruned", columns=["id", "name", "kind", "path", "params", "bytes"])


@compress_app.command("heal")
def compress_heal(model_dir: Path, dataset: Annotated[str, typer.Option(help="NAME or NAME@N to heal on.")],
                  out: Annotated[Path, typer.Option()], epochs: float = 1.0, max_steps: int = -1,
                  learning_rate: float = 1e-4, as_json: JsonOpt = False) -> None:
    """Short fine-tune of a pruned model on the dataset it serves, to recover what pruning broke."""
    from supertiny.pipeline import require_model_dir, train_and_register

    require_model_dir(model_dir)
    row = train_and_register(store(), dataset_ref=dataset, base=str(model_dir), out=out, epochs=epochs,
                             max_steps=max_steps, learning_rate=learning_rate, kind="healed")
    emit([row.model_dump()], as_json=as_json, title="healed", columns=["id", "name", "kind", "path", "params", "bytes"])


@compress_app.command("quantize")
def compress_quantize(model_dir: Path, out: Annotated[Path, typer.Option()], as_json: JsonOpt = False) -> None:
    """int8 dynamic quantization of the linear layers."""
    from supertiny.pipeline import quantize_and_register

    row = quantize_and_register(store(), model_dir=model_dir, out=out)
    emit([row.model_dump()], as_json=as_json, title="quantized", columns=["id", "name", "kind", "path", "params", "bytes"])


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
                 as_json: JsonOpt = False) -> None:
    """Teacher, student and compressed student on the same tasks: one table, stored in the db."""
    from student.evaluate import run_eval

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
    with progress() as bar:
        def on_model(label: str, total: int):
            task = bar.add_task(f"eval {label}", total=total, info="")
            return lambda: bar.advance(task)

        run_id, rows = run_eval(s, domain=domain, split=split, teacher=teacher or None, students=students,
                                limit=limit, base_url=base_url, api_key=api_key, on_model=on_model)
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
