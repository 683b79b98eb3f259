"""Batch generation jobs that survive the real world.

A job runs the teacher over a split's tasks, N samples each. It reads top to bottom as
config -> setup -> loop -> result (:func:`run_job`):

- **Found again by its settings** (``Store.job_for``): re-running the same ``agent generate``, or
  ``supertiny jobs resume ID``, runs only the (task, sample) pairs without a trace, plus those whose
  trace is an error, which the new trace replaces in place. How to run it (concurrency, rate
  limits, retries, endpoint) may change between runs; what to generate may not.
- **Many samples at once** on one event loop (the graph's async path, ChatOpenAI's async client).
  Every model request goes through :meth:`SampleRun.call_model`: the rate limiter (requests/min,
  tokens/min), our retries (exponential backoff with jitter; Retry-After honoured; the client's
  own retries are off) and one ``attempts`` row per try, failed or not. Each request carries an
  ``Idempotency-Key`` header, one key per (job, task, sample) plus the model call's step.
- **Crash-safe**: one writer stores finished samples in batches, each batch one transaction with
  its attempts and the job's counters. A kill -9 at any point loses at most the samples in flight
  (redone on resume), and the database refuses a second trace for a (job, task, sample).
- **Stops cleanly**: Ctrl-C (SIGINT) or SIGTERM abandons the samples in flight, stores what had
  finished and their attempts, marks the job ``interrupted`` and raises :class:`JobInterrupted`
  (a second Ctrl-C stops at once, like a kill). ``supertiny jobs cancel ID``, from any process,
  stops a running job within a second (:class:`JobCancelled`). An endpoint that refuses us (401,
  403, 404) stops the job rather than filling the database with error traces.
- **More cores** with ``workers`` > 1 (``agent generate --workers N``): N processes take the
  samples in turn, each with its own event loop, share of the concurrency and rate limits, and
  database connection; every batch still moves the job's counters in its own transaction, and
  stopping, cancelling and resuming work as above (:func:`_run_in_processes`).
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import hashlib
import itertools
import json
import multiprocessing
import multiprocessing.connection
import os
import random
import signal
import socket
import sys
import time
import traceback
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any, Awaitable, Callable, Iterator

import openai
from langchain_core.messages import AIMessage, AnyMessage
from langchain_core.utils.function_calling import convert_to_openai_tool

from agent.backends import make_chat_model
from agent.graph import DEFAULT_MAX_MODEL_CALLS, build_agent
from agent.pricing import Price, find_price
from agent.resilience import ABANDONED, RATE_LIMIT, Failure, RateLimiter, RetryPolicy, classify
from agent.run import arun_request
from dataengine.schema import JobRow, TaskRow, utcnow
from dataengine.store import Store, TraceRecord
from supertiny.errors import UserError
from tools.registry import Domain

# Endpoint options that say how to call, not what to generate: they stay out of the job's key.
RUN_OPTIONS = ("timeout", "max_retries")
CANCEL_POLL_S = 1.0  # how often a running job looks for `jobs cancel`
WRITE_LINGER_S = 0.05  # how long a finished sample may wait for others to share its transaction
WRITE_BATCH_MAX = 500  # samples per transaction, at most
PROGRESS_POLL_S = 0.25  # how often the main process of a job with worker processes reports progress


@dataclass
class GenerateConfig:
    # What to generate. These settings name the job: the same settings find the same job again.
    domain: str = "home"
    split: str = "train"
    model: str = "planner"
    samples: int = 4
    temperature: float = 0.7
    seed: int = 0
    max_model_calls: int = DEFAULT_MAX_MODEL_CALLS
    limit: int | None = None  # only the first N tasks of the split
    # further agent.backends.ModelOptions fields: max_tokens, parallel_tool_calls, top_logprobs, timeout, ...
    model_options: dict[str, Any] = field(default_factory=dict)
    # How to run it. May change from one run of a job to the next.
    concurrency: int = 8  # samples in flight, all workers together
    workers: int = 1  # processes, each with its own event loop and database connection (see run_job)
    rpm: float | None = None  # requests per minute (None: unlimited)
    tpm: float | None = None  # tokens per minute, prompt + completion (None: unlimited)
    max_attempts: int = 5  # tries per model request, the first included
    retry_delay: float = 0.5  # seconds before the first retry, doubled each time, with jitter
    base_url: str | None = None
    api_key: str | None = None  # never stored

    def job_settings(self) -> dict[str, Any]:
        """What goes into the job's key (besides the named columns)."""
        options = {k: v for k, v in self.model_options.items() if k not in RUN_OPTIONS}
        return {"max_model_calls": self.max_model_calls, "limit": self.limit, **options}

    def run_settings(self) -> dict[str, Any]:
        """How this run runs, stored in the job's config under "run" (``jobs resume`` reuses it)."""
        return {"concurrency": self.concurrency, "workers": self.workers, "rpm": self.rpm, "tpm": self.tpm,
                "max_attempts": self.max_attempts, "retry_delay": self.retry_delay, "base_url": self.base_url,
                "timeout": self.model_options.get("timeout", 60.0)}

    def check(self) -> None:
        for name, value, low in (("--samples", self.samples, 1), ("--concurrency", self.concurrency, 1),
                                 ("--workers", self.workers, 1), ("--max-attempts", self.max_attempts, 1)):
            if value < low:
                raise UserError(f"{name} must be >= {low}, got {value}")
        for name, value in (("--rpm", self.rpm), ("--tpm", self.tpm)):
            if value is not None and value <= 0:
                raise UserError(f"{name} must be > 0, got {value}")
        if self.retry_delay < 0:
            raise UserError(f"--retry-delay must be >= 0, got {self.retry_delay}")


