"""The units domain's functions: a safe calculator and a unit converter, the final answer, and
the domain's two verifiers.

Word problems need a few exact steps ("3 laps of 400 m plus 2.5 km, in miles"); the tools do
the arithmetic so the model only has to plan. Their signatures and Google-style docstrings are
the tool schemas the model sees. ``compare_answers`` judges an answer against gold with a
numeric tolerance; ``check_answer`` judges it with no gold at all (finite, a known unit, the
unit the question asks for, physically possible).
"""
from __future__ import annotations

import ast
import math
import operator
import re
from dataclasses import dataclass
from typing import Any

# ---- the unit table -------------------------------------------------------------------------


@dataclass(frozen=True)
class Unit:
    """One unit: ``base = value * factor + offset`` in its dimension's base unit.

    Base units: m, kg, l, s, m/s, K and USD. Only temperatures have an offset (they are affine
    scales: 0 °C is not "no temperature"), which is why ``convert`` goes through the base."""

    symbol: str  # the canonical spelling, what answers and gold use
    dimension: str
    factor: float
    offset: float = 0.0
    names: tuple[str, ...] = ()  # other spellings people write, lower case

    def to_base(self, value: float) -> float:
        return value * self.factor + self.offset

    def from_base(self, value: float) -> float:
        return (value - self.offset) / self.factor


UNITS: list[Unit] = [
    Unit("m", "length", 1.0, names=("meter", "meters", "metre", "metres")),
    Unit("km", "length", 1000.0, names=("kms", "kilometer", "kilometers", "kilometre", "kilometres")),
    Unit("cm", "length", 0.01, names=("centimeter", "centimeters", "centimetre", "centimetres")),
    Unit("mm", "length", 0.001, names=("millimeter", "millimeters", "millimetre", "millimetres")),
    Unit("mi", "length", 1609.344, names=("mile", "miles")),
    Unit("ft", "length", 0.3048, names=("foot", "feet")),
    Unit("in", "length", 0.0254, names=("inch", "inches")),
    Unit("yd", "length", 0.9144, names=("yard", "yards")),
    Unit("kg", "mass", 1.0, names=("kgs", "kilo", "kilos", "kilogram", "kilograms", "kilogramme", "kilogrammes")),
    Unit("g", "mass", 0.001, names=("gram", "grams", "gramme", "grammes")),
    Unit("lb", "mass", 0.45359237, names=("lbs", "pound", "pounds")),
    Unit("oz", "mass", 0.028349523125, names=("ounce", "ounces")),
    Unit("l", "volume", 1.0, names=("liter", "liters", "litre", "litres")),
    Unit("ml", "volume", 0.001, names=("milliliter", "milliliters", "millilitre", "millilitres")),
    Unit("gal", "volume", 3.785411784, names=("gallon", "gallons")),  # US gallon
    Unit("cup", "volume", 0.2365882365, names=("cups",)),  # US customary cup
    Unit("s", "time", 1.0, names=("sec", "secs", "second", "seconds")),
    Unit("min", "time", 60.0, names=("mins", "minute", "minutes")),
    Unit("h", "time", 3600.0, names=("hr", "hrs", "hour", "hours")),
    Unit("day", "time", 86400.0, names=("days", "d")),
    Unit("m/s", "speed", 1.0, names=("mps", "meters per second", "metres per second")),
    Unit("km/h", "speed", 1 / 3.6, names=("kph", "kmh", "km/hr", "kilometers per hour", "kilometres per hour")),
    Unit("mph", "speed", 0.44704, names=("mi/h", "miles per hour")),
    Unit("C", "temperature", 1.0, 273.15, names=("celsius", "centigrade")),
    Unit("F", "temperature", 5 / 9, 273.15 - 32 * 5 / 9, names=("fahrenheit",)),
    Unit("K", "temperature", 1.0, names=("kelvin", "kelvins")),
    Unit("USD", "money", 1.0, names=("$", "dollar", "dollars", "us dollars")),  # no exchange rates, on purpose
]
DIMENSIONS = list(dict.fromkeys(unit.dimension for unit in UNITS))


def _unit_key(text: str) -> str:
    """How a unit is looked up: lower case, no degree sign or word, no spaces around '/'."""
    text = str(text).strip().lower().replace("°", " ")
    text = re.sub(r"\b(degrees|degree|deg)\b", " ", text)
    text = re.sub(r"\s*/\s*", "/", text)
    return " ".join(text.split()).rstrip(".")


_BY_KEY: dict[str, Unit] = {}
for _unit in UNITS:
    for _spelling in (_unit.symbol, *_unit.names):
        _BY_KEY[_unit_key(_spelling)] = _unit


def units_of(dimension: str) -> list[str]:
    return [unit.symbol for unit in UNITS if unit.dimension == dimension]


def lookup_unit(text: Any) -> Unit | None:
    """A unit by symbol or name ("mi", "Miles", "°F", "degrees Celsius"), or None."""
    return _BY_KEY.get(_unit_key(text)) if isinstance(text, str) else None


