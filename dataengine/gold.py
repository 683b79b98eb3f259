"""A dataset straight from gold labels, for tasks people already labelled (SNIPS, your own CSV).

When every task carries a human-written gold call there is nothing for a teacher to add: the gold
call *is* the answer to train on. ``gold_dataset`` stores each task's gold call as a trace of the
pseudo-model ``gold`` (system prompt, request, one assistant call of the action: the shape a
teacher trace ends with, so chat and direct exports work unchanged), under a ``gold`` job, and
makes a dataset version of them. Lineage then reads model -> dataset -> job ``gold``, and
re-running stores no trace twice.
"""
from __future__ import annotations

import json
from typing import Any

from dataengine.schema import DatasetRow, TaskRow
from dataengine.store import Store, TraceRecord
from supertiny.errors import UserError

GOLD_MODEL = "gold"  # traces.model / jobs.model of traces copied from gold labels


def spread(tasks: list[TaskRow], n: int | None) -> list[TaskRow]:
    """``n`` tasks spread evenly over ``tasks`` (ordered by id, hence by intent for SNIPS), so a
    small sample still covers every intent; all of them when ``n`` is None or too big."""
    if n is None or n >= len(tasks):
        return tasks
    return [tasks[i * len(tasks) // n] for i in range(n)]


def gold_messages(domain: Any, task: TaskRow) -> list[dict[str, Any]]:
    """The conversation a teacher that got it right in one call would have had (OpenAI format)."""
    call = {"id": f"gold-{task.id}", "type": "function",
            "function": {"name": task.gold["name"],
                         "arguments": json.dumps(task.gold.get("arguments") or {}, ensure_ascii=False)}}
    return [{"role": "system", "content": domain.system_prompt},
            {"role": "user", "content": domain.render_request(task.input, task.context)},
            {"role": "assistant", "content": "", "tool_calls": [call]}]


def gold_dataset(store: Store, *, name: str, domain: str, split: str = "train",
                 limit: int | None = None) -> tuple[DatasetRow, dict[str, int]]:
    """A new version ``name@N`` of one gold trace per task of ``split`` that has gold (``limit``: that
    many, spread over the split). Returns the version and counts (tasks, new traces, kept)."""
    resolved = store.domain(domain)
    with_gold = [t for t in store.tasks(domain=resolved.name, split=split) if t.gold is not None]
    if not with_gold:
        raise UserError(f"no {split} tasks with gold for domain {resolved.name!r}: import them first "
                        "(`supertiny tasks import FILE --domain ...`)")
    chosen = spread(with_gold, limit)
    job = store.job_for(kind="gold", domain=resolved.name, split=split, model=GOLD_MODEL, samples=1,
                        temperature=0.0, seed=0, config={})
    done = store.done_samples(job.id)
    records = [TraceRecord(domain=resolved.name, model=GOLD_MODEL, input=t.input, context=t.context,
                           messages=gold_messages(resolved, t), final_call=t.gold, status="ok", task_id=t.id,
                           job_id=job.id, sample_index=0)
               for t in chosen if (t.id, 0) not in done]
    store.add_traces(records)
    store.set_job_status(job.id, "done")
    wanted = {t.id for t in chosen}
    traces = [trace for trace in store.traces(job_id=job.id) if trace.task_id in wanted]
    traces.sort(key=lambda trace: trace.task_id)
    spec = {"method": "gold", "split": split, "job_id": job.id, "limit": limit}
    dataset = store.create_dataset(name, resolved.name, spec, traces)
    return dataset, {"tasks": len(with_gold), "new_traces": len(records), "kept": len(traces)}