def config_for_job(job: JobRow, **overrides: Any) -> GenerateConfig:
    """The config that runs ``job`` again: its stored settings, then ``overrides`` (None: keep)."""
    settings = dict(job.config)
    run = settings.pop("run", {})
    max_model_calls = settings.pop("max_model_calls", DEFAULT_MAX_MODEL_CALLS)
    limit = settings.pop("limit", None)
    settings.pop("max_retries", None)  # jobs from before m004 kept it here; retries are ours now
    settings["timeout"] = run.get("timeout", settings.get("timeout", 60.0))
    config = GenerateConfig(domain=job.domain, split=job.split, model=job.model, samples=job.samples,
                            temperature=job.temperature, seed=job.seed, max_model_calls=max_model_calls, limit=limit,
                            model_options=settings,
                            **{k: run[k] for k in ("concurrency", "workers", "rpm", "tpm", "max_attempts",
                                                   "retry_delay", "base_url") if k in run})
    for name, value in overrides.items():
        if value is not None:
            setattr(config, name, value)
    return config


def sample_seed(job_seed: int, task_id: str, sample_index: int) -> int:
    """A stable per-sample seed: a resumed job makes the same samples it would have made."""
    digest = hashlib.sha256(f"{job_seed}:{task_id}:{sample_index}".encode()).hexdigest()
    return int(digest[:8], 16)


def idempotency_key(job_key: str, task_id: str, sample_index: int) -> str:
    """One key per (job, task, sample), the same in every run of the job."""
    return hashlib.sha256(f"{job_key}\n{task_id}\n{sample_index}".encode()).hexdigest()[:32]


# ---- how a job stops early ------------------------------------------------------------------


class JobStopped(UserError):
    """The job stopped before every sample had a trace; what finished is stored."""

    status = "interrupted"

    def __init__(self, job_id: int, done: int, total: int, reason: str):
        self.job_id, self.done, self.total, self.reason = job_id, done, total, reason
        super().__init__(f"job {job_id} stopped ({reason}) with {done}/{total} samples stored; "
                         f"resume with `supertiny jobs resume {job_id}`")


class JobInterrupted(JobStopped):
    """Ctrl-C or SIGTERM: the job is marked ``interrupted``."""


class JobCancelled(JobStopped):
    """``jobs cancel``: the job stays ``cancelled`` until ``jobs resume`` runs it again."""

    status = "cancelled"


class JobRefused(JobStopped):
    """The endpoint refused a request (bad key, no such model): every sample would fail the same way."""


@dataclass
class JobProgress:
    """What a progress display shows, after each write (the job row's counters)."""

    job_id: int
    total: int
    done: int
    errors: int  # error traces
    attempts: int
    failed_attempts: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float | None

    @classmethod
    def of(cls, job: JobRow) -> "JobProgress":
        return cls(job.id, job.samples_total, job.samples_done, job.samples_error, job.attempts, job.attempts_failed,
                   job.prompt_tokens, job.completion_tokens, job.cost_usd)


