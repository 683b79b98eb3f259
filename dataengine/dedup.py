"""Deduplication of task inputs and of trajectories, stored as scores.

Two scorers, each 1 = kept, 0 = duplicate of a better trace:

- ``dedup_input``: tasks whose requests are the same or nearly the same ("Turn off the kitchen
  lights" / "turn off the kitchen light"). All traces of the representative task keep 1 (picking
  among a task's own samples is best-of-N's job); the traces of the other tasks get 0.
- ``dedup_trajectory``: traces that took the same or nearly the same path: the sequence of tool
  calls (name and normalized arguments) followed by the final call. One trace per cluster keeps 1.

Details: ``cluster`` (the representative's task id, or trace id for trajectories),
``representative`` (its trace id), ``match`` (representative / exact / near), ``similarity``
(Jaccard similarity to the representative) and ``size`` (members of the cluster).
``dataset build --require dedup_input`` then leaves the duplicates out.

How: texts are normalized (case, punctuation, spacing); equal normalized texts are exact
duplicates. Near duplicates are pairs whose character n-gram sets have Jaccard similarity >=
``threshold``: MinHash signatures with LSH banding find the candidate pairs without comparing
every pair, and each candidate's exact Jaccard similarity decides. Clusters are connected
components (a~b and b~c puts a, b and c together). Our own ~60 lines of numpy rather than a
dependency: the exact check makes the result independent of MinHash's approximation, except
for the rare pair above the threshold that LSH never proposes (chance < 1 % at the threshold,
falling fast above it).

The representative of a cluster is its best trace: the reviewer's verdict, then gold match,
then the judge (``rank_by``; a missing score counts as 0.5, between failed and passed), then
status ok, fewest model calls, fewest tokens, oldest.
"""
from __future__ import annotations

import json
import re
import zlib
from dataclasses import dataclass
from itertools import combinations
from typing import Any, Hashable, Sequence

import numpy as np

from dataengine.provenance import with_provenance
from dataengine.schema import ToolCallRow, TraceRow
from dataengine.store import Store
from dataengine.verify import normalize_value
from supertiny.errors import UserError

DEDUP_INPUT = "dedup_input"
DEDUP_TRAJECTORY = "dedup_trajectory"
DEDUP_VERSION = "1"
DEFAULT_RANK_BY = ("review", "gold_match", "judge")
UNKNOWN_SCORE = 0.5  # a trace nobody scored ranks between the failed and the passed ones

_MERSENNE_PRIME = (1 << 61) - 1
_MAX_HASH = (1 << 32) - 1


# ---- text similarity --------------------------------------------------------------------------------


def normalize_text(text: str) -> str:
    """Case, punctuation and spacing removed: what makes two requests the same request."""
    return " ".join(re.sub(r"[^\w\s]", " ", text.casefold()).split())


def shingles(text: str, n: int) -> frozenset[str]:
    """The character n-grams of a normalized text (a text shorter than n is its own shingle)."""
    if len(text) <= n:
        return frozenset([text])
    return frozenset(text[i:i + n] for i in range(len(text) - n + 1))


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


class MinHasher:
    """MinHash signatures: ``num_perm`` universal hashes (a*x + b mod 2^61-1) of 32-bit shingle
    hashes; a and b stay below 2^32 so the products fit in uint64 without overflow."""

    def __init__(self, num_perm: int = 128, seed: int = 1):
        rng = np.random.default_rng(seed)
        self.a = rng.integers(1, _MAX_HASH, size=num_perm, dtype=np.uint64)
        self.b = rng.integers(0, _MAX_HASH, size=num_perm, dtype=np.uint64)

    def signature(self, items: frozenset[str]) -> np.ndarray:
        # crc32, not hash(): Python's string hash changes per process, and results must not.
        hashes = np.fromiter((zlib.crc32(item.encode("utf-8")) for item in items), dtype=np.uint64, count=len(items))
        permuted = (hashes[:, None] * self.a + self.b) % np.uint64(_MERSENNE_PRIME) & np.uint64(_MAX_HASH)
        return permuted.min(axis=0)


