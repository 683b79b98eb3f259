"""Curation: score traces, then keep the best passing trace per task.

Scorers here (each result is a ``scores`` row with a provenance block, see ``provenance.py``):

- ``gold_match``        the domain's ``compare`` against the task's gold call;
- ``domain_check``      the domain's gold-free ``check``;
- ``self_consistency``  with no gold: how many of a task's N samples agree with this trace's answer.

The LLM judge lives in ``judge.py``, deduplication in ``dedup.py``, manual review in ``review.py``.
``best_of_n`` turns scores into a dataset version: it can require any list of scorers to pass
(``--require dedup_input --require judge>=0.75``), and a reviewer's decision overrides the
automatic scorers (rejected: dropped; accepted: passes, with the edited answer if one was typed).
"""
from __future__ import annotations

import copy
import json
import operator
import re
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from dataengine.provenance import function_ref, with_provenance
from dataengine.schema import TraceRow
from dataengine.store import Store
from dataengine.verify import CHECK_SCORER, SCORER, ungrounded_arguments
from supertiny.errors import UserError

GOLD_MATCH_VERSION = "1"
DOMAIN_CHECK_VERSION = "1"
CONSISTENCY_SCORER = "self_consistency"
CONSISTENCY_VERSION = "1"
REVIEW_SCORER = "review"  # written by review.py; read here because a person's decision overrides the scorers


# ---- verifiers: gold match and the domain's own check ------------------------------------------


def verify_traces(store: Store, *, domain: str, split: str) -> dict[str, int]:
    """Score every trace of ``domain``/``split`` tasks with the domain's verifier; idempotent.

    ``gold_match`` (the domain's ``compare``) where the task has gold; ``domain_check`` (the
    domain's programmatic ``check``) on every trace with an answer, when the domain has one.
    A trace that passes both (or the one that applies) counts as passed."""
    verifier = store.domain(domain)
    gold_config = {"domain": verifier.name, "compare": function_ref(verifier.compare)}
    check_config = {"domain": verifier.name, "check": function_ref(verifier.check)}
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
            scores.append((trace.id, SCORER, values[-1],
                           with_provenance(details, SCORER, GOLD_MATCH_VERSION, gold_config)))
        if verifier.check is not None:
            problem = verifier.check(trace.final_call, task.input, task.context) if trace.final_call else "no answer"
            values.append(0.0 if problem else 1.0)
            scores.append((trace.id, CHECK_SCORER, values[-1],
                           with_provenance({"problem": problem}, CHECK_SCORER, DOMAIN_CHECK_VERSION, check_config)))
        if values:
            scored += 1
            passed += all(v == 1.0 for v in values)
    store.set_scores(scores)
    return {"scored": scored, "passed": passed, "failed": scored - passed}


# ---- self-consistency: majority vote over a task's samples, when there is no gold ----------------