# ---- one sample: the model-call wrapper that retries, limits and records ----------------------


@dataclass
class JobRuntime:
    """What every sample of one run shares."""

    limiter: RateLimiter
    retry: RetryPolicy
    send_idempotency_key: bool  # only an HTTP endpoint has headers
    tool_tokens: int  # the tool schemas' share of every prompt, for the tokens/min estimate
    max_tokens: int | None
    rng: random.Random = field(default_factory=random.Random)

    def estimate_tokens(self, messages: list[AnyMessage]) -> int:
        """Tokens a request will use, before it is sent (4 characters a token; corrected after)."""
        if self.limiter.tokens is None:  # no tokens/min limit: nothing needs the estimate
            return 0
        chars = sum(len(str(m.content)) + len(json.dumps(getattr(m, "tool_calls", None) or [], default=str))
                    for m in messages)
        return self.tool_tokens + chars // 4 + (self.max_tokens or 0)


class SampleRun:
    """One (task, sample) of a job in flight: every attempt of every model request it makes."""

    def __init__(self, runtime: JobRuntime, task: TaskRow, index: int, key: str):
        self.runtime, self.task, self.index, self.key = runtime, task, index, key
        self.attempts: list[dict[str, Any]] = []  # rows for the attempts table
        self.refusal: str | None = None  # set when the endpoint refused us: the job stops

    async def call_model(self, request: Callable[..., Awaitable[AIMessage]], *, step: int,
                         messages: list[AnyMessage]) -> AIMessage:
        """The graph's model call (``configurable["model_call"]``): ``request`` tried until it
        succeeds, fails for good, or ``max_attempts`` is spent; then its last error is raised and
        the trace ends as an error trace."""
        runtime = self.runtime
        estimate = runtime.estimate_tokens(messages)
        headers = {"extra_headers": {"Idempotency-Key": f"{self.key}-{step}"}} if runtime.send_idempotency_key else {}
        first_started = None
        for attempt in itertools.count(1):
            await runtime.limiter.acquire(estimate)
            started = time.perf_counter()
            first_started = first_started or started
            try:
                message = await request(**headers)
            except asyncio.CancelledError:  # the job stopped with this request in flight
                self._record(step, attempt, started, error="abandoned: the job stopped", kind=ABANDONED)
                raise
            except Exception as exc:
                failure = classify(exc)
                self._record(step, attempt, started, error=f"{type(exc).__name__}: {exc}", kind=failure.kind,
                             failure=failure)
                if failure.refused:
                    self.refusal = f"HTTP {failure.http_status}: {exc}"
                if not failure.retryable or attempt >= runtime.retry.max_attempts:
                    raise
                if failure.kind == RATE_LIMIT and failure.retry_after:
                    runtime.limiter.pause(failure.retry_after)  # the account is over its limit, not just this request
                await asyncio.sleep(runtime.retry.delay(attempt, failure.retry_after, runtime.rng))
                continue
            usage = message.usage_metadata or {}
            prompt, completion = usage.get("input_tokens", 0), usage.get("output_tokens", 0)
            runtime.limiter.settle(estimate, prompt + completion)
            self._record(step, attempt, started, prompt_tokens=prompt, completion_tokens=completion)
            message.response_metadata["latency_ms"] = round((time.perf_counter() - first_started) * 1000, 3)
            return message
        raise AssertionError("unreachable")

    def _record(self, step: int, attempt: int, started: float, *, error: str | None = None, kind: str | None = None,
                failure: Failure | None = None, prompt_tokens: int = 0, completion_tokens: int = 0) -> None:
        self.attempts.append({
            "step": step, "attempt": attempt, "idempotency_key": self.key, "error": error, "error_kind": kind,
            "http_status": failure.http_status if failure else None,
            "retry_after_s": failure.retry_after if failure else None,
            "latency_ms": round((time.perf_counter() - started) * 1000, 3),
            "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "created_at": utcnow(),
        })


