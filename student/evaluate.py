"""``supertiny eval``: teacher, base, student and compressed student on the same tasks.

Every model is graded by the same verifier (``dataengine.verify.compare_calls``). Per model
and per slice (all, and the test split's seen/novel slices) we report exact match, function
name accuracy, argument F1, median latency per request, prompt+completion tokens per request
and model calls per request; for an intent/slot domain (``Domain.slot_metrics``) also intent
accuracy, slot F1 and sentence accuracy (``student/intent_slot.py``).
"""
from __future__ import annotations

import statistics
import uuid
from dataclasses import dataclass
from typing import Any, Callable

from agent.backends import make_chat_model
from agent.graph import build_agent
from agent.local import student_format
from agent.run import run_request
from dataengine.schema import EvaluationRow, PredictionRow, TaskRow
from dataengine.store import Store
from dataengine.verify import compare_calls
from student.intent_slot import intent_slot_metrics
from supertiny.errors import UserError
from tools.registry import Domain


@dataclass
class Prediction:
    task_id: str
    call: dict[str, Any] | None
    latency_ms: float
    tokens: int
    model_calls: int
    batch_size: int = 1  # requests answered by the same generation; latency_ms is that generation's


def median_latency(predictions: list[Prediction]) -> float:
    """Median latency of the requests answered one at a time (all of them when none were)."""
    single = [p.latency_ms for p in predictions if p.batch_size == 1]
    return statistics.median(single or [p.latency_ms for p in predictions])


def predict_with_teacher(tasks: list[TaskRow], model_spec: str, *, domain: Domain, base_url: str | None = None,
                         api_key: str | None = None, on_step: Callable[[], None] | None = None) -> list[Prediction]:
    """The teacher answers greedily (temperature 0), with its tools, one request at a time."""
    model = make_chat_model(model_spec, domain=domain, temperature=0.0, base_url=base_url, api_key=api_key)
    graph = build_agent(domain, model)
    out = []
    for task in tasks:
        result = run_request(domain, model, task.input, task.context, graph=graph)
        out.append(Prediction(task.id, result.final_call, result.latency_ms,
                              result.prompt_tokens + result.completion_tokens, result.model_calls))
        if on_step:
            on_step()
    return out