def same_answer(compare: Callable[[dict | None, dict], dict], a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Two final calls say the same thing by the domain's own comparison, asked both ways round
    (``compare`` treats its second argument as gold, and tolerances need not be symmetric)."""
    return bool(compare(a, b)["exact"]) and bool(compare(b, a)["exact"])


def self_consistency(store: Store, *, domain: str, split: str | None = None, job_id: int | None = None, model: str | None = None,
                     min_samples: int = 2) -> dict[str, int]:
    """Score every trace with the share of its task's samples that gave the same answer.

    Answers are grouped with the domain's ``compare`` (so ``"Kitchen"`` and ``"kitchen"`` vote
    together in ``home``; values within tolerance in ``units``). A trace without an answer
    scores 0 but still counts as a sample. ``details.majority`` is true for the traces in the
    largest group, unless two groups tie (then no answer has a majority). Tasks with fewer than
    ``min_samples`` samples are left unscored: one sample agrees with itself and says nothing."""
    verifier = store.domain(domain)
    config = {"domain": verifier.name, "compare": function_ref(verifier.compare), "split": split, "job_id": job_id,
              "model": model, "min_samples": min_samples}
    by_task: dict[str, list[TraceRow]] = {}
    for trace in store.traces(domain=verifier.name, split=split, job_id=job_id):
        if trace.task_id is not None and (model is None or trace.model == model):
            by_task.setdefault(trace.task_id, []).append(trace)

    scores, counts = [], {"tasks": 0, "traces": 0, "skipped_tasks": 0, "unanimous": 0, "no_majority": 0}
    for task_id in sorted(by_task):
        samples = by_task[task_id]
        if len(samples) < min_samples:
            counts["skipped_tasks"] += 1
            continue
        groups: list[list[TraceRow]] = []  # each group: traces whose answers agree with its first one
        for trace in samples:
            if trace.final_call is None:
                continue
            group = next((g for g in groups if same_answer(verifier.compare, g[0].final_call, trace.final_call)), None)
            if group is None:
                groups.append([trace])
            else:
                group.append(trace)
        largest = max((len(g) for g in groups), default=0)
        leaders = [g for g in groups if len(g) == largest]
        majority = leaders[0] if len(leaders) == 1 else None
        group_of = {trace.id: index for index, group in enumerate(groups) for trace in group}
        for trace in samples:
            index = group_of.get(trace.id)
            votes = len(groups[index]) if index is not None else 0
            details = {"samples": len(samples), "votes": votes, "answers": len(groups),
                       "majority": majority is not None and index is not None and groups[index] is majority,
                       "majority_call": majority[0].final_call if majority else None}
            scores.append((trace.id, CONSISTENCY_SCORER, votes / len(samples),
                           with_provenance(details, CONSISTENCY_SCORER, CONSISTENCY_VERSION, config)))
        counts["tasks"] += 1
        counts["traces"] += len(samples)
        counts["unanimous"] += len(groups) == 1 and largest == len(samples)
        counts["no_majority"] += majority is None
    store.set_scores(scores)
    return counts


# ---- score conditions: "dedup_input", "judge>=0.75", "gold_match=0" -------------------------------

_CONDITION = re.compile(r"\s*([A-Za-z_][\w.:-]*)\s*(?:(>=|<=|!=|==|=|>|<)\s*(-?\d+(?:\.\d+)?))?\s*")
_OPERATORS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt, "=": operator.eq, "==": operator.eq,
    "!=": operator.ne,
}


@dataclass(frozen=True)
class ScoreCondition:
    """A test on one scorer's value; a trace without that score never satisfies it."""

    scorer: str
    op: str = ">="
    value: float = 1.0

    def holds(self, values: dict[str, float]) -> bool:
        return self.scorer in values and _OPERATORS[self.op](values[self.scorer], self.value)

    def __str__(self) -> str:
        return f"{self.scorer}{self.op}{self.value:g}"


def parse_condition(text: str, option: str = "--require") -> ScoreCondition:
    """``SCORER`` (meaning ``SCORER>=1``: it passed) or ``SCORER<op>VALUE``."""
    match = _CONDITION.fullmatch(text)
    if not match:
        raise UserError(f"{option} {text!r}: use SCORER (it passed) or SCORER<op>VALUE with op one of "
                        ">= <= > < = !=, e.g. judge>=0.75")
    scorer, op, value = match.groups()
    return ScoreCondition(scorer) if op is None else ScoreCondition(scorer, op, float(value))


# ---- best-of-N: one passing trace per task ---------------------------------------------------------


def reviewed_final_call(review_details: dict[str, Any] | None) -> dict[str, Any] | None:
    """The answer a reviewer typed in place of the teacher's, or None when they kept it."""
    return (review_details or {}).get("final_call")


