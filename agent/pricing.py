"""What a job's tokens cost: USD per million prompt / completion tokens, per model.

A few well-known hosted models are built in (list prices when this was written; check your
provider). The database's ``prices`` table overrides and extends them, so a job's cost is right
for self-hosted models (price 0) and for models we never heard of::

    supertiny jobs set-price openai:Qwen/Qwen2.5-7B-Instruct --prompt 0 --completion 0
    supertiny jobs set-price gpt-4o-mini --prompt 0.15 --completion 0.60

A price is looked up by the job's model spec (``openai:gpt-4o-mini``), then by the bare model name
(``gpt-4o-mini``), and a dated snapshot (``gpt-4o-mini-2024-07-18``) takes its model's price.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping


@dataclass(frozen=True)
class Price:
    prompt_usd_per_1m: float
    completion_usd_per_1m: float
    source: str = "built-in"  # built-in | database

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.prompt_usd_per_1m + completion_tokens * self.completion_usd_per_1m) / 1_000_000


# USD per 1M tokens (prompt, completion), OpenAI list prices as of mid-2025.
BUILTIN_PRICES: dict[str, Price] = {
    "planner": Price(0.0, 0.0),  # the offline planner costs nothing
    "gpt-4o": Price(2.50, 10.00),
    "gpt-4o-mini": Price(0.15, 0.60),
    "gpt-4.1": Price(2.00, 8.00),
    "gpt-4.1-mini": Price(0.40, 1.60),
    "gpt-4.1-nano": Price(0.10, 0.40),
    "o3-mini": Price(1.10, 4.40),
    "o4-mini": Price(1.10, 4.40),
    "gpt-5": Price(1.25, 10.00),
    "gpt-5-mini": Price(0.25, 2.00),
    "gpt-5-nano": Price(0.05, 0.40),
}

# A snapshot is its model's name plus a date: gpt-4o-mini-2024-07-18, o3-mini-2025-01-31.
_SNAPSHOT = re.compile(r"^(?P<base>.+)-\d{4}-\d{2}-\d{2}$")


def find_price(model: str, table: Mapping[str, Price] | None = None) -> Price | None:
    """The price of ``model`` (a ``--model`` spec or a bare name): ``table`` (the database's) first,
    then the built-ins; None when neither knows it."""
    names = [model]
    if ":" in model:
        names.append(model.split(":", 1)[1])
    snapshot = _SNAPSHOT.match(names[-1])
    if snapshot:
        names.append(snapshot.group("base"))
    for prices in (table or {}, BUILTIN_PRICES):
        for name in names:
            if name in prices:
                return prices[name]
    return None
