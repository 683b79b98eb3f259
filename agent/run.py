"""Run the teacher on one request and collect everything a trace stores."""
from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, field
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


def run_request(domain: Domain, model: BaseChatModel, text: str, context: dict[str, Any], *,
                max_model_calls: int = DEFAULT_MAX_MODEL_CALLS,
                on_update: Callable[[str, dict], None] | None = None,
                graph: Any = None, seed: int | None = None) -> TraceResult:
    """Solve one request. Never raises for model or tool failures: they become the trace's status.

    Pass ``graph`` (from ``build_agent`` with the same model and budget) to reuse one compiled
    graph across many requests, and ``seed`` to sample this request with its own seed."""
    graph = graph or build_agent(domain, model, max_model_calls=max_model_calls)
    configurable = {} if seed is None else {"seed": seed}
    state: dict[str, Any] = {
        "messages": [SystemMessage(domain.system_prompt), HumanMessage(domain.render_request(text, context))],
        "model_calls": 0, "final_call": None, "status": "running", "tool_events": [],
    }
    error = None
    started = time.perf_counter()
    try:
        for mode, chunk in graph.stream(state, stream_mode=["updates", "values"],
                                        config={"recursion_limit": 4 * max_model_calls + 10,
                                                "configurable": configurable}):
            if mode == "values":
                state = chunk
            elif on_update is not None:
                for node, update in chunk.items():
                    on_update(node, update or {})
    except Exception as exc:  # an endpoint failure ends this trace, not the job
        error = f"{type(exc).__name__}: {exc}"
        if on_update is not None:
            on_update("error", {"error": error, "traceback": traceback.format_exc()})
    latency_ms = (time.perf_counter() - started) * 1000
    model_events = [model_event(m) for m in state["messages"] if isinstance(m, AIMessage)]
    status = "error" if error else state.get("status", "running")
    return TraceResult(
        messages=convert_to_openai_messages(state["messages"]),
        final_call=state.get("final_call"),
        status=status,
        error=error,
        latency_ms=round(latency_ms, 3),
        prompt_tokens=sum(e["prompt_tokens"] for e in model_events),
        completion_tokens=sum(e["completion_tokens"] for e in model_events),
        model_calls=len(model_events),
        tool_events=list(state.get("tool_events", [])),
        model_events=model_events,
    )
