"""Model backends behind one ``--model`` option.

- ``planner``: the offline home-domain chat model (no network, no key).
- ``openai:<model>``: langchain-openai ``ChatOpenAI`` against any OpenAI-compatible endpoint;
  base URL and key from options or ``OPENAI_BASE_URL`` / ``OPENAI_API_KEY``.
"""
from __future__ import annotations

import os

from langchain_core.language_models import BaseChatModel

from supertiny.errors import UserError


def make_chat_model(spec: str, *, domain: str = "home", temperature: float = 0.0, seed: int = 0,
                    base_url: str | None = None, api_key: str | None = None) -> BaseChatModel:
    if spec == "planner":
        if domain != "home":
            raise UserError(f"--model planner only knows the home domain, not {domain!r}; use --model openai:<model>")
        from agent.planner import HomePlannerChatModel

        return HomePlannerChatModel(temperature=temperature, seed=seed)
    if spec.startswith("openai:") and len(spec) > len("openai:"):
        from langchain_openai import ChatOpenAI

        key = api_key or os.environ.get("OPENAI_API_KEY")
        if not key:
            raise UserError("--model openai:... needs an API key: pass --api-key or set OPENAI_API_KEY")
        return ChatOpenAI(
            model=spec.split(":", 1)[1],
            base_url=base_url or os.environ.get("OPENAI_BASE_URL"),
            api_key=key,
            temperature=temperature,
            seed=seed,
        )
    raise UserError(f"unknown model {spec!r}: use 'planner' or 'openai:<model-name>'")


def with_seed(model: BaseChatModel, seed: int) -> BaseChatModel:
    """The same backend with another sampling seed (one per task sample)."""
    return model.model_copy(update={"seed": seed})
