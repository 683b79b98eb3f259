"""Shared fixtures. The one stand-in allowed is for the remote LLM: ``ScriptedChatModel`` is a
real LangChain chat model (tool binding, usage metadata) that replies from a script."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import pytest
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import Field

from agent.backends import make_chat_model
from agent.run import run_request
from dataengine.store import Store
from tools.registry import Task, get_domain


class ScriptedChatModel(BaseChatModel):
    """Replies with the next scripted ``AIMessage`` on each call; records what it was sent."""

    script: list[AIMessage] = Field(default_factory=list)
    seen: list[list[BaseMessage]] = Field(default_factory=list)
    seed: int = 0

    @property
    def _llm_type(self) -> str:
        return "scripted"

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any):
        return self.bind(tools=list(tools), **kwargs)

    def _generate(self, messages, stop=None, run_manager=None, **kwargs) -> ChatResult:
        self.seen.append(list(messages))
        if not self.script:
            message = AIMessage(content="(script exhausted)")
        else:
            message = self.script.pop(0).model_copy(deep=True)
        message.usage_metadata = {"input_tokens": 10, "output_tokens": 5, "total_tokens": 15}
        return ChatResult(generations=[ChatGeneration(message=message)])


def tool_call(name: str, args: dict, call_id: str) -> dict:
    return {"name": name, "args": args, "id": call_id, "type": "tool_call"}


def store_planner_traces(store: Store, tasks: Sequence[Task], samples: int = 2, temperature: float = 0.7):
    """Run the home planner ``samples`` times on each task (sample i with seed i) and store the traces
    under one ``generate`` job; returns the job."""
    domain = get_domain("home")
    job = store.job_for(kind="generate", domain="home", split="train", model="planner", samples=samples,
                        temperature=temperature, seed=0, config={})
    for task in tasks:
        for sample in range(samples):
            model = make_chat_model("planner", domain=domain, temperature=temperature, seed=sample)
            result = run_request(domain, model, task.input, task.context)
            store.add_trace(result, domain="home", model="planner", input=task.input, context=task.context,
                            task_id=task.id, job_id=job.id, sample_index=sample)
    return job


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "test.db")
