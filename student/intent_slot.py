"""Intent/slot metrics, as the spoken-language-understanding literature reports them (SNIPS, ATIS).

For a domain whose action functions are intents and whose arguments are slots (``Domain.slot_metrics``,
e.g. the ``snips`` domain) a call ``PlayMusic(artist="Adele", service="Spotify")`` is an intent and
the (slot, value) pairs ``(artist, Adele)``, ``(service, Spotify)``. Over a set of predictions:

- intent accuracy: share of requests whose function name is right;
- slot F1: micro F1 over (slot, value) pairs of the whole set (not an average of per-request
  F1s): every predicted pair is a true positive when gold has it, else a false positive; every
  gold pair not predicted is a false negative. A slot named twice (a list value) is two pairs.
  Predicted pairs count whatever the predicted intent, as span F1 does;
- sentence accuracy: intent right and the pairs exactly gold's (nothing missing, nothing extra).

Values are compared verbatim (surrounding whitespace aside), like the span match of the
``conlleval`` script the published numbers use: the verifier's exact match forgives case and
punctuation, so sentence accuracy can be below exact match. Published slot F1 is over token
spans at their positions; ours is over (slot, value) pairs, which differs only when the same
value stands at two places of one utterance.
"""
from __future__ import annotations

import json
from collections import Counter
from typing import Any, Iterable


def slot_pairs(call: dict[str, Any] | None) -> Counter:
    """The (slot, value) pairs of a call, as a multiset; a null argument is a missing one."""
    pairs: Counter = Counter()
    for slot, value in ((call or {}).get("arguments") or {}).items():
        for item in value if isinstance(value, list) else [value]:
            if item is not None:
                pairs[(slot, _verbatim(item))] += 1
    return pairs


def _verbatim(value: Any) -> str:
    # a model may write a number unquoted (party_size_number=8): "8" is what the utterance said
    return value.strip() if isinstance(value, str) else json.dumps(value, ensure_ascii=False, sort_keys=True)


def intent_slot_metrics(calls: Iterable[tuple[dict[str, Any] | None, dict[str, Any]]]) -> dict[str, float]:
    """``{"intent_accuracy", "slot_f1", "sentence_accuracy"}`` over ``(predicted call or None, gold call)``
    pairs. Slot F1 is 1.0 when there is nothing to find and nothing was predicted."""
    n = intents = sentences = true_positives = predicted_total = gold_total = 0
    for predicted, gold in calls:
        n += 1
        intent_right = bool(predicted) and predicted.get("name") == gold.get("name")
        predicted_pairs, gold_pairs = slot_pairs(predicted), slot_pairs(gold)
        true_positives += sum((predicted_pairs & gold_pairs).values())
        predicted_total += sum(predicted_pairs.values())
        gold_total += sum(gold_pairs.values())
        intents += intent_right
        sentences += intent_right and predicted_pairs == gold_pairs
    if n == 0:
        raise ValueError("intent/slot metrics of no predictions")
    # 2PR/(P+R) with P = TP/predicted and R = TP/gold is 2TP/(predicted + gold)
    slot_f1 = 2 * true_positives / (predicted_total + gold_total) if predicted_total + gold_total else 1.0
    return {"intent_accuracy": intents / n, "slot_f1": slot_f1, "sentence_accuracy": sentences / n}
