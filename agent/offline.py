"""``OfflinePlannerChatModel``: the plumbing every offline planner shares.

An offline planner is a real LangChain chat model (tool calling, usage metadata) that stands in
for the remote teacher when there is no endpoint. LangGraph drives it like any LLM, and like an
LLM it reads only the conversation: the request in the user message and the results of the tool
calls it made so far. It never sees the gold answer. Each turn it re-reads all of that and answers
with the tool calls still missing, or the final action call.

A domain's planner subclasses this and writes :meth:`OfflinePlannerChatModel._respond`, its
understanding of the domain; this class reads the conversation for it, samples, and reports usage.

Token counts are estimates (4 characters per token, the usual rule of thumb for English) over
the whole prompt, tool schemas included, so the cost columns compare like with like against a
real endpoint's prompt of the same length.
"""
from __future__ import annotations

import json
import math
import random
import re
import uuid
from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.utils.function_calling import convert_to_openai_tool


def estimate_tokens(text: str) -> int:
    return max(1, math.ceil(len(text) / 4))


@dataclass
class Conversation:
    """What a planner reads before each reply."""

    request: str  # the user message after "Request:"
    user_message: str  # the whole user message, context line included
    # slot -> ("ok", the parsed result) or ("error", the error text); the slot is the prefix of
    # the tool-call id (see OfflinePlannerChatModel.tool_call), so a result says what it is for
    results: dict[str, tuple[str, Any]]
    seed: int  # the sampling seed of this request


class OfflinePlannerChatModel(BaseChatModel):
    """A chat model whose replies a domain's planner works out in :meth:`_respond`."""

    temperature: float = 0.0
    seed: int = 0
    model_name: str  # each planner names itself

    # The reply to a conversation with no "Request:" in it, which a planner cannot work on.
    not_a_request_reply: ClassVar[str] = "I can only handle the requests I was built for."

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any):
        return self.bind(tools=[convert_to_openai_tool(t) for t in tools], **kwargs)

    def _respond(self, conversation: Conversation) -> AIMessage:
        """The next message: tool calls (see :meth:`tool_call`), or text when the planner gives up."""
        raise NotImplementedError

    # -- sampling --------------------------------------------------------------------------

    @staticmethod
    def _rng(seed: int, request: str, purpose: str) -> random.Random:
        # Seeded by the request so every turn of one conversation makes the same choices.
        return random.Random(f"{seed}:{purpose}:{request}")

    def _choose(self, rng: random.Random, options: list[tuple[Any, float]]) -> Any:
        """One of ``(value, score)`` options: the best when greedy, else sampled with softmax(score / T)."""
        if self.temperature <= 0 or len(options) == 1:
            return max(options, key=lambda o: o[1])[0]
        top = max(score for _, score in options)
        weights = [math.exp((score - top) / self.temperature) for _, score in options]
        return rng.choices([value for value, _ in options], weights=weights)[0]

    # -- the conversation ------------------------------------------------------------------

    @staticmethod
    def tool_call(slot: str, name: str, args: dict[str, Any]) -> dict[str, Any]:
        """A tool call whose id starts with ``slot`` (``final`` for the action), so that its result
        comes back under that slot in :attr:`Conversation.results`."""
        return {"name": name, "args": args, "id": f"{slot}:{uuid.uuid4().hex[:8]}", "type": "tool_call"}

    def _generate(self, messages: list[BaseMessage], stop=None, run_manager=None, **kwargs: Any) -> ChatResult:
        human = next((m for m in messages if isinstance(m, HumanMessage)), None)
        user_message = str(human.content if human else "")
        match = re.search(r"Request:\s*(.*)", user_message, re.S)
        if not match:
            return self._reply(messages, kwargs, AIMessage(content=self.not_a_request_reply))
        calls = {tc["id"] for m in messages if isinstance(m, AIMessage) for tc in m.tool_calls}
        results: dict[str, tuple[str, Any]] = {}
        for m in messages:
            if isinstance(m, ToolMessage) and m.tool_call_id in calls:
                slot = m.tool_call_id.split(":")[0]
                results[slot] = ("error", m.content) if m.status == "error" else ("ok", _json(m.content))
        seed = kwargs.get("seed", self.seed)  # a per-call seed wins, as in the OpenAI API
        conversation = Conversation(match.group(1).strip(), user_message, results, seed)
        return self._reply(messages, kwargs, self._respond(conversation))

    def _reply(self, messages: list[BaseMessage], kwargs: dict, message: AIMessage) -> ChatResult:
        """``message`` with the usage and metadata an endpoint would report for it."""
        prompt = json.dumps(kwargs.get("tools", [])) + "".join(
            str(m.content) + json.dumps(getattr(m, "tool_calls", []) or []) for m in messages
        )
        completion = str(message.content) + json.dumps(
            [{"name": c["name"], "arguments": c["args"]} for c in message.tool_calls]
        )
        prompt_tokens, completion_tokens = estimate_tokens(prompt), estimate_tokens(completion)
        message.usage_metadata = {
            "input_tokens": prompt_tokens, "output_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        message.response_metadata = {
            "model_name": self.model_name,
            "finish_reason": "tool_calls" if message.tool_calls else "stop",
        }
        return ChatResult(generations=[ChatGeneration(message=message)])


def _json(content: Any) -> Any:
    try:
        return json.loads(content) if isinstance(content, str) else content
    except json.JSONDecodeError:
        return None
