"""Model backends behind one ``--model`` option.

- ``planner``: the domain's offline chat model (no network, no key), for domains that ship one.
- ``openai:<model>``: langchain-openai ``ChatOpenAI`` against any OpenAI-compatible endpoint
  (a hosted API, vLLM, llama.cpp, Ollama); base URL and key from options or ``OPENAI_BASE_URL``
  / ``OPENAI_API_KEY``.
- ``local:<model dir>``: a local transformers model (a student, a compressed student, any model
  directory, or ``smollm2-135m``) as a chat model with tool calling (agent/local.py).

All take the same :class:`ModelOptions`, validated once here at the edge.
"""
from __future__ import annotations

import os
from typing import Any, Optional

from langchain_core.language_models import BaseChatModel
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from supertiny.errors import UserError
from tools.registry import Domain, get_domain


class ModelOptions(BaseModel):
    """How to call the teacher model; stored in each job's config."""

    model_config = ConfigDict(extra="forbid")

    temperature: float = Field(default=0.0, ge=0.0, le=2.0, description="Sampling temperature; 0 is greedy.")
    seed: int = Field(default=0, description="Sampling seed (endpoints that support it; planners always do).")
    base_url: Optional[str] = Field(default=None, description="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1. Default: $OPENAI_BASE_URL.")
    api_key: Optional[str] = Field(default=None, description="API key. Default: $OPENAI_API_KEY (a local server may take any value).")
    max_tokens: Optional[int] = Field(default=None, gt=0, description="Most completion tokens per model call.")
    timeout: Optional[float] = Field(default=60.0, gt=0, description="Seconds before one HTTP request is abandoned.")
    max_retries: int = Field(default=2, ge=0, description="Retries of a failed request (429, 5xx, timeouts) by the client.")
    parallel_tool_calls: Optional[bool] = Field(default=None, description="Allow several tool calls per model turn; None leaves the endpoint's default.")
    top_logprobs: int = Field(default=0, ge=0, le=20, description="Record this many top log-probs per generated token (0: none). They feed logit distillation.")
    streaming: bool = Field(default=False, description="Stream the completion (token usage still recorded).")


def make_chat_model(spec: str, *, domain: str | Domain = "home", options: ModelOptions | None = None,
                    http_async_client: Any = None, **overrides) -> BaseChatModel:
    """A chat model for ``spec``. ``overrides`` are ModelOptions fields (temperature=0.7, ...).

    ``http_async_client`` (an ``openai.DefaultAsyncHttpxClient``): the connection pool of the async
    path. A batch job passes its own, closed when the job ends: langchain-openai's shared default
    keeps connections bound to the first event loop that used it, which a second job cannot use."""
    try:
        options = ModelOptions.model_validate({**(options or ModelOptions()).model_dump(), **overrides})
    except ValidationError as exc:
        err = exc.errors()[0]
        raise UserError(f"model option {'.'.join(map(str, err['loc']))!r}: {err['msg']}") from None
    if spec == "planner":
        resolved = domain if isinstance(domain, Domain) else get_domain(domain)
        if resolved.planner is None:
            raise UserError(f"domain {resolved.name!r} has no offline planner; use --model openai:<model>")
        return resolved.planner(temperature=options.temperature, seed=options.seed)
    if spec.startswith("openai:") and len(spec) > len("openai:"):
        from agent.openai_chat import TeacherChatOpenAI

        key = options.api_key or os.environ.get("OPENAI_API_KEY")
        if not key:
            raise UserError("--model openai:... needs an API key: pass --api-key or set OPENAI_API_KEY "
                            "(a local server accepts any value)")
        extra_body = {} if options.parallel_tool_calls is None else {"parallel_tool_calls": options.parallel_tool_calls}
        return TeacherChatOpenAI(
            model=spec.split(":", 1)[1],
            base_url=options.base_url or os.environ.get("OPENAI_BASE_URL"),
            api_key=key,
            temperature=options.temperature,
            seed=options.seed,
            max_completion_tokens=options.max_tokens,
            timeout=options.timeout,
            max_retries=options.max_retries,
            logprobs=True if options.top_logprobs else None,
            top_logprobs=options.top_logprobs or None,
            streaming=options.streaming,
            stream_usage=True,
            extra_body=extra_body or None,
            http_async_client=http_async_client,
        )
    if spec.startswith("local:") and len(spec) > len("local:"):
        from agent.local import LocalChatModel  # loads torch and transformers: only when asked

        return LocalChatModel(model_dir=spec.split(":", 1)[1], temperature=options.temperature, seed=options.seed,
                              max_tokens=options.max_tokens)
    raise UserError(f"unknown model {spec!r}: use 'planner', 'openai:<model-name>' or 'local:<model-dir>'")


def with_seed(model: BaseChatModel, seed: int) -> BaseChatModel:
    """The same backend with another sampling seed (one per task sample)."""
    return model.model_copy(update={"seed": seed})
