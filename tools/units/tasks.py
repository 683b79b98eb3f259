"""Seeded task generator for the units domain: 2-3 step word problems with exact answers.

Each problem type draws its quantities first, computes the true answer with the domain's own
unit table, and then fills a phrasing. Gold is ``submit_answer(value, unit)`` with the value
rounded to 4 significant digits (``compare_answers`` allows a relative 1e-3).

Splits: train and dev use the ``train`` phrasings; test uses only ``test`` phrasings, never
seen in train. A marked part of test (``slice="novel"``) holds what train never shows: the
problem types in ``NOVEL_PROBLEMS``, or a seen type asked in a unit from ``HELD_OUT_UNITS``;
the rest of test is ``slice="seen"``.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable

from tools.registry import Task
from tools.units.functions import convert, significant

# problem type -> {"train": [...], "test": [...]} phrasings; the slots each type fills are in its builder
TEMPLATES: dict[str, dict[str, list[str]]] = {
    "laps": {
        "train": [
            "A runner does {count} laps of {lap} and then {extra} more. How far is that in {target}?",
            "Sam runs {count} laps of a {lap} track, then another {extra}. What is the total distance in {target}?",
            "A swimmer completes {count} lengths of {lap} and then swims {extra} more. How far did she swim in {target}?",
            "After {count} laps of {lap}, a walker adds {extra}. How many {target} did the walker cover in total?",
        ],
        "test": [
            "A cyclist rides {count} circuits of {lap} after a {extra} warm-up. Give the total distance in {target}.",
            "A dog walker goes round a {lap} loop {count} times and adds a {extra} detour. How far is that in {target}?",
            "Kim swims {count} lengths of {lap} and finishes with a {extra} cool-down. Express the whole distance in {target}.",
        ],
    },
    "recipe": {
        "train": [
            "A recipe for {s1} people needs {amount} of {ingredient}. How much {ingredient} is needed for {s2} people, in {target}?",
            "A cake for {s1} servings uses {amount} of {ingredient}. How much {ingredient} do you need for {s2} servings? Answer in {target}.",
            "To feed {s1} people you need {amount} of {ingredient}. For {s2} people, how many {target} of {ingredient} is that?",
        ],
        "test": [
            "A soup that serves {s1} calls for {amount} of {ingredient}. Scaled to serve {s2}, how much {ingredient} is that in {target}?",
            "{amount} of {ingredient} is enough for {s1} guests. Express the amount for {s2} guests in {target}.",
            "A batch of pancakes for {s1} takes {amount} of {ingredient}; how much {ingredient} would {s2} hungry campers need, in {target}?",
        ],
    },
    "travel": {
        "train": [
            "A train travels at {speed} for {duration}. How far does it go in {target}?",
            "A car drives at {speed} for {duration}. What distance does it cover, in {target}?",
            "Moving at {speed} for {duration}, how many {target} does a cyclist travel?",
        ],
        "test": [
            "A ferry cruises for {duration} at a steady {speed}. Give the distance covered in {target}.",
            "If you keep up {speed} for {duration}, how far will you get in {target}?",
            "A drone flies {duration} at {speed}. How much ground does it cover, in {target}?",
        ],
    },
    "temperature": {
        "train": [
            "The water is at {start} and then {change} {delta} degrees. What is its temperature in {target}?",
            "An oven at {start} {change} {delta} degrees. What is the new temperature in {target}?",
            "It was {start} this morning; since then it {change} {delta} degrees. What is it now in {target}?",
        ],
        "test": [
            "Starting from {start}, the air {change} {delta} degrees by noon. Report the temperature in {target}.",
            "A freezer holds {start}; after a power cut it {change} {delta} degrees. Convert the new reading to {target}.",
        ],
    },
    "price": {
        "train": [
            "The price of {item} is {price} per {per}. How much do {quantity} of {item} cost, in dollars?",
            "At {price} per {per}, what is the price of {quantity} of {item} in dollars?",
            "A shop sells {item} for {price} per {per}. What do {quantity} cost in dollars?",
        ],
        "test": [
            "You buy {quantity} of {item} priced at {price} a {per}. What is the bill in dollars?",
            "The market lists {item} at {price} for each {per}. How many dollars do {quantity} cost?",
            "The shop charges {price}/{per} for {item}. What do you pay for {quantity}, in dollars?",
        ],
    },
    # novel problem types: test phrasings only
    "fill_time": {
        "test": [
            "A tank holds {capacity}. A pump fills it at {rate}. How long does filling it take, in {target}?",
            "A pool of {capacity} is filled by a hose delivering {rate}. How many {target} until it is full?",
        ],
    },
    "average_speed": {
        "test": [
            "A cyclist covers {distance} in {duration}. What was the average speed in {target}?",
            "A hiker walks {distance} in {duration}. Give the average speed in {target}.",
        ],
    },
}
SEEN_PROBLEMS = ["laps", "recipe", "travel", "temperature", "price"]
NOVEL_PROBLEMS = ["fill_time", "average_speed"]
HELD_OUT_UNITS = ("yd", "K", "gal")  # never in train or dev
HELD_OUT_UNIT_PROBLEMS = ["laps", "recipe", "temperature"]  # the seen types the novel slice asks in them

# how problems write a unit after a number, and after "per"
SAID: dict[str, list[str]] = {
    "m": ["m", "metres", "meters"], "km": ["km", "kilometres", "kilometers"], "mi": ["miles"],
    "ft": ["feet", "ft"], "yd": ["yards", "yd"],
    "kg": ["kg", "kilograms"], "g": ["g", "grams"], "lb": ["lb", "pounds"], "oz": ["oz", "ounces"],
    "l": ["L", "litres", "liters"], "ml": ["ml", "millilitres"], "gal": ["gallons"], "cup": ["cups"],
    "min": ["minutes", "min"], "h": ["hours", "h"],
    "km/h": ["km/h", "kilometres per hour"], "mph": ["mph", "miles per hour"], "m/s": ["m/s", "metres per second"],
    "C": ["°C", "degrees Celsius"], "F": ["°F", "degrees Fahrenheit"], "K": ["kelvin", "K"],
}
PER: dict[str, list[str]] = {"kg": ["kg", "kilo", "kilogram"], "lb": ["lb", "pound"], "l": ["litre", "liter"],
                             "gal": ["gallon"], "min": ["minute"], "h": ["hour"]}
# temperature change verbs: phrasing -> direction -> verbs
CHANGE_WORDS: dict[str, dict[int, list[str]]] = {
    "train": {+1: ["rises by", "warms up by", "goes up by"], -1: ["drops by", "cools by", "falls by"]},
    "test": {+1: ["climbs", "heats up by"], -1: ["sinks", "is lowered by"]},
}


@dataclass
class Problem:
    """One drawn problem: the slot values, the exact answer, and every unit it mentions."""

    slots: dict[str, str]
    value: float
    unit: str
    units: set[str]


def _number(value: float) -> str:
    return f"{value:g}"


def _amount(value: float, unit: str, rng: random.Random) -> str:
    return f"{_number(value)} {rng.choice(SAID[unit])}"


def _laps(rng: random.Random, held_out: bool, phrasing: str) -> Problem:
    lap_value, lap_unit = rng.choice([(400, "m"), (200, "m"), (800, "m"), (1.2, "km"), (1.5, "km"), (0.25, "mi"),
                                      (660, "ft")])
    extra_unit = rng.choice(["km", "mi", "m"])
    extra_value = rng.choice({"km": [1.5, 2, 2.5, 3, 4.2, 5], "mi": [0.5, 1.5, 2, 3],
                              "m": [300, 500, 600, 750, 1200]}[extra_unit])
    count = rng.randint(2, 12)
    target = "yd" if held_out else rng.choice([u for u in ("mi", "km", "m", "ft") if u != lap_unit])
    metres = count * convert(lap_value, lap_unit, "m") + convert(extra_value, extra_unit, "m")
    slots = {"count": str(count), "lap": _amount(lap_value, lap_unit, rng),
             "extra": _amount(extra_value, extra_unit, rng), "target": rng.choice(SAID[target])}
    return Problem(slots, convert(metres, "m", target), target, {lap_unit, extra_unit, target})


def _recipe(rng: random.Random, held_out: bool, phrasing: str) -> Problem:
    ingredients = [("milk", "volume"), ("stock", "volume"), ("cream", "volume"), ("water", "volume")]
    if not held_out:
        ingredients += [("flour", "mass"), ("sugar", "mass"), ("butter", "mass"), ("rice", "mass")]
    ingredient, dimension = rng.choice(ingredients)
    pools = {"mass": {"g": list(range(150, 901, 50)), "kg": [0.5, 1.5, 2, 2.5], "oz": [4, 6, 8, 12, 16],
                      "lb": [0.5, 1.5, 2, 3]},
             "volume": {"ml": list(range(150, 901, 50)), "l": [0.5, 1.5, 2, 3], "cup": [0.5, 1.5, 2, 2.5, 3]}}[dimension]
    unit = rng.choice(list(pools))
    amount = rng.choice(pools[unit])
    target = "gal" if held_out else rng.choice([u for u in pools if u != unit])
    s1 = rng.choice([2, 4, 6, 8])
    s2 = rng.choice([n for n in (3, 5, 10, 12, 15, 20, 30, 40) if n != s1])
    slots = {"s1": str(s1), "s2": str(s2), "amount": _amount(amount, unit, rng), "ingredient": ingredient,
             "target": rng.choice(SAID[target])}
    return Problem(slots, convert(amount * s2 / s1, unit, target), target, {unit, target})


def _travel(rng: random.Random, held_out: bool, phrasing: str) -> Problem:
    speed_unit = rng.choice(["km/h", "mph"])
    speed = rng.randrange(40, 131, 5) if speed_unit == "km/h" else rng.randrange(25, 76, 5)
    duration_unit = rng.choice(["min", "h"])
    duration = rng.choice([20, 25, 40, 45, 50, 75, 90, 100, 150] if duration_unit == "min" else [1.5, 2, 2.5, 3, 4, 5])
    target = rng.choice([u for u in ("km", "mi", "m") if u != {"km/h": "km", "mph": "mi"}[speed_unit]])
    metres = convert(speed, speed_unit, "m/s") * convert(duration, duration_unit, "s")
    slots = {"speed": _amount(speed, speed_unit, rng), "duration": _amount(duration, duration_unit, rng),
             "target": rng.choice(SAID[target])}
    return Problem(slots, convert(metres, "m", target), target, {speed_unit, duration_unit, target})


def _temperature(rng: random.Random, held_out: bool, phrasing: str) -> Problem:
    start_unit = rng.choice(["C", "F"])
    start = rng.randint(-15, 40) if start_unit == "C" else rng.randint(10, 100)
    delta, direction = rng.randint(3, 30), rng.choice([+1, -1])
    target = "K" if held_out else {"C": "F", "F": "C"}[start_unit]
    slots = {"start": _amount(start, start_unit, rng), "delta": str(delta),
             "change": rng.choice(CHANGE_WORDS[phrasing][direction]), "target": rng.choice(SAID[target])}
    return Problem(slots, convert(start + direction * delta, start_unit, target), target, {start_unit, target})


def _price(rng: random.Random, held_out: bool, phrasing: str) -> Problem:
    item, dimension = rng.choice([("apples", "mass"), ("cheese", "mass"), ("coffee beans", "mass"),
                                  ("flour", "mass"), ("olive oil", "volume"), ("orange juice", "volume")])
    per_unit = rng.choice(["kg", "lb"]) if dimension == "mass" else "l"
    pools = {"g": list(range(250, 1501, 50)), "kg": [0.5, 1.5, 2, 2.5, 3], "lb": [0.5, 1.5, 2, 3, 4],
             "oz": [8, 12, 16, 24], "ml": list(range(250, 2001, 250)), "cup": [2, 3, 4, 6]}
    quantity_unit = rng.choice([u for u in (("g", "kg", "lb", "oz") if dimension == "mass" else ("ml", "cup"))
                                if u != per_unit])
    quantity = rng.choice(pools[quantity_unit])
    price = round(rng.uniform(1.5, 25), 2)
    slots = {"item": item, "price": f"${price:.2f}", "per": rng.choice(PER[per_unit]),
             "quantity": _amount(quantity, quantity_unit, rng)}
    return Problem(slots, price * convert(quantity, quantity_unit, per_unit), "USD", {per_unit, quantity_unit, "USD"})


def _fill_time(rng: random.Random, held_out: bool, phrasing: str) -> Problem:
    capacity_unit, rate_unit, rate_time = rng.choice(["l", "gal"]), rng.choice(["l", "gal"]), rng.choice(["min", "h"])
    capacity = rng.randrange(200, 3001, 50) if capacity_unit == "l" else rng.randrange(50, 801, 10)
    rate = {("l", "min"): rng.randrange(5, 61, 5), ("l", "h"): rng.randrange(100, 1001, 50),
            ("gal", "min"): rng.randrange(2, 16), ("gal", "h"): rng.randrange(20, 301, 10)}[(rate_unit, rate_time)]
    target = "h" if rate_time == "min" else "min"
    fill_time = convert(capacity, capacity_unit, rate_unit) / rate  # in rate_time
    slots = {"capacity": _amount(capacity, capacity_unit, rng),
             "rate": f"{_amount(rate, rate_unit, rng)} per {rng.choice(PER[rate_time])}",
             "target": rng.choice(SAID[target])}
    return Problem(slots, convert(fill_time, rate_time, target), target, {capacity_unit, rate_unit, rate_time, target})


def _average_speed(rng: random.Random, held_out: bool, phrasing: str) -> Problem:
    distance_unit, duration_unit = rng.choice(["km", "mi"]), rng.choice(["min", "h"])
    distance = rng.randrange(5, 201, 5) if distance_unit == "km" else rng.randrange(3, 121, 3)
    duration = rng.randrange(20, 301, 10) if duration_unit == "min" else rng.choice([0.5, 1.5, 2, 2.5, 3, 4])
    target = rng.choice(["km/h", "mph", "m/s"])
    metres_per_second = convert(distance, distance_unit, "m") / convert(duration, duration_unit, "s")
    slots = {"distance": _amount(distance, distance_unit, rng), "duration": _amount(duration, duration_unit, rng),
             "target": rng.choice(SAID[target])}
    return Problem(slots, convert(metres_per_second, "m/s", target), target, {distance_unit, duration_unit, target})


BUILDERS: dict[str, Callable[[random.Random, bool, str], Problem]] = {
    "laps": _laps, "recipe": _recipe, "travel": _travel, "temperature": _temperature, "price": _price,
    "fill_time": _fill_time, "average_speed": _average_speed,
}


def generate_tasks(
    seed: int = 0, n_train: int = 400, n_dev: int = 60, n_test: int = 120, novel_fraction: float = 0.3,
) -> list[Task]:
    """All three splits, deterministic for a seed. Ids read ``units-s<seed>-<split>-<n>``."""
    tasks: list[Task] = []
    for split, count in (("train", n_train), ("dev", n_dev), ("test", n_test)):
        # One generator per split: the test set must not change when --train grows.
        rng = random.Random(f"units-{seed}-{split}")
        phrasing = "test" if split == "test" else "train"
        n_novel = round(count * novel_fraction) if split == "test" else 0
        for index in range(count):
            novel = index < n_novel
            problem = rng.choice(NOVEL_PROBLEMS + HELD_OUT_UNIT_PROBLEMS if novel else SEEN_PROBLEMS)
            held_out_unit = novel and problem in HELD_OUT_UNIT_PROBLEMS
            template = rng.choice(TEMPLATES[problem][phrasing])
            drawn = BUILDERS[problem](rng, held_out_unit, phrasing)
            tasks.append(Task(
                id=f"units-s{seed}-{split}-{index:05d}",
                domain="units",
                split=split,
                input=template.format(**drawn.slots),
                context={},
                gold={"name": "submit_answer", "arguments": {"value": significant(drawn.value), "unit": drawn.unit}},
                slice=("novel" if novel else "seen") if split == "test" else None,
                meta={"problem": problem, "template": template, "units": sorted(drawn.units),
                      "novel": ("unit" if held_out_unit else "problem") if novel else None},
            ))
    return tasks