def best_of_n(store: Store, *, name: str, domain: str, split: str = "train", min_score: float = 1.0,
              model: str | None = None, scorer: str = SCORER,
              require: Sequence[str | ScoreCondition] = ()) -> tuple[Any, dict[str, int]]:
    """Rejection sampling: per task, among traces that pass, keep one — the one whose answer is
    most grounded in its lookups (fewest string arguments no tool returned: a student learns to
    use the tools from it, not to recite names), then fewest model calls, then fewest tokens,
    then the oldest. Tasks with no passing trace are dropped.

    A trace passes when its ``scorer`` value is >= ``min_score``, the domain's check (where it
    scored the trace) passed, and every ``require`` condition holds. A reviewer's decision
    overrides ``scorer`` and the check: rejected traces are dropped, accepted ones pass (the
    ``require`` conditions still apply: they are what the user asked for in this build). The
    answers reviewers edited are frozen into the version's spec (``edited_final_calls``), which
    export reads: a later review never changes a version that already exists."""
    conditions = [parse_condition(c) if isinstance(c, str) else c for c in require]

    def rank(trace: TraceRow) -> tuple[int, int, int, int]:
        ungrounded = ungrounded_arguments(tool_calls.get(trace.id, []), trace.final_call)
        return ungrounded, trace.model_calls, trace.prompt_tokens + trace.completion_tokens, trace.id

    domain = store.domain(domain).name
    values = store.score_values([CHECK_SCORER, *(c.scorer for c in conditions)])
    reviews = store.score_rows(REVIEW_SCORER)
    best: dict[str, TraceRow] = {}
    passing: list[TraceRow] = []
    seen_tasks: set[str] = set()
    for trace, value in store.scored_traces(domain=domain, split=split, scorer=scorer):
        if model and trace.model != model:
            continue
        seen_tasks.add(trace.task_id)
        trace_values = values.get(trace.id, {})
        review = reviews.get(trace.id)
        if review is not None:
            if review.value < 1.0 or not (trace.final_call or reviewed_final_call(review.details)):
                continue
        elif (trace.status != "ok" or value is None or value < min_score
              or trace_values.get(CHECK_SCORER, 1.0) < 1.0):  # the check, where it scored this trace
            continue
        if not all(condition.holds(trace_values) for condition in conditions):
            continue
        passing.append(trace)
    tool_calls = store.tool_calls_by_trace(trace.id for trace in passing)
    for trace in passing:
        current = best.get(trace.task_id)
        if current is None or rank(trace) < rank(current):
            best[trace.task_id] = trace
    chosen = [best[task_id] for task_id in sorted(best)]
    edits = {str(t.id): reviewed_final_call(reviews[t.id].details) for t in chosen
             if t.id in reviews and reviewed_final_call(reviews[t.id].details)}
    spec = {"method": "best_of_n", "split": split, "scorer": scorer, "min_score": min_score, "model": model,
            "must_pass": CHECK_SCORER, "require": [str(c) for c in conditions],
            "review": "rejected dropped; accepted pass", "tie_break": ["ungrounded_arguments", "model_calls", "tokens", "id"]}
    if edits:
        spec["edited_final_calls"] = edits
    dataset = store.create_dataset(name, domain, spec, chosen)
    return dataset, {"tasks": len(seen_tasks), "kept": len(chosen), "dropped": len(seen_tasks) - len(chosen),
                     "edited": len(edits)}


def with_final_call(trace: TraceRow, call: dict[str, Any]) -> TraceRow:
    """A copy of ``trace`` whose answer is ``call``: ``final_call`` and the assistant message that
    made the action call both say it, so chat and direct exports agree. (A trace that never
    called an action gets the call appended as a last assistant message.)"""
    edited = trace.model_copy(update={"final_call": call, "messages": copy.deepcopy(trace.messages)})
    original = (trace.final_call or {}).get("name")
    function = {"name": call["name"], "arguments": json.dumps(call.get("arguments") or {}, ensure_ascii=False)}
    assistant_turns = [m for m in reversed(edited.messages) if m.get("role") == "assistant"]
    for message in assistant_turns if original is not None else []:
        for tool_call in message.get("tool_calls") or []:
            if tool_call.get("function", {}).get("name") == original:
                tool_call["function"] = function
                return edited
    edited.messages.append({"role": "assistant", "content": "",
                            "tool_calls": [{"id": f"review-{trace.id}", "type": "function", "function": function}]})
    return edited


def items_with_reviewed_answers(store: Store, dataset: Any) -> list[tuple[TraceRow, Any]]:
    """A dataset version's items, with the answers reviewers edited before it was built."""
    edits = (dataset.spec or {}).get("edited_final_calls") or {}
    return [(with_final_call(trace, edits[str(trace.id)]) if str(trace.id) in edits else trace, task)
            for trace, task in store.dataset_items(dataset.id)]