@dataclass
class SampleOutcome:
    """What the writer stores for one sample: its trace (None when its run was abandoned) and attempts."""

    task_id: str
    sample_index: int
    record: TraceRecord | None
    attempts: list[dict[str, Any]]


# ---- the job ----------------------------------------------------------------------------------


def generate(store: Store, config: GenerateConfig, on_progress: Callable[[JobProgress], None] | None = None,
             *, job_id: int | None = None) -> dict[str, Any]:
    """Run (or resume) a job to the end; returns its counts. See :func:`run_job`."""
    return asyncio.run(run_job(store, config, on_progress, job_id=job_id))


def resume(store: Store, job_id: int, on_progress: Callable[[JobProgress], None] | None = None,
           **overrides: Any) -> dict[str, Any]:
    """Run job ``job_id`` again with its stored settings (``overrides``: concurrency, rpm, api_key, ...)."""
    return generate(store, config_for_job(store.existing_job(job_id), **overrides), on_progress, job_id=job_id)


async def run_job(store: Store, config: GenerateConfig, on_progress: Callable[[JobProgress], None] | None = None,
                  *, job_id: int | None = None) -> dict[str, Any]:
    """Run the job ``config`` names (or job ``job_id``, which ``jobs resume`` passes: a cancelled
    job runs again only then). Raises :class:`JobStopped` when it stops before the end.

    With ``config.workers`` > 1 the samples are shared out among that many processes
    (:func:`_run_in_processes`): one event loop spends ~2 ms of CPU per request in LangGraph and
    langchain-openai on top of the ~3 ms the openai client itself takes, so a fast endpoint keeps
    one core busy long before it is the bottleneck (docs/batch_throughput.md)."""
    # -- config: the job, and what is left of it
    config.check()
    domain = store.domain(config.domain)
    tasks = store.tasks(domain=domain.name, split=config.split, limit=config.limit)
    if not tasks:
        raise UserError(f"no {config.split} tasks for domain {domain.name!r}: run `supertiny tasks generate` first")
    if job_id is None:
        job = store.job_for(kind="generate", domain=domain.name, split=config.split, model=config.model,
                            samples=config.samples, temperature=config.temperature, seed=config.seed,
                            config=config.job_settings())
        if job.status == "cancelled":
            raise UserError(f"job {job.id} was cancelled; `supertiny jobs resume {job.id}` runs it again")
    else:
        job = store.existing_job(job_id)
    if job.status == "running" and job.pid not in (None, os.getpid()) and process_alive(job.pid):
        raise UserError(f"job {job.id} is already running in process {job.pid}; "
                        f"`supertiny jobs cancel {job.id}` stops it")
    kept, error_traces = store.job_samples(job.id)
    todo = [(task, i) for task in tasks for i in range(config.samples) if (task.id, i) not in kept]
    price = find_price(config.model, {row.model: Price(row.prompt_usd_per_1m, row.completion_usd_per_1m, "database")
                                      for row in store.prices()})
    workers = min(config.workers, config.concurrency, len(todo))  # each with at least one sample in flight

    # -- setup: the model, the graph, the shared limits (worker processes build their own)
    if workers > 1:
        chat_model(config, domain, None)  # bad options or a missing key: one error here, not one per process
    else:
        sampler = build_sampler(config, domain)
    job = store.start_job(job.id, samples_total=len(tasks) * config.samples, run=config.run_settings())

    # -- loop: run the samples here, or in worker processes
    try:
        if workers > 1:
            report = await _run_in_processes(store, config, job, todo, price, workers, on_progress)
        else:
            if on_progress:
                on_progress(JobProgress.of(job))
            report = await run_samples(store, job, todo, price, sampler, on_progress)
    except Exception as crash:
        store.stop_job(job.id, "interrupted", f"crashed: {type(crash).__name__}: {crash}")
        raise

    # -- result: the job's status and counts, or why it stopped
    job = store.job(job.id)
    if report.stopped and job.samples_done < job.samples_total:
        kind, reason = report.stopped
        if kind is not JobCancelled:  # a cancelled job stays cancelled
            job = store.stop_job(job.id, kind.status, reason)
        raise kind(job.id, job.samples_done, job.samples_total, reason)
    job = store.stop_job(job.id, "done", None)
    return {"job_id": job.id, "status": job.status, "total": job.samples_total, "new": len(todo),
            "retried": sum(1 for task, i in todo if (task.id, i) in error_traces), "not_ok": report.not_ok,
            "errors": job.samples_error, "attempts": report.attempts, "failed_attempts": report.failed_attempts,
            "prompt_tokens": job.prompt_tokens, "completion_tokens": job.completion_tokens, "cost_usd": job.cost_usd}


