"""``UnitsPlannerChatModel``: an offline chat model for the units domain that LangGraph drives
like any LLM.

It reads only the conversation: the problem in the user message and the tool results so far.
Each turn it re-reads the problem, decides what kind of problem it is, replays its plan
against the results it already has, and asks for the tool calls still missing (independent
ones together, in one turn); when the plan is complete it calls ``submit_answer``. It never
sees the gold answer.

Like a real LLM it is imperfect. It understands problems through a general vocabulary
("laps", "times", "per", "drops by"...), so some phrasings defeat it: "circuits" are not laps,
"for each pound" is not a price per pound, a temperature that "sinks" seems to rise. With
``temperature > 0`` it samples the problem kind and makes the slips models make (forgetting a
conversion, labelling an unconverted number with the asked unit, inverting a ratio, rounding
too hard), so best-of-N sampling has different candidates to choose from.

The chat-model plumbing (reading the conversation, sampling, token estimates) is
:class:`agent.offline.OfflinePlannerChatModel`'s.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Any, ClassVar

from langchain_core.messages import AIMessage

from agent.offline import Conversation, OfflinePlannerChatModel
from tools.units.functions import UNIT_IN_TEXT, Unit, lookup_unit, significant

QUANTITY = re.compile(
    rf"(?P<money>\$\s?)?(?<![\w.])(?P<number>-?\d+(?:\.\d+)?)(?:\s*(?P<unit>{UNIT_IN_TEXT}))?"
    rf"(?:(?:\s*/\s*|\s+(?:per|a|an)\s+)(?P<per>{UNIT_IN_TEXT}))?",
    re.IGNORECASE,
)
UNIT_MENTION = re.compile(UNIT_IN_TEXT, re.IGNORECASE)
REPEAT_WORDS = ("laps", "lengths", "times", "rounds")
SERVINGS = re.compile(
    rf"\b(?:for|serves?|feeds?)\s+(\d+)(?![\d.])(?!\s*{UNIT_IN_TEXT})|\b(\d+)\s+(?:people|persons|servings|portions|guests)\b",
    re.IGNORECASE,
)
DOWN_WORDS = ("drop", "drops", "dropped", "cool", "cools", "cooled", "fall", "falls", "fell", "lower", "lowered",
              "decrease", "decreases", "down", "colder")
# the unit a speed's distance and time are in
SPEED_PARTS = {"km/h": ("km", "h"), "mph": ("mi", "h"), "m/s": ("m", "s")}


@dataclass
class Quantity:
    """A number as the problem states it: "400 m", "$3.20 per pound", "12 litres per minute", "5"."""

    value: float
    unit: Unit | None
    per: Unit | None
    start: int
    end: int


@dataclass
class Reading:
    """What the planner understood of the problem."""

    text: str  # lower case
    quantities: list[Quantity]
    asked: Unit | None  # the unit the answer is wanted in


@dataclass
class Slips:
    """The mistakes one sampled answer will make; all False when greedy."""

    forget_conversion: bool = False  # one intermediate convert is never made
    skip_final_conversion: bool = False
    label_unconverted_as_asked: bool = False  # with skip_final_conversion: writes the asked unit anyway
    invert_ratio: bool = False  # recipes: old/new instead of new/old
    round_hard: bool = False  # 2 significant digits instead of 4


class CannotRead(Exception):
    """The problem lacks what a plan needs (as the planner read it)."""


def read_problem(request: str) -> Reading:
    text = re.sub(r"(\d)(?=[°a-zA-Z$])", r"\1 ", request)  # "20°C" and "5km" read like "20 °C", "5 km"
    quantities, attached = [], []
    for match in QUANTITY.finditer(text):
        unit = lookup_unit("USD") if match.group("money") else lookup_unit(match.group("unit") or "")
        quantities.append(Quantity(float(match.group("number")), unit, lookup_unit(match.group("per") or ""),
                                   match.start(), match.end()))
        attached.append(match.span())
    # The asked unit: the last unit word that is not part of a stated quantity ("... in miles?").
    free = [m for m in UNIT_MENTION.finditer(text) if not any(a <= m.start() < b for a, b in attached)]
    return Reading(text.lower(), quantities, lookup_unit(free[-1].group(0)) if free else None)


class _Scratchpad:
    """One turn's working memory: replays a plan against the tool results so far and collects
    the calls still to make. ``convert``/``calculate`` return the number once the conversation
    holds it, else None (and the call is queued, see ``waiting``)."""

    def __init__(self, results: dict[str, tuple[str, Any]], slips: Slips):
        self.results, self.slips = results, slips
        self.calls: list[tuple[str, str, dict[str, Any]]] = []  # (slot, tool, args)
        self._forgot = False

    @property
    def waiting(self) -> bool:
        return bool(self.calls)

    def _ask(self, slot: str, tool: str, args: dict[str, Any], fallback: float | None) -> float | None:
        if slot not in self.results:
            self.calls.append((slot, tool, args))
            return None
        status, result = self.results[slot]
        if status == "ok" and isinstance(result, (int, float)):
            return float(result)
        # A tool error: like a hasty model, carry on with the unconverted number when there is one
        # (a failed calculation has none, and the plan ends without an answer).
        return fallback

    def convert(self, slot: str, value: float | None, unit: Unit, to: Unit) -> float | None:
        if value is None or unit == to:
            return value
        if self.slips.forget_conversion and not self._forgot:
            self._forgot = True  # the plan runs in the same order every turn, so it is always this one
            return value
        return self._ask(slot, "convert", {"value": value, "from_unit": unit.symbol, "to_unit": to.symbol}, value)

    def calculate(self, slot: str, expression: str) -> float | None:
        return self._ask(slot, "calculate", {"expression": expression}, None)

    def finish(self, value: float | None, unit: Unit, asked: Unit | None) -> tuple[float, Unit] | None:
        """The answer in the asked unit, or None while a call is pending."""
        if value is None or self.waiting:
            return None
        if asked is None or asked == unit:
            return value, unit
        if self.slips.skip_final_conversion:
            return value, asked if self.slips.label_unconverted_as_asked else unit
        converted = self._ask("answer", "convert", {"value": value, "from_unit": unit.symbol, "to_unit": asked.symbol},
                              None)
        return None if converted is None else (converted, asked)


def _num(value: float) -> str:
    return f"{value:.10g}"


def _of(reading: Reading, *dimensions: str, rate: bool = False) -> list[Quantity]:
    return [q for q in reading.quantities
            if q.unit is not None and q.unit.dimension in dimensions and (q.per is not None) == rate]


# ---- one plan per kind of problem: each reads what it needs, or raises CannotRead ----------


def plan_laps(pad: _Scratchpad, r: Reading) -> tuple[float, Unit] | None:
    count = re.search(rf"(\d+(?:\.\d+)?)\s+(?:[a-z]+\s+)?(?:{'|'.join(REPEAT_WORDS)})\b", r.text)
    lengths = _of(r, "length")
    if count is None or not lengths:
        raise CannotRead("no repeat count")
    # the distance the count is about: the nearest one ("laps of 400 m", "a 1.2 km loop 9 times")
    lap = min(lengths, key=lambda q: min(abs(q.start - count.start()), abs(q.end - count.start())))
    working = lap.unit
    extras = [pad.convert(f"extra{i}", q.value, q.unit, working) for i, q in enumerate(lengths) if q is not lap]
    if pad.waiting:
        return None
    total = pad.calculate("total", " + ".join([f"{count.group(1)} * {_num(lap.value)}"] + [_num(x) for x in extras]))
    return pad.finish(total, working, r.asked)


def plan_recipe(pad: _Scratchpad, r: Reading) -> tuple[float, Unit] | None:
    servings = [float(m.group(1) or m.group(2)) for m in SERVINGS.finditer(r.text)]
    amounts = _of(r, "mass", "volume")
    if len(servings) < 2 or not amounts:
        raise CannotRead("needs two serving counts and an amount")
    old, new = servings[0], servings[1]
    if pad.slips.invert_ratio:
        old, new = new, old
    scaled = pad.calculate("scaled", f"{_num(amounts[0].value)} * {_num(new)} / {_num(old)}")
    return pad.finish(scaled, amounts[0].unit, r.asked)


def plan_travel(pad: _Scratchpad, r: Reading) -> tuple[float, Unit] | None:
    speeds, durations = _of(r, "speed"), _of(r, "time")
    if not speeds or not durations:
        raise CannotRead("needs a speed and a duration")
    speed, duration = speeds[0], durations[0]
    distance_unit, time_unit = (lookup_unit(u) for u in SPEED_PARTS[speed.unit.symbol])
    time = pad.convert("duration", duration.value, duration.unit, time_unit)
    if pad.waiting:
        return None
    distance = pad.calculate("distance", f"{_num(speed.value)} * {_num(time)}")
    return pad.finish(distance, distance_unit, r.asked)


def plan_temperature(pad: _Scratchpad, r: Reading) -> tuple[float, Unit] | None:
    starts = _of(r, "temperature")
    changes = [q for q in r.quantities if q.unit is None]
    if not starts or not changes:
        raise CannotRead("needs a temperature and a change")
    falling = any(re.search(rf"\b{word}\b", r.text) for word in DOWN_WORDS)
    sign = "-" if falling else "+"
    reading = pad.calculate("reading", f"{_num(starts[0].value)} {sign} {_num(abs(changes[0].value))}")
    return pad.finish(reading, starts[0].unit, r.asked)


def plan_price(pad: _Scratchpad, r: Reading) -> tuple[float, Unit] | None:
    dollars = lookup_unit("USD")
    prices = [q for q in r.quantities if q.unit == dollars]
    amounts = [q for q in r.quantities if q.unit is not None and q.unit.dimension in ("mass", "volume")]
    if not prices or not amounts:
        raise CannotRead("needs a price and an amount")
    price, amount = prices[0], amounts[0]
    per = price.per or amount.unit  # no "per" understood: the price is taken to be per the amount's unit
    quantity = pad.convert("amount", amount.value, amount.unit, per)
    if pad.waiting:
        return None
    cost = pad.calculate("cost", f"{_num(price.value)} * {_num(quantity)}")
    return pad.finish(cost, dollars, dollars)


def plan_fill_time(pad: _Scratchpad, r: Reading) -> tuple[float, Unit] | None:
    rates = [q for q in _of(r, "volume", rate=True) if q.per.dimension == "time"]
    capacities = _of(r, "volume")
    if not rates or not capacities:
        raise CannotRead("needs a capacity and a flow rate")
    rate, capacity = rates[0], capacities[0]
    volume = pad.convert("capacity", capacity.value, capacity.unit, rate.unit)
    if pad.waiting:
        return None
    time = pad.calculate("time", f"{_num(volume)} / {_num(rate.value)}")
    return pad.finish(time, rate.per, r.asked)


def plan_average_speed(pad: _Scratchpad, r: Reading) -> tuple[float, Unit] | None:
    distances, durations = _of(r, "length"), _of(r, "time")
    if not distances or not durations:
        raise CannotRead("needs a distance and a duration")
    km, h = lookup_unit("km"), lookup_unit("h")
    distance = pad.convert("distance", distances[0].value, distances[0].unit, km)
    time = pad.convert("duration", durations[0].value, durations[0].unit, h)
    if pad.waiting:
        return None
    speed = pad.calculate("speed", f"{_num(distance)} / {_num(time)}")
    return pad.finish(speed, lookup_unit("km/h"), r.asked)


def plan_sum(pad: _Scratchpad, r: Reading) -> tuple[float, Unit] | None:
    """The fallback when nothing else fits: add up the amounts of the asked kind."""
    if r.asked is None or not (same := _of(r, r.asked.dimension)):
        raise CannotRead("no amounts of the asked kind")
    working = same[0].unit
    parts = [same[0].value] + [pad.convert(f"part{i}", q.value, q.unit, working) for i, q in enumerate(same[1:])]
    if pad.waiting:
        return None
    total = parts[0] if len(parts) == 1 else pad.calculate("total", " + ".join(_num(p) for p in parts))
    return pad.finish(total, working, r.asked)


PLANS = {"laps": plan_laps, "recipe": plan_recipe, "travel": plan_travel, "temperature": plan_temperature,
         "price": plan_price, "fill_time": plan_fill_time, "average_speed": plan_average_speed, "sum": plan_sum}


def kind_scores(r: Reading) -> dict[str, float]:
    """How strongly the problem looks like each kind; ``sum`` is the always-possible fallback."""
    has = lambda *words: any(re.search(rf"\b{re.escape(w)}\b", r.text) for w in words)  # noqa: E731
    dimensions = {q.unit.dimension for q in r.quantities if q.unit is not None}
    asked = r.asked.dimension if r.asked else None
    money = any(q.unit is not None and q.unit.symbol == "USD" for q in r.quantities)
    flow = any(q.per is not None and q.per.dimension == "time" for q in r.quantities)
    return {
        "laps": 3.0 * has(*REPEAT_WORDS) * (asked == "length"),
        "recipe": 3.0 * has("people", "persons", "servings", "portions", "guests", "serves", "feed", "feeds", "recipe"),
        "travel": 3.0 * ({"speed", "time"} <= dimensions and asked == "length"),
        "temperature": 3.0 * ("temperature" in dimensions or asked == "temperature"),
        "price": 2.0 * money + 1.0 * any(q.per is not None for q in r.quantities if q.unit and q.unit.symbol == "USD"),
        "fill_time": 2.0 * flow + 1.0 * (asked == "time") + 1.0 * has("fill", "fills", "filled", "full"),
        "average_speed": 3.0 * (asked == "speed" and {"length", "time"} <= dimensions),
        "sum": 1.0,
    }


class UnitsPlannerChatModel(OfflinePlannerChatModel):
    """The offline planner of the units domain."""

    model_name: str = "units-planner"
    not_a_request_reply: ClassVar[str] = "I can only solve word problems."

    @property
    def _llm_type(self) -> str:
        return "supertiny-units-planner"

    # -- sampling --------------------------------------------------------------------------

    def _kind(self, reading: Reading, rng: random.Random) -> str:
        # Scores count double, as the home planner's intent scores do: a sharper choice than the raw scores give.
        return self._choose(rng, [(kind, 2 * score) for kind, score in kind_scores(reading).items()])

    def _slips(self, rng: random.Random) -> Slips:
        if self.temperature <= 0:
            return Slips()
        t = self.temperature
        # Every draw is made, in this order, so one conversation's turns agree on the slips.
        draws = [rng.random() for _ in range(5)]
        return Slips(forget_conversion=draws[0] < 0.08 * t, skip_final_conversion=draws[1] < 0.08 * t,
                     label_unconverted_as_asked=draws[2] < 0.5, invert_ratio=draws[3] < 0.1 * t,
                     round_hard=draws[4] < 0.05 * t)

    # -- the conversation ------------------------------------------------------------------

    def _respond(self, conversation: Conversation) -> AIMessage:
        request, results, seed = conversation.request, conversation.results, conversation.seed
        reading = read_problem(request)
        kind = self._kind(reading, self._rng(seed, request, "kind"))
        slips = self._slips(self._rng(seed, request, "slips"))

        pad = _Scratchpad(results, slips)
        try:
            answer = PLANS[kind](pad, reading)
        except CannotRead:
            pad = _Scratchpad(results, slips)
            try:
                answer = plan_sum(pad, reading)
            except CannotRead:
                answer = None
        if pad.calls:
            calls = [self.tool_call(slot, tool, args) for slot, tool, args in pad.calls]
            return AIMessage(content="", tool_calls=calls)
        if answer is None:
            return AIMessage(content="I could not work this problem out.")
        value, unit = answer
        args = {"value": significant(value, 2 if slips.round_hard else 4), "unit": unit.symbol}
        return AIMessage(content="", tool_calls=[self.tool_call("final", "submit_answer", args)])