def predict_with_student(tasks: list[TaskRow], model_path: str, on_step: Callable[[], None] | None = None,
                         domain: Domain | None = None, batch_size: int = 16,
                         latency_sample: int = 16, fallback_samples: int = 4) -> list[Prediction]:
    """A direct-mode student: one short prompt in, one call out (a program-mode student's call
    comes from running its one-line plan with ``domain``'s tools).

    ``latency_sample`` tasks, spread evenly over the list, run one request at a time: the latency
    column reports those. The rest run ``batch_size`` per generation, with the same greedy
    decoding, because a CPU decodes a batch of 16 almost as fast as one request.
    ``fallback_samples``: plans a program-mode student samples when the tools reject its greedy one.
    """
    from student.generate import DirectStudent

    student = DirectStudent(model_path, domain=domain, fallback_samples=fallback_samples)
    every = max(1, -(-len(tasks) // latency_sample)) if latency_sample > 0 else 0
    single = [t for i, t in enumerate(tasks) if every and i % every == 0]
    single_ids = {t.id for t in single}
    rest = [t for t in tasks if t.id not in single_ids]
    by_id: dict[str, Prediction] = {}
    groups = [([t], 1) for t in single] + [(rest[i:i + batch_size], len(rest[i:i + batch_size]))
                                           for i in range(0, len(rest), max(1, batch_size))]
    for group, size in groups:
        for task, p in zip(group, student.predict_batch([(t.input, t.context) for t in group])):
            # A sampled retry is a second generation that reads the prompt again.
            by_id[task.id] = Prediction(task.id, p.call, p.latency_ms,
                                        p.prompt_tokens * p.generations + p.completion_tokens, p.generations,
                                        batch_size=size)
            if on_step:
                on_step()
    return [by_id[t.id] for t in tasks]


def predict_with_agent_student(tasks: list[TaskRow], model_path: str, *, domain: Domain,
                               on_step: Callable[[], None] | None = None) -> list[Prediction]:
    """An agent-mode student (student/train_agent.py): the teacher's graph and tools, with the
    student as its chat model through the ``local:`` backend, greedy."""
    return predict_with_teacher(tasks, f"local:{model_path}", domain=domain, on_step=on_step)


def summarize(run_id: str, label: str, spec: str, model_id: int | None, split: str, tasks: list[TaskRow],
              predictions: list[Prediction], compare: Callable = compare_calls, slot_metrics: bool = False
              ) -> tuple[list[EvaluationRow], list[PredictionRow]]:
    """One row per slice (all, and each task slice); ``slot_metrics`` (the domain's) adds intent
    accuracy, slot F1 and sentence accuracy (``student/intent_slot.py``) to every row."""
    by_id = {task.id: task for task in tasks}
    graded = [(p, compare(p.call, by_id[p.task_id].gold)) for p in predictions]
    slices = {"all": graded}
    for name in sorted({t.slice for t in tasks if t.slice}):
        slices[name] = [(p, g) for p, g in graded if by_id[p.task_id].slice == name]
    rows = []
    for name, items in slices.items():
        if not items:
            continue
        n = len(items)
        rows.append(EvaluationRow(
            run_id=run_id, model_label=label, model_spec=spec, model_id=model_id, split=split, slice=name, n=n,
            exact_match=sum(g["exact"] for _, g in items) / n,
            name_accuracy=sum(g["name_match"] for _, g in items) / n,
            arg_f1=sum(g["arg_f1"] for _, g in items) / n,
            latency_ms_median=median_latency([p for p, _ in items]),
            tokens_per_request=sum(p.tokens for p, _ in items) / n,
            calls_per_request=sum(p.model_calls for p, _ in items) / n,
            **(intent_slot_metrics((p.call, by_id[p.task_id].gold) for p, _ in items) if slot_metrics else {}),
        ))
    preds = [PredictionRow(evaluation_run=run_id, model_label=label, task_id=p.task_id, prediction=p.call,
                           exact=int(g["exact"]), latency_ms=p.latency_ms, tokens=p.tokens, model_calls=p.model_calls)
             for p, g in graded]
    return rows, preds


def run_eval(store: Store, *, domain: str, split: str, teacher: str | None, students: list[tuple[str, str]],
             limit: int | None = None, base_url: str | None = None, api_key: str | None = None,
             on_model: Callable[[str, int], Callable[[], None] | None] | None = None, batch_size: int = 16,
             latency_sample: int = 16, fallback_samples: int = 4) -> tuple[str, list[EvaluationRow]]:
    """Evaluate the teacher spec and each ``(label, model_dir)``; store and return the rows.
    ``batch_size``, ``latency_sample``, ``fallback_samples``: see :func:`predict_with_student`."""
    resolved = store.domain(domain)
    tasks = [t for t in store.tasks(domain=resolved.name, split=split, limit=limit) if t.gold is not None]
    if not tasks:
        raise UserError(f"no {split} tasks with gold for domain {domain!r}: run `supertiny tasks generate` first")
    compare = resolved.compare  # every model is graded by the domain's own verifier
    run_id = uuid.uuid4().hex[:12]
    rows: list[EvaluationRow] = []
    if teacher:
        step = on_model("teacher", len(tasks)) if on_model else None
        preds = predict_with_teacher(tasks, teacher, domain=resolved, base_url=base_url, api_key=api_key, on_step=step)
        r, p = summarize(run_id, "teacher", teacher, None, split, tasks, preds, compare,
                         slot_metrics=resolved.slot_metrics)
        store.add_evaluation(r, p)
        rows += r
    for label, path in students:
        step = on_model(label, len(tasks)) if on_model else None
        if student_format(path) == "agent":  # recorded in its manifest (or its parent's, when compressed)
            preds = predict_with_agent_student(tasks, path, domain=resolved, on_step=step)
        else:
            preds = predict_with_student(tasks, path, on_step=step, domain=resolved, batch_size=batch_size,
                                         latency_sample=latency_sample, fallback_samples=fallback_samples)
        model = store.model_by_path(str(path))
        r, p = summarize(run_id, label, str(path), model.id if model else None, split, tasks, preds, compare,
                         slot_metrics=resolved.slot_metrics)
        store.add_evaluation(r, p)
        rows += r
    return run_id, rows