# ---- one event loop's share of a job ----------------------------------------------------------


@dataclass
class Sampler:
    """What runs samples on one event loop: the compiled teacher graph and the limits its requests share."""

    config: GenerateConfig
    domain: Domain
    graph: Any
    runtime: JobRuntime
    connections: Any  # this loop's own HTTP connection pool (openai.DefaultAsyncHttpxClient): closed at the end


def chat_model(config: GenerateConfig, domain: Domain, connections: Any) -> Any:
    """The job's chat model. The client's own retries are off: ours record every attempt."""
    return make_chat_model(config.model, domain=domain, temperature=config.temperature, seed=config.seed,
                           base_url=config.base_url, api_key=config.api_key, http_async_client=connections,
                           **{**config.model_options, "max_retries": 0})


def build_sampler(config: GenerateConfig, domain: Domain) -> Sampler:
    connections = openai.DefaultAsyncHttpxClient()  # a pool per job (and per worker): closed when it ends
    graph = build_agent(domain, chat_model(config, domain, connections), max_model_calls=config.max_model_calls,
                        asynchronous=True)
    tool_chars = len(json.dumps([convert_to_openai_tool(t) for t in domain.tools + domain.actions]))
    runtime = JobRuntime(limiter=RateLimiter(config.rpm, config.tpm),
                         retry=RetryPolicy(max_attempts=config.max_attempts, base_delay=config.retry_delay),
                         send_idempotency_key=config.model.startswith("openai:"), tool_tokens=tool_chars // 4,
                         max_tokens=config.model_options.get("max_tokens"))
    return Sampler(config, domain, graph, runtime, connections)


@dataclass
class RunReport:
    """How one run of samples went: what the job's summary counts, and why it stopped early
    (the kind of :class:`JobStopped` and the reason; None when it ran out of samples)."""

    not_ok: int = 0  # traces stored with a status other than ok
    attempts: int = 0
    failed_attempts: int = 0
    stopped: tuple[type[JobStopped], str] | None = None


class _InlineExecutor(concurrent.futures.ThreadPoolExecutor):
    """The event loop's default executor while a job samples from an ``openai:`` endpoint: it
    runs what it is given right away, on the loop's thread.

    langchain-openai parses every response with ``run_in_executor(None, ...)``. That parse is
    short and holds the GIL, and the hop to a thread and back cost more CPU than the parse: about
    0.5 ms of the ~6 ms a request costs a job (measured with and without, in one process,
    against bench/bench_generate.py's server). Name lookups block on the network, so they still
    go to a thread; the tools run on their own threads (agent.graph) and the job's SQLite work on
    its own (:func:`run_samples`).
    """

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future:
        if fn is socket.getaddrinfo or fn is socket.getnameinfo:
            return super().submit(fn, *args, **kwargs)
        future: concurrent.futures.Future = concurrent.futures.Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # as a pool thread would hand it over
            future.set_exception(exc)
        return future


