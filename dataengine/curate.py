"""Curation: score traces against gold, then keep the best verified trace per task."""
from __future__ import annotations

from typing import Any

from dataengine.store import Store
from dataengine.verify import CHECK_SCORER, SCORER


def verify_traces(store: Store, *, domain: str, split: str) -> dict[str, int]:
    """Score every trace of ``domain``/``split`` tasks with the domain's verifier; idempotent.

    ``gold_match`` (the domain's ``compare``) where the task has gold; ``domain_check`` (the
    domain's programmatic ``check``) on every trace with an answer, when the domain has one.
    A trace that passes both (or the one that applies) counts as passed."""
    verifier = store.domain(domain)
    tasks = {task.id: task for task in store.tasks(domain=verifier.name, split=split)}
    scores, passed, scored = [], 0, 0
    for trace, _ in store.scored_traces(domain=verifier.name, split=split, scorer=SCORER):
        task = tasks.get(trace.task_id)
        if task is None:
            continue
        values = []
        if task.gold is not None:
            details = verifier.compare(trace.final_call, task.gold)
            values.append(1.0 if details["exact"] else 0.0)
            scores.append((trace.id, SCORER, values[-1], details))
        if verifier.check is not None:
            problem = verifier.check(trace.final_call, task.input, task.context) if trace.final_call else "no answer"
            values.append(0.0 if problem else 1.0)
            scores.append((trace.id, CHECK_SCORER, values[-1], {"problem": problem}))
        if values:
            scored += 1
            passed += all(v == 1.0 for v in values)
    store.set_scores(scores)
    return {"scored": scored, "passed": passed, "failed": scored - passed}


def best_of_n(store: Store, *, name: str, domain: str, split: str = "train", min_score: float = 1.0,
              model: str | None = None) -> tuple[Any, dict[str, int]]:
    """Rejection sampling: per task, among traces scoring >= ``min_score``, keep one — fewest
    model calls, then fewest tokens, then the oldest. Tasks with no passing trace are dropped."""
    def rank(trace):
        return trace.model_calls, trace.prompt_tokens + trace.completion_tokens, trace.id

    domain = store.domain(domain).name
    # A domain's programmatic check, where it scored a trace, must pass too.
    check_failed = {trace.id for trace, value in store.scored_traces(domain=domain, split=split, scorer=CHECK_SCORER)
                    if value is not None and value < 1.0}
    best: dict[str, Any] = {}
    seen_tasks: set[str] = set()
    for trace, value in store.scored_traces(domain=domain, split=split, scorer=SCORER):
        if model and trace.model != model:
            continue
        seen_tasks.add(trace.task_id)
        if trace.status != "ok" or value is None or value < min_score or trace.id in check_failed:
            continue
        current = best.get(trace.task_id)
        if current is None or rank(trace) < rank(current):
            best[trace.task_id] = trace
    chosen = [best[task_id] for task_id in sorted(best)]
    spec = {"method": "best_of_n", "split": split, "scorer": SCORER, "min_score": min_score, "model": model,
            "must_pass": CHECK_SCORER,
            "tie_break": ["model_calls", "tokens", "id"]}
    dataset = store.create_dataset(name, domain, spec, chosen)
    return dataset, {"tasks": len(seen_tasks), "kept": len(chosen), "dropped": len(seen_tasks) - len(chosen)}
