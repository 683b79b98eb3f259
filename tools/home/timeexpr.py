"""Time expressions: spoken phrases -> ISO 8601, relative to the request's "now".

The teacher's ``resolve_datetime`` and ``resolve_duration`` tools are thin wrappers over these
parsers. The task generator does not use them: it picks the true value first and renders it as
text, so gold answers never depend on this parser being right.
"""
from __future__ import annotations

import difflib
import re
from datetime import date, datetime, timedelta

WEEKDAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]
NUMBER_WORDS = {
    "a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
    "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "fifteen": 15, "twenty": 20,
    "twenty five": 25, "thirty": 30, "forty": 40, "forty five": 45, "fifty": 50, "ninety": 90,
}
_NUM = r"(\d+|" + "|".join(sorted((re.escape(w) for w in NUMBER_WORDS), key=len, reverse=True)) + r")"
_UNIT_SECONDS = {"h": 3600, "m": 60, "s": 1}
_DURATION = re.compile(_NUM + r"\s*(hours?|hrs?|h|minutes?|mins?|m|seconds?|secs?|s)\b")
_CLOCK = re.compile(r"\b(\d{1,2})(?::(\d{2}))?\s*(am|pm|a\.m\.|p\.m\.)?(?![\d:])")


def _number(word: str) -> int:
    return int(word) if word.isdigit() else NUMBER_WORDS[word]


def parse_duration_seconds(expression: str) -> int:
    """'1 hour and 30 minutes' -> 5400. Raises ValueError when no duration is found."""
    text = " " + expression.lower().replace("-", " ") + " "
    total = 0
    if re.search(r"\bhour and a half\b", text):
        total += 5400
        text = re.sub(r"\b(an|a|one)?\s*hour and a half\b", " ", text)
    if re.search(r"\bhalf an hour\b", text):
        total += 1800
        text = text.replace("half an hour", " ")
    for number, unit in _DURATION.findall(text):
        total += _number(number) * _UNIT_SECONDS[unit[0]]
    if total <= 0:
        raise ValueError(f"no duration found in {expression!r} (try e.g. '20 minutes' or '1 hour 30 minutes')")
    return total


def iso_duration(seconds: int) -> str:
    """5400 -> 'PT1H30M'. The canonical form: largest units first, zero parts left out."""
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return "PT" + (f"{hours}H" if hours else "") + (f"{minutes}M" if minutes else "") + (f"{secs}S" if secs else "")


def _fuzzy_word(text: str, word: str) -> bool:
    """True when ``word`` or a one-typo variant of it appears in ``text``."""
    if word in text:
        return True
    return any(difflib.SequenceMatcher(None, token, word).ratio() >= 0.85 for token in text.split())


def _day_offset(text: str, today: date) -> int | None:
    if "day after tomorrow" in text:
        return 2
    if _fuzzy_word(text, "tomorrow") or "tmrw" in text:
        return 1
    if any(w in text for w in ("today", "tonight", "this morning", "this evening", "this afternoon")):
        return 0
    days = re.search(r"\bin " + _NUM + r" days?\b", text)
    if days:
        return _number(days.group(1))
    for index, name in enumerate(WEEKDAYS):
        if _fuzzy_word(text, name):
            return (index - today.weekday()) % 7
    return None


def _clock_time(text: str) -> tuple[int, int] | None:
    """The time of day named in ``text`` as (hour, minute), or None."""
    if "noon" in text or "midday" in text:
        return 12, 0
    for hour_text, minute_text, meridiem in _CLOCK.findall(text):
        hour, minute = int(hour_text), int(minute_text or 0)
        if hour > 23 or minute > 59:
            continue
        if meridiem.startswith("p") and hour < 12:
            hour += 12
        elif meridiem.startswith("a") and hour == 12:
            hour = 0
        elif not meridiem and not minute_text and hour <= 12 and ("evening" in text or "tonight" in text):
            hour = hour % 12 + 12
        return hour, minute
    return None


def resolve(expression: str, now: datetime) -> dict[str, str | None]:
    """Resolve a spoken time to ``{"datetime": "YYYY-MM-DDTHH:MM" | None, "date": "YYYY-MM-DD"}``.

    A clock time with no day means its next occurrence after ``now``; a weekday means the next
    such day, today included; "in 2 hours" counts from ``now``. Raises ValueError when the
    expression names neither a day nor a time.
    """
    text = " " + expression.lower().replace(",", " ") + " "
    relative = re.search(r"\bin " + _NUM + r"\s*(hours?|hrs?|minutes?|mins?)\b", text)
    if relative:
        moment = now + timedelta(seconds=_number(relative.group(1)) * _UNIT_SECONDS[relative.group(2)[0]])
        moment = moment.replace(second=0, microsecond=0)
        return {"datetime": moment.strftime("%Y-%m-%dT%H:%M"), "date": moment.date().isoformat()}
    offset = _day_offset(text, now.date())
    clock = _clock_time(re.sub(r"\bin \S+ days?\b", " ", text))
    if offset is None and clock is None:
        raise ValueError(f"no day or time found in {expression!r} (try e.g. 'tomorrow at 7am')")
    day = now.date() + timedelta(days=offset or 0)
    if clock is None:
        return {"datetime": None, "date": day.isoformat()}
    moment = datetime.combine(day, datetime.min.time()).replace(hour=clock[0], minute=clock[1])
    if offset is None and moment <= now:
        moment += timedelta(days=1)
    return {"datetime": moment.strftime("%Y-%m-%dT%H:%M"), "date": moment.date().isoformat()}