def lsh_bands(num_perm: int, threshold: float, recall: float = 0.99) -> tuple[int, int]:
    """(bands, rows): the most rows per band (fewest false candidates) for which a pair at exactly
    ``threshold`` similarity still becomes a candidate with probability >= ``recall``."""
    best = (num_perm, 1)
    for rows in range(1, num_perm + 1):
        bands = num_perm // rows
        if 1 - (1 - threshold ** rows) ** bands >= recall:
            best = (bands, rows)
    return best


def near_duplicate_pairs(texts: dict[Hashable, str], *, threshold: float, ngram: int, num_perm: int = 128,
                         seed: int = 1) -> list[tuple[Hashable, Hashable, float]]:
    """Pairs of keys whose normalized texts have n-gram Jaccard similarity >= ``threshold``."""
    sets = {key: shingles(text, ngram) for key, text in texts.items()}
    hasher = MinHasher(num_perm, seed)
    signatures = {key: hasher.signature(items) for key, items in sets.items()}
    bands, rows = lsh_bands(num_perm, threshold)
    candidates: set[tuple[Hashable, Hashable]] = set()
    order = {key: index for index, key in enumerate(texts)}
    for band in range(bands):
        buckets: dict[bytes, list[Hashable]] = {}
        for key, signature in signatures.items():
            buckets.setdefault(signature[band * rows:(band + 1) * rows].tobytes(), []).append(key)
        for members in buckets.values():
            candidates.update(combinations(sorted(members, key=order.__getitem__), 2))
    pairs = []
    for a, b in sorted(candidates, key=lambda pair: (order[pair[0]], order[pair[1]])):
        similarity = jaccard(sets[a], sets[b])
        if similarity >= threshold:
            pairs.append((a, b, similarity))
    return pairs


def cluster(texts: dict[Hashable, str], *, threshold: float, ngram: int) -> list[list[Hashable]]:
    """Groups of keys whose texts are exact (after normalization) or near duplicates, in first-seen
    order; every key is in exactly one group (most groups have one member)."""
    if not 0.0 < threshold <= 1.0:
        raise UserError(f"--threshold must be in (0, 1], not {threshold}")
    if ngram < 1:
        raise UserError(f"--ngram must be at least 1, not {ngram}")
    parent = {key: key for key in texts}

    def root(key: Hashable) -> Hashable:
        while parent[key] != key:
            parent[key] = parent[parent[key]]
            key = parent[key]
        return key

    def join(a: Hashable, b: Hashable) -> None:
        parent[root(b)] = root(a)

    first_with_text: dict[str, Hashable] = {}
    distinct: dict[Hashable, str] = {}  # one key per normalized text: exact duplicates never reach LSH
    for key, text in texts.items():
        normalized = normalize_text(text)
        if normalized in first_with_text:
            join(first_with_text[normalized], key)
        else:
            first_with_text[normalized] = key
            distinct[key] = normalized
    if threshold < 1.0:
        for a, b, _ in near_duplicate_pairs(distinct, threshold=threshold, ngram=ngram):
            join(a, b)
    groups: dict[Hashable, list[Hashable]] = {}
    for key in texts:
        groups.setdefault(root(key), []).append(key)
    return list(groups.values())


# ---- choosing the representative ---------------------------------------------------------------------


def representative_rank(trace: TraceRow, values: dict[int, dict[str, float]], rank_by: Sequence[str]) -> tuple:
    """Smaller is better: higher ``rank_by`` scores first, then ok, fewer model calls, fewer tokens, older."""
    scores = values.get(trace.id, {})
    quality = tuple(-scores.get(scorer, UNKNOWN_SCORE) for scorer in rank_by)
    return (*quality, trace.status != "ok", trace.model_calls, trace.prompt_tokens + trace.completion_tokens, trace.id)


@dataclass
class _Unit:
    """What is compared: a task (all its traces) for inputs, one trace for trajectories."""

    key: str
    text: str
    traces: list[TraceRow]