async def run_samples(store: Store, job: JobRow, todo: list[tuple[TaskRow, int]], price: Price | None,
                      sampler: Sampler, on_progress: Callable[[JobProgress], None] | None = None, *,
                      signals: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM),
                      parent_pid: int | None = None, next_sample: Any = None) -> RunReport:
    """Run ``todo`` on this event loop: ``concurrency`` samples at a time, one writer storing the
    finished ones in batches, a watcher looking for ``jobs cancel``. ``signals`` stop it cleanly.
    A bug raises. In a worker process, ``todo`` is the whole job's and ``next_sample`` (a shared
    ``multiprocessing.Value``) says which sample is the next one any worker takes; the watcher also
    looks for the death of the main process ``parent_pid``."""
    config, domain, graph, runtime = sampler.config, sampler.domain, sampler.graph, sampler.runtime
    results: asyncio.Queue[SampleOutcome | None] = asyncio.Queue()  # unbounded: a finished sample is never dropped
    in_flight: dict[tuple[str, int], SampleRun] = {}
    # One iterator shared by every worker coroutine (and process): each takes the next sample.
    pending: Iterator[tuple[TaskRow, int]] = iter(todo) if next_sample is None else _taking_turns(todo, next_sample)
    stop = asyncio.Event()
    report = RunReport()
    loop = asyncio.get_running_loop()
    # SQLite may wait (another writer holds the lock): never on the loop, on one thread of its own.
    store_thread = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="supertiny-store")
    if config.model.startswith("openai:"):  # other backends hand whole generations to the default executor
        loop.set_default_executor(_InlineExecutor())

    def stop_because(kind: type[JobStopped], reason: str) -> None:
        if report.stopped is None:  # the first reason wins
            report.stopped = (kind, reason)
        stop.set()

    async def worker() -> None:
        for task, index in pending:
            run = SampleRun(runtime, task, index, idempotency_key(job.key, task.id, index))
            in_flight[(task.id, index)] = run
            result = await arun_request(domain, graph, task.input, task.context,
                                        max_model_calls=config.max_model_calls,
                                        configurable={"seed": sample_seed(config.seed, task.id, index),
                                                      "model_call": run.call_model})
            del in_flight[(task.id, index)]
            if run.refusal:  # not this sample's fault: store its attempts, not an error trace, and stop
                await results.put(SampleOutcome(task.id, index, None, run.attempts))
                stop_because(JobRefused, f"the endpoint refused a request: {run.refusal}")
                return
            record = TraceRecord.from_result(result, domain=domain.name, model=config.model, input=task.input,
                                             context=task.context, task_id=task.id, job_id=job.id, sample_index=index)
            await results.put(SampleOutcome(task.id, index, record, run.attempts))

    async def writer() -> None:
        while True:
            batch = [await results.get()]
            if batch[0] is not None:
                # One transaction per sample costs ~10x the CPU of one per 30: linger a moment so that a
                # batch gathers (a kill -9 loses at most this much more finished work).
                await asyncio.sleep(WRITE_LINGER_S)
            while not results.empty() and len(batch) < WRITE_BATCH_MAX and batch[-1] is not None:
                batch.append(results.get_nowait())
            outcomes = [o for o in batch if o is not None]
            if outcomes:
                row = await loop.run_in_executor(store_thread, store.record_job_results, job.id, outcomes, price)
                report.not_ok += sum(o.record is not None and o.record.status != "ok" for o in outcomes)
                report.attempts += sum(len(o.attempts) for o in outcomes)
                report.failed_attempts += sum(a["error"] is not None for o in outcomes for a in o.attempts)
                if on_progress:
                    on_progress(JobProgress.of(row))
            if None in batch:
                return

    async def watch() -> None:
        while True:
            await asyncio.sleep(CANCEL_POLL_S)
            if await loop.run_in_executor(store_thread, store.job_status, job.id) == "cancelled":
                stop_because(JobCancelled, "cancelled")
                return
            if parent_pid is not None and os.getppid() != parent_pid:  # killed (-9): nobody would stop us
                stop_because(JobInterrupted, "its main process died")
                return

    workers = [asyncio.create_task(worker()) for _ in range(min(config.concurrency, len(todo)))]
    writing = asyncio.create_task(writer())
    side_tasks = [asyncio.create_task(watch()), asyncio.create_task(stop.wait())]
    with _stop_on_signals(lambda name: stop_because(JobInterrupted, f"interrupted by {name}"), signals):
        try:
            busy = set(workers)
            while busy and not stop.is_set() and not writing.done():
                finished, _ = await asyncio.wait({*busy, writing, side_tasks[1]}, return_when=asyncio.FIRST_COMPLETED)
                busy -= finished
                if any(w in workers and w.exception() for w in finished):
                    break  # a bug in a worker: stop the others
        finally:
            # Abandon what is in flight (a resume redoes it), keep the attempts it made, store what finished.
            for t in (*workers, *side_tasks):
                t.cancel()
            await asyncio.gather(*workers, *side_tasks, return_exceptions=True)
            for (task_id, index), run in list(in_flight.items()):
                await results.put(SampleOutcome(task_id, index, None, run.attempts))
            await results.put(None)
            await asyncio.wait([writing])  # its own error, if any, is raised below
            store_thread.shutdown()  # idle now: the writer is done
            await sampler.connections.aclose()
    crash = writing.exception() or next(
        (w.exception() for w in workers if not w.cancelled() and w.exception() is not None), None)
    if crash is not None:
        raise crash
    return report


