"""A two-tool domain small enough for a tiny model to learn in seconds: look a room's light up,
then switch it. Its offline planner is a real LangChain chat model that solves every task (one
lookup, then the action), so its traces train agent-mode students in the tests."""
from __future__ import annotations

import json
import re
import uuid

from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult

from tools.registry import Domain, Task

LIGHTS = {"kitchen": "light.kitchen", "hall": "light.hall", "bedroom": "light.bedroom"}
CONTEXT = {"now": "2026-03-14T09:30"}


def find_light(room: str) -> dict:
    """Find the light of a room.

    Args:
        room: the room, as the user said it.
    """
    if room not in LIGHTS:
        raise ValueError(f"no light in {room!r}")
    return {"device_id": LIGHTS[room]}


def switch(device_id: str, state: str) -> str:
    """Switch a light on or off.

    Args:
        device_id: the id from find_light.
        state: "on" or "off".
    """
    return "ok"


class LightsPlanner(BaseChatModel):
    """'turn STATE the ROOM light' -> find_light(ROOM), then switch(its id, STATE)."""

    temperature: float = 0.0
    seed: int = 0

    @property
    def _llm_type(self) -> str:
        return "lights-planner"

    def bind_tools(self, tools, **kwargs):
        return self.bind(**kwargs)

    def _generate(self, messages, stop=None, run_manager=None, **kwargs) -> ChatResult:
        request = next(m.content for m in messages if isinstance(m, HumanMessage))
        state, room = re.search(r"turn (on|off) the (\w+) light", request).groups()
        found = [json.loads(m.content) for m in messages if isinstance(m, ToolMessage) and m.status != "error"]
        if not found:
            call = {"name": "find_light", "args": {"room": room}}
        else:
            call = {"name": "switch", "args": {"device_id": found[-1]["device_id"], "state": state}}
        message = AIMessage(content="", tool_calls=[{**call, "id": uuid.uuid4().hex[:8], "type": "tool_call"}],
                            usage_metadata={"input_tokens": 20, "output_tokens": 8, "total_tokens": 28})
        return ChatResult(generations=[ChatGeneration(message=message)])


def request(room: str, state: str) -> str:
    return f"turn {state} the {room} light"


def gold(room: str, state: str) -> dict:
    return {"name": "switch", "arguments": {"device_id": LIGHTS[room], "state": state}}


PAIRS = [("kitchen", "on"), ("hall", "off"), ("bedroom", "on")]


def generate_tasks(seed: int = 0, n_train: int = 3, n_dev: int = 0, n_test: int = 3) -> list[Task]:
    """The same requests in train and in test: the tests check the protocol and the plumbing on
    what a tiny model memorised in seconds, not generalisation."""
    pairs = PAIRS
    tasks = []
    for split, n in (("train", n_train), ("dev", n_dev), ("test", n_test)):
        for room, state in pairs[:n]:
            tasks.append(Task(id=f"lights-{split}-{room}-{state}", domain="lights", split=split,
                              input=request(room, state), context=dict(CONTEXT), gold=gold(room, state)))
    return tasks


DOMAIN = Domain(
    name="lights",
    system_prompt="Call find_light, then switch.",
    lookup_functions=[find_light],
    action_functions=[switch],
    generate_tasks=generate_tasks,
    planner=LightsPlanner,
)
