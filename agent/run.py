"""Run the teacher on one request and collect everything a trace stores."""
from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, convert_to_openai_messages

from agent.graph import DEFAULT_MAX_MODEL_CALLS, build_agent
from tools.registry import Domain


@dataclass
class TraceResult:
    messages: list[dict[str, Any]]  # OpenAI chat format, tool calls included
    final_call: dict[str, Any] | None
    status: str  # ok | no_call | budget_exhausted | error
    error: str | None
    latency_ms: float
    prompt_tokens: int
    completion_tokens: int
    model_calls: int
    tool_events: list[dict[str, Any]] = field(default_factory=list)
    model_events: list[dict[str, Any]] = field(default_factory=list)  # per model call: tokens, latency


def compact_logprobs(response_metadata: dict[str, Any]) -> list | None:
    """OpenAI ``logprobs.content`` -> ``[[token, logprob, [[alt, alt_logprob], ...]], ...]`` or None."""
    content = (response_metadata.get("logprobs") or {}).get("content")
    if not content:
        return None
    return [[item["token"], round(item["logprob"], 5),
             [[alt["token"], round(alt["logprob"], 5)] for alt in item.get("top_logprobs") or []]]
            for item in content]


def model_event(message: AIMessage) -> dict[str, Any]:
    """One ``model_calls`` row: what the endpoint reported about one completion."""
    usage = message.usage_metadata or {}
    meta = message.response_metadata
    return {"prompt_tokens": usage.get("input_tokens", 0), "completion_tokens": usage.get("output_tokens", 0),
            "latency_ms": meta.get("latency_ms"), "finish_reason": meta.get("finish_reason"),
            "model": meta.get("model_name"), "logprobs": compact_logprobs(meta)}


def trace_from_state(state: dict[str, Any], *, error: str | None, latency_ms: float | None = None,
                     status: str | None = None) -> TraceResult:
    """A graph state, final or where the run stopped, as the ``TraceResult`` that ``Store.add_trace`` stores.

    ``error`` says why the run stopped early; only a model call can raise (tools never do), so it
    is recorded as one more model call, the one that failed. ``latency_ms`` is the run's wall-clock
    time; None sums what the model calls and tools took. ``status`` defaults to ``error`` after an
    error, else the state's own."""
    messages = state.get("messages", [])
    model_events = [model_event(m) for m in messages if isinstance(m, AIMessage)]
    if error:
        model_events.append({"prompt_tokens": 0, "completion_tokens": 0, "latency_ms": None, "finish_reason": None,
                             "model": None, "logprobs": None, "error": error})
    tool_events = list(state.get("tool_events", []))
    if latency_ms is None:
        latency_ms = sum(e["latency_ms"] or 0 for e in model_events) + sum(e["latency_ms"] or 0 for e in tool_events)
    return TraceResult(
        messages=convert_to_openai_messages(messages),
        final_call=state.get("final_call"),
        status=status or ("error" if error else state.get("status", "running")),
        error=error,
        latency_ms=round(latency_ms, 3),
        prompt_tokens=sum(e["prompt_tokens"] for e in model_events),
        completion_tokens=sum(e["completion_tokens"] for e in model_events),
        model_calls=len(model_events),
        tool_events=tool_events,
        model_events=model_events,
    )


def context_for_request(now: datetime | None, context: dict[str, Any] | None = None) -> dict[str, Any]:
    """The context a request runs with: ``context`` plus the local time ``now`` and its weekday.

    With neither given, the time is the current minute. A ``context`` given without ``now`` is
    taken as it is: a domain's context need not hold a time at all (e.g. ``{"limit": 500}``)."""
    if context is not None and now is None:
        return dict(context)
    moment = now or datetime.now().replace(second=0, microsecond=0)
    return {**(context or {}), "now": moment.strftime("%Y-%m-%dT%H:%M"), "weekday": moment.strftime("%A")}


def first_state(domain: Domain, text: str, context: dict[str, Any]) -> dict[str, Any]:
    """The graph state a request starts from: the system prompt and the rendered request."""
    return {
        "messages": [SystemMessage(domain.system_prompt), HumanMessage(domain.render_request(text, context))],
        "model_calls": 0, "final_call": None, "status": "running", "tool_events": [],
    }


def run_config(max_model_calls: int, configurable: dict[str, Any]) -> dict[str, Any]:
    return {"recursion_limit": 4 * max_model_calls + 10, "configurable": configurable}


def run_request(domain: Domain, model: BaseChatModel, text: str, context: dict[str, Any], *,
                max_model_calls: int = DEFAULT_MAX_MODEL_CALLS,
                on_update: Callable[[str, dict], None] | None = None,
                graph: Any = None, seed: int | None = None) -> TraceResult:
    """Solve one request. Never raises for model or tool failures: they become the trace's status.

    Pass ``graph`` (from ``build_agent`` with the same model and budget) to reuse one compiled
    graph across many requests, and ``seed`` to sample this request with its own seed."""
    graph = graph or build_agent(domain, model, max_model_calls=max_model_calls)
    configurable = {} if seed is None else {"seed": seed}
    state = first_state(domain, text, context)
    error = None
    started = time.perf_counter()
    try:
        for mode, chunk in graph.stream(state, stream_mode=["updates", "values"],
                                        config=run_config(max_model_calls, configurable)):
            if mode == "values":
                state = chunk
            elif on_update is not None:
                for node, update in chunk.items():
                    on_update(node, update or {})
    except Exception as exc:  # an endpoint failure ends this trace, not the job
        error = f"{type(exc).__name__}: {exc}"
        if on_update is not None:
            on_update("error", {"error": error, "traceback": traceback.format_exc()})
    return trace_from_state(state, error=error, latency_ms=(time.perf_counter() - started) * 1000)


async def arun_request(domain: Domain, graph: Any, text: str, context: dict[str, Any], *,
                       max_model_calls: int = DEFAULT_MAX_MODEL_CALLS,
                       configurable: dict[str, Any] | None = None) -> TraceResult:
    """:func:`run_request` on an async graph (``build_agent(..., asynchronous=True)``), for batch jobs
    that run many requests at once. ``configurable`` carries the sample's ``seed`` and the job's
    ``model_call`` wrapper. A cancelled run (the job stopped) raises ``CancelledError``: no trace."""
    state = first_state(domain, text, context)
    error = None
    started = time.perf_counter()
    try:
        async for state in graph.astream(state, stream_mode="values",
                                         config=run_config(max_model_calls, configurable or {})):
            pass
    except Exception as exc:  # an endpoint failure (after the job's retries) ends this trace, not the job
        error = f"{type(exc).__name__}: {exc}"
    return trace_from_state(state, error=error, latency_ms=(time.perf_counter() - started) * 1000)