# ---- worker processes (--workers N) -----------------------------------------------------------


def share_out(config: GenerateConfig, workers: int) -> list[GenerateConfig]:
    """Each worker process's config: the job's concurrency, requests/min and tokens/min divided
    among them, so that together they keep the job's limits."""
    return [dataclasses.replace(config, workers=1,
                                concurrency=config.concurrency // workers + (n < config.concurrency % workers),
                                rpm=config.rpm / workers if config.rpm else None,
                                tpm=config.tpm / workers if config.tpm else None)
            for n in range(workers)]


def _taking_turns(todo: list[tuple[TaskRow, int]], next_sample: Any) -> Iterator[tuple[TaskRow, int]]:
    """The samples of ``todo`` this process takes, one at a time, in turn with the other workers:
    a worker that runs faster takes more, and they all run out together."""
    while True:
        with next_sample.get_lock():
            position = next_sample.value
            next_sample.value += 1
        if position >= len(todo):
            return
        yield todo[position]


async def _run_in_processes(store: Store, config: GenerateConfig, job: JobRow, todo: list[tuple[TaskRow, int]],
                            price: Price | None, workers: int,
                            on_progress: Callable[[JobProgress], None] | None) -> RunReport:
    """Run ``todo`` in ``workers`` processes (:func:`_worker_process`), each with its share of the
    samples and limits, its own event loop and its own database connection. Every batch a worker
    writes moves the job's counters in the same transaction, so they stay right with any number of
    writers; this process reports progress from them.

    Stopping: Ctrl-C or SIGTERM here, a worker that stops early (``jobs cancel``, a refusing
    endpoint) or crashes, and the others get SIGTERM: each stores what finished and stops. A worker
    whose main process is killed -9 notices within a second and stops the same way."""
    # spawn, not fork: this process may hold threads (a progress bar) and database connections
    # that a forked child would inherit half-way.
    context = multiprocessing.get_context("spawn")
    db = store.url.render_as_string(hide_password=False)
    samples = [(task.id, index) for task, index in todo]
    next_sample = context.Value("q", 0)  # the position in ``samples`` that the next worker to ask takes
    start = context.Event()  # set once every worker is ready: they start together
    processes, channels = [], []
    with _sigint_ignored():  # in the workers for good: only this process takes a Ctrl-C
        for n, share in enumerate(share_out(config, workers)):
            receiving, sending = context.Pipe(duplex=False)
            process = context.Process(target=_worker_process, name=f"supertiny job {job.id} worker {n}", daemon=True,
                                      args=(db, share, job.id, samples, next_sample, start, price, sending,
                                            os.getpid()))
            process.start()
            sending.close()  # the worker holds the only sending end: when it is gone, reading says EOF
            processes.append(process)
            channels.append(receiving)

    report = RunReport()
    ready: set[int] = set()
    ended: set[int] = set()
    crash: Exception | None = None
    shown: JobProgress | None = None

    def stop_workers(kind: type[JobStopped], reason: str) -> None:
        if report.stopped is not None:  # the first reason wins, and SIGTERM goes out once (a second one kills)
            return
        report.stopped = (kind, reason)
        for process in processes:
            if process.is_alive():
                process.terminate()  # SIGTERM: a worker stores what finished, then exits

    with _stop_on_signals(lambda name: stop_workers(JobInterrupted, f"interrupted by {name}")):
        try:
            while len(ended) < len(processes):
                waiting = [c for n, c in enumerate(channels) if n not in ended]
                for channel in await asyncio.to_thread(multiprocessing.connection.wait, waiting, PROGRESS_POLL_S):
                    n = channels.index(channel)
                    try:
                        kind, value = channel.recv()
                    except EOFError:  # it died without a word
                        processes[n].join()
                        kind, value = "gone", processes[n].exitcode
                    if kind == "ready":
                        ready.add(n)
                        continue
                    ended.add(n)
                    if kind == "finished":
                        report.not_ok += value.not_ok
                        report.attempts += value.attempts
                        report.failed_attempts += value.failed_attempts
                        if value.stopped:
                            stop_workers(*value.stopped)
                    elif kind == "gone" and report.stopped is not None:
                        pass  # stopped (SIGTERM) before it had anything to tell: nothing lost
                    else:
                        user_error, message = value if kind == "crashed" else (False, f"exited with code {value}")
                        crash = crash or (UserError(message) if user_error else RuntimeError(f"worker {n}: {message}"))
                        stop_workers(JobInterrupted, "a worker process crashed")
                if len(ready | ended) < len(processes):
                    continue
                # The first report, then the start: what the job takes from here on is its run.
                if on_progress:
                    progress = JobProgress.of(store.job(job.id))
                    if progress != shown:
                        on_progress(progress)
                        shown = progress
                start.set()
        finally:
            for process in processes:
                if process.is_alive() and len(ended) < len(processes):
                    process.terminate()
                process.join()
            for channel in channels:
                channel.close()
    if crash is not None:
        raise crash
    return report