def parse_unit(text: str) -> Unit:
    """Like :func:`lookup_unit`, but an unknown unit is an error that lists the known ones."""
    unit = lookup_unit(text)
    if unit is None:
        known = "; ".join(f"{dim}: {', '.join(units_of(dim))}" for dim in DIMENSIONS)
        raise ValueError(f"unknown unit {text!r}; known units are {known}")
    return unit


# Unit mentions inside running text. "in" (the preposition) and "d" are left out: in prose they
# are almost never units. Longest spellings first, so "km/h" wins over "km".
_TEXT_SPELLINGS = sorted({s for u in UNITS for s in (u.symbol.lower(), *u.names)} - {"in", "d"}, key=len, reverse=True)
UNIT_IN_TEXT = (r"(?<![\w'$])(?:°\s?|degrees?\s+)?(?:"
                + "|".join(re.escape(s).replace(r"\ ", r"\s+") for s in _TEXT_SPELLINGS) + r")(?![\w/])")
_ASKED_UNIT = re.compile(rf"\b(?:in|into|to|many)\s+(?:the\s+)?({UNIT_IN_TEXT})", re.IGNORECASE)


def asked_unit(question: str) -> Unit | None:
    """The unit a problem asks its answer in ("... how far in miles?"), or None when it names none."""
    matches = list(_ASKED_UNIT.finditer(question))
    return lookup_unit(matches[-1].group(1)) if matches else None


def significant(value: float, digits: int = 4) -> float:
    """``value`` rounded to ``digits`` significant digits: how answers and gold are written."""
    return float(f"{value:.{digits}g}")


def _tidy(value: float) -> float:
    # 12 significant digits hide binary noise (0.1 + 0.2) without losing anything an answer needs.
    return float(f"{value:.12g}") + 0.0  # + 0.0 turns -0.0 into 0.0


# ---- lookup tools ---------------------------------------------------------------------------

_OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
              ast.Div: operator.truediv, ast.Pow: operator.pow}
_SIGNS = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_FUNCTIONS = {"abs": abs, "max": max, "min": min, "round": round}
MAX_EXPRESSION_CHARS = 500
_ALLOWED = "only numbers, + - * / ** ( ) and the functions abs, max, min, round are allowed"


def _evaluate(node: ast.AST) -> float:
    """Walk the parsed expression, allowing arithmetic only. Never ``eval``: the text comes
    from a model, and a model can be talked into writing ``__import__('os')``."""
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):  # bool and complex are out
        try:
            return float(node.value)
        except OverflowError:
            raise ValueError(f"number too large: {str(node.value)[:20]}...") from None
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        left, right = _evaluate(node.left), _evaluate(node.right)
        try:
            result = _OPERATORS[type(node.op)](left, right)
        except ZeroDivisionError:
            raise ValueError("division by zero") from None
        except OverflowError:
            raise ValueError("the result is too large") from None
        if isinstance(result, complex):  # (-8) ** 0.5
            raise ValueError(f"({left:g}) ** {right:g} has no real value")
        return result
    if isinstance(node, ast.UnaryOp) and type(node.op) in _SIGNS:
        return _SIGNS[type(node.op)](_evaluate(node.operand))
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCTIONS:
        if node.keywords:
            raise ValueError(f"{node.func.id}() takes positional arguments only")
        name, args = node.func.id, [_evaluate(arg) for arg in node.args]
        if name == "round" and len(args) == 2:
            if not args[1].is_integer():
                raise ValueError("round(x, n): n must be a whole number")
            args[1] = int(args[1])
        try:
            return float(_FUNCTIONS[name](*args))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{name}(): {exc}") from None
    raise ValueError(_refusal(node))


