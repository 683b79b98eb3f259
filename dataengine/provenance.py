"""Provenance of a score: which scorer wrote it, which version of it, and with what settings.

Every curation step (gold match, domain check, LLM judge, self-consistency, deduplication,
manual review) stores its result as a ``scores`` row whose ``details`` carry::

    "provenance": {"scorer": "judge", "version": "1", "config": {"model": "openai:gpt-4o-mini", ...}}

so a dataset can always say *why* a trace was kept, and a score written by an older scorer or
under other settings can be told apart (``json_extract(details, '$.provenance.version')``).
A scorer's version changes when what it computes changes; its config holds every setting that
changes the value (never secrets such as API keys).
"""
from __future__ import annotations

import hashlib
import inspect
from typing import Any, Callable


def provenance(scorer: str, version: str, config: dict[str, Any]) -> dict[str, Any]:
    """The ``details["provenance"]`` block of one score."""
    return {"scorer": scorer, "version": version, "config": config}


def with_provenance(details: dict[str, Any], scorer: str, version: str, config: dict[str, Any]) -> dict[str, Any]:
    """``details`` plus its provenance block (a new dict: callers' dicts stay as they were)."""
    return {**details, "provenance": provenance(scorer, version, config)}


def function_ref(fn: Callable[..., Any] | None) -> dict[str, Any] | None:
    """Where a user-suppliable function (a domain's ``compare`` or ``check``) came from, and a hash
    of its source, so scores written before someone edited their domain's verifier are recognisable."""
    if fn is None:
        return None
    name = f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"
    try:
        source_hash = hashlib.sha256(inspect.getsource(fn).encode("utf-8")).hexdigest()[:16]
    except (OSError, TypeError):  # built-ins and functions defined in a REPL have no source file
        source_hash = None
    return {"function": name, "source_sha256": source_hash}


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