def _worker_process(db: str, config: GenerateConfig, job_id: int, samples: list[tuple[str, int]], next_sample: Any,
                    start: Any, price: Price | None, channel: Connection, parent_pid: int) -> None:
    """One worker process: builds its own sampler, says ``ready``, waits for ``start``, runs its
    samples and sends its :class:`RunReport` (``finished``), or ``crashed`` with (is it a
    UserError, one line)."""
    exit_code = 0
    try:
        report = asyncio.run(_worker_run(db, config, job_id, samples, next_sample, start, price, channel, parent_pid))
        channel.send(("finished", report))
    except Exception as exc:
        exit_code = 1
        if not isinstance(exc, UserError):
            traceback.print_exc()  # a bug: its whole story goes to stderr, one line to the main process
        channel.send(("crashed", (isinstance(exc, UserError), f"{type(exc).__name__}: {exc}")))
    channel.close()
    sys.stdout.flush()
    sys.stderr.flush()
    # Everything is stored and told: skip the interpreter's tear-down (freeing thousands of modules'
    # objects takes a second on a busy machine, and the main process waits for it).
    os._exit(exit_code)


async def _worker_run(db: str, config: GenerateConfig, job_id: int, samples: list[tuple[str, int]], next_sample: Any,
                      start: Any, price: Price | None, channel: Connection, parent_pid: int) -> RunReport:
    store = Store(db)
    try:
        domain = store.domain(config.domain)
        tasks = {task.id: task for task in store.tasks(domain=domain.name, split=config.split, limit=config.limit)}
        job = store.existing_job(job_id)
        sampler = build_sampler(config, domain)
        channel.send(("ready", None))
        while not await asyncio.to_thread(start.wait, CANCEL_POLL_S):
            if os.getppid() != parent_pid:
                return RunReport(stopped=(JobInterrupted, "its main process died"))
        return await run_samples(store, job, [(tasks[task_id], index) for task_id, index in samples], price, sampler,
                                 signals=(signal.SIGTERM,), parent_pid=parent_pid, next_sample=next_sample)
    finally:
        store.engine.dispose()


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    """SIGINT ignored meanwhile, in this process and for good in the processes it starts (an ignored
    signal stays ignored across exec, and Python then installs no KeyboardInterrupt). A terminal's
    Ctrl-C reaches every process of the group; only the main process of a job takes it, and passes
    it on to its workers as SIGTERM, once, from their first moment."""
    try:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread: no signals come here anyway
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def _stop_on_signals(stop: Callable[[str], None],
                     signals: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM)) -> Iterator[None]:
    """``signals`` call ``stop`` once; a second Ctrl-C then stops at once (KeyboardInterrupt).
    Only the main thread can take signals: elsewhere this does nothing."""
    loop = asyncio.get_running_loop()
    installed = []

    def handler(sig: signal.Signals) -> None:
        loop.remove_signal_handler(sig)  # the next one gets Python's default: KeyboardInterrupt / exit
        stop(sig.name)

    for sig in signals:
        try:
            loop.add_signal_handler(sig, handler, sig)
            installed.append(sig)
        except (ValueError, RuntimeError, NotImplementedError):  # not the main thread, or no signals here
            pass
    try:
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True