def _refusal(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return f"unknown name {node.id!r}: {_ALLOWED}"
    if isinstance(node, ast.Attribute):
        return f"attribute access (.{node.attr}) is not allowed: {_ALLOWED}"
    if isinstance(node, ast.Call):
        called = node.func.id if isinstance(node.func, ast.Name) else ast.unparse(node.func)
        return f"function {called!r} is not allowed; allowed functions: {', '.join(_FUNCTIONS)}"
    if isinstance(node, ast.Constant):
        return f"{node.value!r} is not a number: {_ALLOWED}"
    return f"{type(node).__name__} is not arithmetic: {_ALLOWED}"


def calculate(expression: str) -> float:
    """Evaluate an arithmetic expression exactly and return the number.

    Args:
        expression: numbers with + - * / and ** (or ^) for powers, parentheses, and abs, min, max, round(x, n); e.g. "3 * 400 + 2500".
    """
    text = expression.replace("^", "**").replace("×", "*").replace("÷", "/")
    if len(text) > MAX_EXPRESSION_CHARS:
        raise ValueError(f"expression too long ({len(text)} characters; at most {MAX_EXPRESSION_CHARS})")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError:
        raise ValueError(f"not an arithmetic expression: {expression!r}") from None
    result = _evaluate(tree.body)
    if not math.isfinite(result):
        raise ValueError("the result is not a finite number")
    return _tidy(result)


def convert(value: float, from_unit: str, to_unit: str) -> float:
    """Convert an amount between units of the same kind: length, mass, volume, time, speed or temperature.

    Args:
        value: the amount, in from_unit.
        from_unit: its unit, as a symbol or a name: "km", "miles", "lb", "cups", "min", "km/h", "°F".
        to_unit: the unit wanted, e.g. "mi", "kg", "l", "h", "mph", "C".
    """
    source, target = parse_unit(from_unit), parse_unit(to_unit)
    if source.dimension != target.dimension:
        raise ValueError(f"cannot convert {source.symbol} ({source.dimension}) to {target.symbol} "
                         f"({target.dimension}); {source.dimension} units are {', '.join(units_of(source.dimension))}")
    if not math.isfinite(value):
        raise ValueError(f"value must be a finite number, got {value}")
    return _tidy(target.from_base(source.to_base(value)))


LOOKUP_FUNCTIONS = [calculate, convert]

# ---- the action: calling it ends the task ---------------------------------------------------


def submit_answer(value: float, unit: str) -> str:
    """Submit the final answer to the problem; call it once, when every step is done.

    Args:
        value: the final numeric answer, in the unit the question asks for (4 significant digits are enough).
        unit: that unit's canonical symbol: m, km, mi, ft, yd, kg, g, lb, oz, l, ml, gal, cup, s, min, h, day, km/h, mph, m/s, C, F, K or USD.
    """
    return f"answer: {value:g} {unit}"


ACTION_FUNCTIONS = [submit_answer]

# ---- verifiers ------------------------------------------------------------------------------

RELATIVE_TOLERANCE = 1e-3  # gold has 4 significant digits, so rounding differs by < 5e-4
ABSOLUTE_TOLERANCE = 1e-6  # only so that 0 equals 1e-15 (32 °F in °C)


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _same_value(predicted: Any, gold: Any) -> bool:
    a, b = _number(predicted), _number(gold)
    return a is not None and b is not None and math.isclose(a, b, rel_tol=RELATIVE_TOLERANCE,
                                                             abs_tol=ABSOLUTE_TOLERANCE)


def _same_unit(predicted: Any, gold: Any) -> bool:
    a, b = lookup_unit(predicted), lookup_unit(gold)
    return a is not None and a == b


def compare_answers(predicted: dict[str, Any] | None, gold: dict[str, Any]) -> dict[str, Any]:
    """Gold match for ``submit_answer``: the value within a relative 1e-3, the unit by meaning
    ("miles" is "mi"). Same keys as :func:`dataengine.verify.compare_calls`."""
    name_match = bool(predicted) and predicted.get("name") == gold.get("name")
    pred_args = {k: v for k, v in ((predicted or {}).get("arguments") or {}).items() if v is not None}
    gold_args = {k: v for k, v in (gold.get("arguments") or {}).items() if v is not None}
    same = {"value": _same_value, "unit": _same_unit}

    def matches(key: str) -> bool:
        if key not in pred_args or key not in gold_args:
            return False
        return same.get(key, lambda a, b: a == b)(pred_args[key], gold_args[key])

    hits = sum(matches(key) for key in pred_args) if name_match else 0
    precision = hits / len(pred_args) if pred_args else float(name_match and not gold_args)
    recall = hits / len(gold_args) if gold_args else float(name_match)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    wrong = sorted(key for key in pred_args.keys() | gold_args.keys() if not matches(key))
    return {"exact": name_match and not wrong, "name_match": name_match, "arg_precision": precision,
            "arg_recall": recall, "arg_f1": f1, "mismatched_args": wrong if name_match else None}


def check_answer(call: dict[str, Any], text: str, context: dict[str, Any]) -> str | None:
    """A check that needs no gold: None when the answer is plausible, else the reason it is not.

    Plausible: a finite value, a known unit, the unit the question asks for (when it names one),
    and physically possible (no negative distances, nothing below absolute zero)."""
    if call.get("name") != "submit_answer":
        return f"the answer must be a submit_answer call, got {call.get('name')!r}"
    args = call.get("arguments") or {}
    value = _number(args.get("value"))
    if value is None:
        return f"value {args.get('value')!r} is not a finite number"
    unit = lookup_unit(args.get("unit"))
    if unit is None:
        return f"unknown unit {args.get('unit')!r}"
    asked = asked_unit(text)
    if asked is not None and asked.dimension != unit.dimension:
        return f"the answer is a {unit.dimension} ({unit.symbol}) but the question asks for a {asked.dimension} ({asked.symbol})"
    if asked is not None and asked != unit:
        return f"the answer is in {unit.symbol} but the question asks for {asked.symbol}"
    if unit.dimension == "temperature" and unit.to_base(value) < 0:
        return f"{value:g} {unit.symbol} is below absolute zero"
    if unit.dimension != "temperature" and value < 0:
        return f"a {unit.dimension} cannot be negative ({value:g} {unit.symbol})"
    return None
