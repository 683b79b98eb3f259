"""Batch generation: run the teacher over stored tasks, N samples each, resumably.

The job is found again by its settings, so re-running the same command after a crash or
Ctrl-C runs only the (task, sample) pairs that have no trace yet. Each trace is written in
its own transaction as soon as it finishes, and the database refuses a second trace for the
same (job, task, sample), so nothing is lost and nothing is duplicated.
"""
from __future__ import annotations

import hashlib
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Callable

from agent.backends import make_chat_model
from agent.graph import DEFAULT_MAX_MODEL_CALLS, build_agent
from agent.run import run_request
from dataengine.store import Store
from supertiny.errors import UserError


@dataclass
class GenerateConfig:
    domain: str = "home"
    split: str = "train"
    model: str = "planner"
    samples: int = 4
    temperature: float = 0.7
    seed: int = 0
    concurrency: int = 8
    max_model_calls: int = DEFAULT_MAX_MODEL_CALLS
    limit: int | None = None  # only the first N tasks of the split
    base_url: str | None = None
    api_key: str | None = None
    # further agent.backends.ModelOptions fields: max_tokens, timeout, max_retries, top_logprobs, ...
    model_options: dict[str, Any] = field(default_factory=dict)


def sample_seed(job_seed: int, task_id: str, sample_index: int) -> int:
    """A stable per-sample seed: a resumed job makes the same samples it would have made."""
    digest = hashlib.sha256(f"{job_seed}:{task_id}:{sample_index}".encode()).hexdigest()
    return int(digest[:8], 16)


def generate(store: Store, config: GenerateConfig,
             on_progress: Callable[[int, int, int], None] | None = None) -> dict[str, int]:
    """Run the job; returns counts. ``on_progress(done, total, errors)`` after each trace."""
    if config.samples < 1:
        raise UserError(f"--samples must be >= 1, got {config.samples}")
    domain = store.domain(config.domain)
    model = make_chat_model(config.model, domain=domain, temperature=config.temperature, seed=config.seed,
                            base_url=config.base_url, api_key=config.api_key, **config.model_options)
    tasks = store.tasks(domain=domain.name, split=config.split, limit=config.limit)
    if not tasks:
        raise UserError(f"no {config.split} tasks for domain {domain.name!r}: run `supertiny tasks generate` first")
    job = store.job_for(kind="generate", domain=domain.name, split=config.split, model=config.model,
                        samples=config.samples, temperature=config.temperature, seed=config.seed,
                        config={"max_model_calls": config.max_model_calls, "limit": config.limit,
                                **config.model_options})
    done = store.done_samples(job.id)
    todo = [(task, i) for task in tasks for i in range(config.samples) if (task.id, i) not in done]
    total, finished, errors = len(tasks) * config.samples, len(tasks) * config.samples - len(todo), 0
    if on_progress:
        on_progress(finished, total, errors)

    graph = build_agent(domain, model, max_model_calls=config.max_model_calls)  # compiled once per job

    def run_one(task, sample_index):
        return run_request(domain, model, task.input, task.context, max_model_calls=config.max_model_calls,
                           graph=graph, seed=sample_seed(config.seed, task.id, sample_index))

    # Workers only run the agent; this thread does every write, so SQLite sees one writer.
    with ThreadPoolExecutor(max_workers=max(1, config.concurrency)) as pool:
        pending = {}
        queue = iter(todo)
        for task, i in queue:
            pending[pool.submit(run_one, task, i)] = (task, i)
            if len(pending) >= 2 * config.concurrency:
                break
        while pending:
            completed, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in completed:
                task, i = pending.pop(future)
                result = future.result()
                store.add_trace(result, domain=domain.name, model=config.model, input=task.input,
                                context=task.context, task_id=task.id, job_id=job.id, sample_index=i)
                finished += 1
                errors += result.status != "ok"
                if on_progress:
                    on_progress(finished, total, errors)
                nxt = next(queue, None)
                if nxt is not None:
                    pending[pool.submit(run_one, *nxt)] = nxt
    store.set_job_status(job.id, "done")
    return {"job_id": job.id, "total": total, "new": len(todo), "not_ok": errors}