def _store_clusters(store: Store, scorer: str, units: list[_Unit], *, threshold: float, ngram: int,
                    rank_by: Sequence[str], config: dict[str, Any]) -> dict[str, Any]:
    values = store.score_values(rank_by)
    by_key = {unit.key: unit for unit in units}
    groups = cluster({unit.key: unit.text for unit in units}, threshold=threshold, ngram=ngram)
    scores, kept, duplicates = [], 0, 0
    for group in groups:
        members = [by_key[key] for key in group]
        best = min((t for unit in members for t in unit.traces), key=lambda t: representative_rank(t, values, rank_by))
        leader = next(unit for unit in members if any(trace is best for trace in unit.traces))
        leader_text, leader_set = normalize_text(leader.text), shingles(normalize_text(leader.text), ngram)
        for unit in members:
            normalized = normalize_text(unit.text)
            match = "representative" if unit is leader else "exact" if normalized == leader_text else "near"
            details = {"cluster": leader.key, "representative": best.id, "match": match, "size": len(members),
                       "similarity": round(jaccard(shingles(normalized, ngram), leader_set), 4)}
            for trace in unit.traces:
                keep = unit is leader and (scorer == DEDUP_INPUT or trace is best)
                kept += keep
                duplicates += not keep
                scores.append((trace.id, scorer, 1.0 if keep else 0.0,
                               with_provenance(details, scorer, DEDUP_VERSION, config)))
    store.set_scores(scores)
    return {"scorer": scorer, "compared": len(units), "clusters": sum(len(g) > 1 for g in groups),
            "kept": kept, "duplicates": duplicates}


def _config(domain: str, split: str | None, job_id: int | None, threshold: float, ngram: int,
            rank_by: Sequence[str], compared: str) -> dict[str, Any]:
    return {"domain": domain, "split": split, "job_id": job_id, "compared": compared, "threshold": threshold,
            "ngram": ngram, "method": "minhash-lsh (128 permutations) + exact jaccard", "rank_by": list(rank_by)}


# ---- the two deduplications -----------------------------------------------------------------------------


def dedup_inputs(store: Store, *, domain: str, split: str | None = None, job_id: int | None = None,
                 threshold: float = 0.85, ngram: int = 4, rank_by: Sequence[str] = DEFAULT_RANK_BY) -> dict[str, Any]:
    """Score ``dedup_input`` on every trace in scope: 1 for the traces of each cluster's best task."""
    name = store.domain(domain).name
    tasks: dict[str, _Unit] = {}
    for trace in store.traces(domain=name, split=split, job_id=job_id):
        key = trace.task_id or f"trace:{trace.id}"  # an ad-hoc run is its own task
        tasks.setdefault(key, _Unit(key, trace.input, [])).traces.append(trace)
    config = _config(name, split, job_id, threshold, ngram, rank_by, "task input")
    return _store_clusters(store, DEDUP_INPUT, list(tasks.values()), threshold=threshold, ngram=ngram,
                           rank_by=rank_by, config=config)


def trajectory_text(tool_calls: Sequence[ToolCallRow], final_call: dict[str, Any] | None) -> str:
    """The path a trace took, as one line: each tool call, then the final call, arguments
    normalized like the gold comparison does (case, spelling of numbers and times)."""
    def call(name: str, args: Any) -> str:
        return f"{name}({json.dumps(normalize_value(args), sort_keys=True, ensure_ascii=False)})"

    steps = [call(c.name, c.args) for c in tool_calls]
    steps.append("=> " + (call(final_call["name"], final_call.get("arguments") or {}) if final_call else "(no action)"))
    return " ; ".join(steps)


def dedup_trajectories(store: Store, *, domain: str, split: str | None = None, job_id: int | None = None,
                       threshold: float = 0.9, ngram: int = 4,
                       rank_by: Sequence[str] = DEFAULT_RANK_BY) -> dict[str, Any]:
    """Score ``dedup_trajectory`` on every trace in scope: 1 for the best trace of each cluster."""
    name = store.domain(domain).name
    traces = store.traces(domain=name, split=split, job_id=job_id)
    tool_calls = store.tool_calls_by_trace(t.id for t in traces)
    units = [_Unit(str(t.id), trajectory_text(tool_calls[t.id], t.final_call), [t]) for t in traces]
    config = _config(name, split, job_id, threshold, ngram, rank_by, "tool calls + final call")
    return _store_clusters(store, DEDUP_TRAJECTORY, units, threshold=threshold, ngram=ngram, rank_by=rank_by,
                           config=config)
