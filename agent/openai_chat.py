"""``ChatOpenAI`` as the ``openai:`` backend sends it, minus one cost per request.

The openai client walks every request body, key by key, to apply the aliases and formats its
typed parameters declare (``openai._utils._transform``). Tool schemas have none, yet they are
most of a teacher's request: with the home domain's eleven tools that walk was 0.6 ms of CPU a
request, a tenth of what a batch job spends per request against a fast local endpoint
(measured with and without, in one process, against bench/bench_generate.py's server). The
client merges ``extra_body`` into the JSON body as it is, so the tools go there: the endpoint
receives the same JSON.
"""
from __future__ import annotations

from typing import Any

from langchain_openai import ChatOpenAI


class TeacherChatOpenAI(ChatOpenAI):
    """``ChatOpenAI`` whose tool schemas reach the body through ``extra_body`` (see the module)."""

    def _get_request_payload(self, input_: Any, *, stop: list[str] | None = None, **kwargs: Any) -> dict:
        payload = super()._get_request_payload(input_, stop=stop, **kwargs)
        if payload.get("tools") and "messages" in payload:  # chat completions (the Responses API differs)
            payload["extra_body"] = {**(payload.get("extra_body") or {}), "tools": payload.pop("tools")}
        return payload
