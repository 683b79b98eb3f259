"""The teacher: a LangGraph ``StateGraph`` of small named nodes.

    START -> call_model -> (lookup calls)  -> run_tools -> call_model ...
                        -> (action call)   -> submit_action -> END (or back to the model)
                        -> (no tool call)  -> END, status "no_call"
    any node that would exceed the step budget -> END, status "budget_exhausted"

Tool errors never raise: unknown tools, bad arguments, malformed tool-call JSON and tool
exceptions go back to the model as error tool messages and are recorded in ``tool_events``.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import json
import operator
import time
from typing import Annotated, Any, Awaitable, Callable, Literal, TypedDict

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, AnyMessage, ToolMessage
from langchain_core.runnables import RunnableConfig
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from pydantic import ValidationError

from tools.registry import Domain

DEFAULT_MAX_MODEL_CALLS = 6


class AgentState(TypedDict, total=False):
    messages: Annotated[list[AnyMessage], add_messages]
    model_calls: int
    final_call: dict[str, Any] | None
    status: str  # running | ok | no_call | budget_exhausted
    tool_events: Annotated[list[dict[str, Any]], operator.add]  # one per executed tool call


def _error_message(call_id: str, name: str, error: str) -> ToolMessage:
    return ToolMessage(content=f"Error: {error}", tool_call_id=call_id, name=name, status="error")


def tool_event(step: int, name: str, args: Any, result: Any = None, error: str | None = None,
               latency_ms: float = 0.0) -> dict[str, Any]:
    """One ``tool_events`` entry: becomes a ``tool_calls`` row."""
    return {"step": step, "name": name, "args": args, "result": result, "error": error, "latency_ms": latency_ms}


def _streamed_message(bound_model: Any, messages: list[AnyMessage], **kwargs: Any) -> AIMessage:
    """Stream one completion and judge its tool calls strictly (:func:`_judge_stream`)."""
    merged: AIMessageChunk | None = None
    for chunk in bound_model.stream(messages, **kwargs):
        merged = chunk if merged is None else merged + chunk
    return _judge_stream(merged)


async def _astreamed_message(bound_model: Any, messages: list[AnyMessage], **kwargs: Any) -> AIMessage:
    """:func:`_streamed_message` on the event loop."""
    merged: AIMessageChunk | None = None
    async for chunk in bound_model.astream(messages, **kwargs):
        merged = chunk if merged is None else merged + chunk
    return _judge_stream(merged)


def _judge_stream(merged: AIMessageChunk | None) -> AIMessage:
    """A streamed completion as one message, its tool calls judged strictly.

    langchain-core parses streamed tool-call arguments with a lenient partial-JSON parser that
    "repairs" what the model sent ('{not json' becomes {}, a call cut off by max_tokens becomes a
    valid-looking one). We keep the raw argument text of each call and send anything that is not
    a complete JSON object back to the model as an invalid call, as the non-streaming path does."""
    if merged is None:
        return AIMessage(content="")
    cut_off = merged.response_metadata.get("finish_reason") == "length"
    valid, invalid = [], list(merged.invalid_tool_calls)
    for raw in merged.tool_call_chunks:
        text = raw.get("args") or ""
        try:
            args = json.loads(text) if text else {}
            problem = "the completion was cut off by max_tokens" if cut_off else (
                None if isinstance(args, dict) else "arguments are not a JSON object")
        except json.JSONDecodeError as exc:
            problem = f"arguments are not valid JSON ({exc.msg})"
        if problem:
            invalid.append({"name": raw.get("name"), "args": text, "id": raw.get("id"), "error": problem,
                            "type": "invalid_tool_call"})
        else:
            valid.append({"name": raw.get("name"), "args": args, "id": raw.get("id"), "type": "tool_call"})
    return AIMessage(content=merged.content, tool_calls=valid, invalid_tool_calls=invalid, id=merged.id,
                     usage_metadata=merged.usage_metadata, response_metadata=merged.response_metadata)


def _request(model: BaseChatModel, bound_model: Any, messages: list[AnyMessage], **kwargs: Any) -> AIMessage:
    """One completion: streamed (its tool calls judged strictly) when the model streams."""
    if getattr(model, "streaming", False):
        return _streamed_message(bound_model, messages, **kwargs)
    return bound_model.invoke(messages, **kwargs)


async def _arequest(model: BaseChatModel, bound_model: Any, messages: list[AnyMessage], **kwargs: Any) -> AIMessage:
    """One completion, awaited. A chat model without its own async path (the offline planners) is
    called directly: it computes rather than waits, and LangChain would hand each call to a thread."""
    if getattr(model, "streaming", False):
        return await _astreamed_message(bound_model, messages, **kwargs)
    if type(model)._agenerate is BaseChatModel._agenerate:
        return bound_model.invoke(messages, **kwargs)
    return await bound_model.ainvoke(messages, **kwargs)


def _as_coroutine(func: Callable[..., Any]) -> Callable[..., Awaitable[Any]]:
    """``func`` as a coroutine function. LangGraph runs a plain function of an async run in a worker
    thread; quick, CPU-only steps (routing, validating the action) are cheaper on the event loop."""
    @functools.wraps(func)
    async def run(*args: Any, **kwargs: Any) -> Any:
        return func(*args, **kwargs)
    return run


# A user domain's tool may block (a lookup over HTTP): in an async graph the tool round runs on
# these threads, never on the event loop that the job's other samples share, and never on the
# loop's default executor (a job may run that inline: agent.batch._InlineExecutor).
_TOOL_THREADS = concurrent.futures.ThreadPoolExecutor(thread_name_prefix="supertiny-tools")


def _in_tool_thread(func: Callable[..., Any]) -> Callable[..., Awaitable[Any]]:
    """``func`` as a coroutine function that runs it on a tool thread (with this context, as
    LangGraph would run a plain function)."""
    @functools.wraps(func)
    async def run(*args: Any, **kwargs: Any) -> Any:
        call = functools.partial(contextvars.copy_context().run, func, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(_TOOL_THREADS, call)
    return run


def _invalid_arguments(name: str, exc: ValidationError) -> str:
    first = exc.errors()[0]
    return f"invalid arguments for {name}: {first['loc']} {first['msg']}"


def build_agent(domain: Domain, model: BaseChatModel, max_model_calls: int = DEFAULT_MAX_MODEL_CALLS,
                checkpointer=None, asynchronous: bool = False):
    """Compile the teacher graph for ``domain`` driven by ``model``.

    One compiled graph serves many requests: a per-request sampling seed travels in
    ``config["configurable"]["seed"]`` and is passed to the model call.

    ``asynchronous=True`` compiles a graph for ``ainvoke``/``astream`` (batch jobs run many
    requests on one event loop): the model is awaited, and ``config["configurable"]["model_call"]``,
    when given, wraps every model request (a job's retries and rate limits, agent/batch.py)."""
    bound_model = model.bind_tools(domain.tools + domain.actions)
    lookups = {tool.name: tool for tool in domain.tools}
    actions = {tool.name: tool for tool in domain.actions}

    def seed_kwargs(config: RunnableConfig) -> dict:
        seed = (config.get("configurable") or {}).get("seed")
        return {} if seed is None else {"seed": seed}

    def call_model(state: AgentState, config: RunnableConfig) -> dict:
        started = time.perf_counter()
        message = _request(model, bound_model, state["messages"], **seed_kwargs(config))
        message.response_metadata["latency_ms"] = round((time.perf_counter() - started) * 1000, 3)
        return {"messages": [message], "model_calls": state.get("model_calls", 0) + 1, "status": "running"}

    async def acall_model(state: AgentState, config: RunnableConfig) -> dict:
        started = time.perf_counter()
        kwargs = seed_kwargs(config)
        step = state.get("model_calls", 0) + 1

        async def request(**extra: Any) -> AIMessage:  # one HTTP request; ``extra``: e.g. extra_headers
            return await _arequest(model, bound_model, state["messages"], **kwargs, **extra)

        wrapper = (config.get("configurable") or {}).get("model_call")
        message = await (wrapper(request, step=step, messages=state["messages"]) if wrapper else request())
        # A wrapper that retried reports the time from its first attempt; else this call's own time.
        message.response_metadata.setdefault("latency_ms", round((time.perf_counter() - started) * 1000, 3))
        return {"messages": [message], "model_calls": step, "status": "running"}

    def after_model(state: AgentState) -> Literal["run_tools", "submit_action", "no_call"]:
        last = state["messages"][-1]
        if any(call["name"] in actions for call in last.tool_calls):
            return "submit_action"
        if last.tool_calls or getattr(last, "invalid_tool_calls", None):
            return "run_tools"
        return "no_call"

    def run_tools(state: AgentState) -> dict:
        last: AIMessage = state["messages"][-1]
        replies, events = [], []
        step = state.get("model_calls", 0)
        for bad in getattr(last, "invalid_tool_calls", None) or []:
            detail = str(bad.get("error") or bad.get("args")).split("\nFor troubleshooting")[0]  # langchain's boilerplate link
            error = f"malformed tool call arguments for {bad.get('name')!r}: {detail}"
            replies.append(_error_message(bad.get("id") or "", bad.get("name") or "", error))
            events.append(tool_event(step, bad.get("name") or "", bad.get("args"), error=error))
        for call in last.tool_calls:
            started = time.perf_counter()
            result, error = None, None
            tool = lookups.get(call["name"])
            if tool is None:
                error = f"unknown tool {call['name']!r}; available: {', '.join(sorted(lookups | actions))}"
            else:
                try:
                    result = tool.invoke(call["args"])
                except ValidationError as exc:
                    error = _invalid_arguments(call["name"], exc)
                except Exception as exc:  # a tool's bug is the model's information, not our crash
                    error = f"{type(exc).__name__}: {exc}"
            latency = round((time.perf_counter() - started) * 1000, 3)
            events.append(tool_event(step, call["name"], call["args"], result, error, latency))
            if error is None:
                content = result if isinstance(result, str) else json.dumps(result, ensure_ascii=False)
                replies.append(ToolMessage(content=content, tool_call_id=call["id"], name=call["name"]))
            else:
                replies.append(_error_message(call["id"], call["name"], error))
        return {"messages": replies, "tool_events": events}

    def submit_action(state: AgentState) -> dict:
        last: AIMessage = state["messages"][-1]
        call = next(c for c in last.tool_calls if c["name"] in actions)
        step = state.get("model_calls", 0)
        try:
            args = actions[call["name"]].args_schema.model_validate(call["args"]).model_dump(exclude_none=True)
        except ValidationError as exc:
            error = _invalid_arguments(call["name"], exc)
            return {"messages": [_error_message(call["id"], call["name"], error)],
                    "tool_events": [tool_event(step, call["name"], call["args"], error=error)]}
        # The action is the answer; answer every tool call so the history stays valid chat format.
        replies = [ToolMessage(content="done" if c is call else "skipped: the action ends the task",
                               tool_call_id=c["id"], name=c["name"]) for c in last.tool_calls]
        return {"messages": replies, "final_call": {"name": call["name"], "arguments": args}, "status": "ok"}

    def after_tools(state: AgentState) -> Literal["call_model", "budget_exhausted", "__end__"]:
        if state.get("status") == "ok":
            return END
        if state.get("model_calls", 0) >= max_model_calls:
            return "budget_exhausted"
        return "call_model"

    def no_call(state: AgentState) -> dict:
        return {"status": "no_call"}

    def budget_exhausted(state: AgentState) -> dict:
        return {"status": "budget_exhausted"}

    # In an async graph the quick steps run on the event loop, and the tools on a tool thread.
    quick = _as_coroutine if asynchronous else (lambda func: func)
    graph = StateGraph(AgentState)
    graph.add_node("call_model", acall_model if asynchronous else call_model)
    graph.add_node("run_tools", _in_tool_thread(run_tools) if asynchronous else run_tools)
    graph.add_node("submit_action", quick(submit_action))
    graph.add_node("no_call", quick(no_call))
    graph.add_node("budget_exhausted", quick(budget_exhausted))
    graph.add_edge(START, "call_model")
    graph.add_conditional_edges("call_model", quick(after_model))
    graph.add_conditional_edges("run_tools", quick(after_tools))
    graph.add_conditional_edges("submit_action", quick(after_tools))
    graph.add_edge("no_call", END)
    graph.add_edge("budget_exhausted", END)
    return graph.compile(checkpointer=checkpointer)
