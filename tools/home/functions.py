"""The home domain's functions: lookup tools the teacher calls, and the final actions.

Lookup tools turn what a person said ("the lounge lamp", "bohemian rapsody", "tomorow at 7")
into canonical arguments. Action functions are the answer: the agent's task ends when the
model calls one, and that call is what the verifier compares with gold. Their signatures and
docstrings are the tool schemas the model sees.
"""
from __future__ import annotations

import difflib
import re
from datetime import datetime
from typing import Literal

from tools.home import timeexpr
from tools.home.catalog import CATALOG, DEVICE_WORDS


def _norm(text: str) -> str:
    text = re.sub(r"[^\w\s']", " ", text.lower())
    return " ".join(w for w in text.split() if w not in {"the", "my", "a"})


def similarity(query: str, name: str) -> float:
    """Fuzzy name match in [0, 1]: character similarity, typo tolerant, ignores 'the'/'my'."""
    q, n = _norm(query), _norm(name)
    if not q or not n:
        return 0.0
    if q == n:
        return 1.0
    return difflib.SequenceMatcher(None, q, n).ratio()


def _best(query: str, names: list[str], limit: int = 3, cutoff: float = 0.6) -> list[tuple[str, float]]:
    scored = sorted(((name, similarity(query, name)) for name in names), key=lambda x: -x[1])
    return [(name, round(score, 3)) for name, score in scored[:limit] if score >= cutoff]


# ---- lookup tools ---------------------------------------------------------------------------


def search_music(query: str, kind: Literal["song", "artist", "playlist", "any"] = "any") -> list[dict]:
    """Search the music catalog by name; returns the best matches with their canonical names.

    Args:
        query: the title, artist or playlist name as the user said it (typos are fine).
        kind: what to search: "song", "artist", "playlist", or "any" for all three.
    """
    hits: list[dict] = []
    if kind in ("song", "any"):
        for title, score in _best(query, [s.title for s in CATALOG.songs]):
            artist = next(s.artist for s in CATALOG.songs if s.title == title)
            hits.append({"kind": "song", "name": title, "artist": artist, "score": score})
    if kind in ("artist", "any"):
        hits += [{"kind": "artist", "name": n, "score": s} for n, s in _best(query, list(CATALOG.artists))]
    if kind in ("playlist", "any"):
        hits += [{"kind": "playlist", "name": n, "score": s} for n, s in _best(query, list(CATALOG.playlists))]
    return sorted(hits, key=lambda h: -h["score"])[:5]


def find_device(room: str, device_type: str) -> list[dict]:
    """Find smart-home devices by room and type; returns their device ids.

    Args:
        room: the room as the user said it, e.g. "lounge" or "kitchen".
        device_type: the device as the user said it, e.g. "lights", "lamp", "tv", "heater".
    """
    room_scores = {
        slug: max(similarity(room, alias) for alias in aliases)
        for slug, (aliases, _) in CATALOG.rooms.items()
    }
    best_room = max(room_scores, key=room_scores.get)
    if room_scores[best_room] < 0.6:
        raise ValueError(f"no room like {room!r}; rooms: {', '.join(sorted(CATALOG.rooms))}")
    type_scores = {
        kind: max(similarity(device_type, word) for word in words) for kind, words in DEVICE_WORDS.items()
    }
    best_type = max(type_scores, key=type_scores.get)
    if type_scores[best_type] < 0.6:
        raise ValueError(f"unknown device type {device_type!r}; types: {', '.join(DEVICE_WORDS)}")
    found = [d for d in CATALOG.devices if d.room == best_room and d.device_type == best_type]
    if not found:
        present = sorted(d.device_type for d in CATALOG.devices if d.room == best_room)
        raise ValueError(f"no {best_type} in {best_room}; it has: {', '.join(present)}")
    return [{"device_id": d.device_id, "room": d.room, "type": d.device_type} for d in found]


def find_city(name: str) -> dict:
    """Resolve a city name or nickname to the weather service's canonical city name.

    Args:
        name: the city as the user said it, e.g. "nyc" or "san fransisco".
    """
    scores = {
        city: max(similarity(name, alias) for alias in aliases) for city, (aliases, _) in CATALOG.cities.items()
    }
    city = max(scores, key=scores.get)
    if scores[city] < 0.6:
        raise ValueError(f"unknown city {name!r}")
    return {"city": city, "score": round(scores[city], 3)}


def resolve_datetime(expression: str, now: str) -> dict:
    """Resolve a spoken day/time to ISO 8601, relative to the current local time.

    Args:
        expression: the time words, e.g. "tomorrow at 7am", "on friday", "in 2 hours".
        now: the current local time, ISO 8601 (from the request context).
    """
    return timeexpr.resolve(expression, datetime.fromisoformat(now))


def resolve_duration(expression: str) -> dict:
    """Resolve a spoken duration to ISO 8601, e.g. "an hour and a half" -> "PT1H30M".

    Args:
        expression: the duration words, e.g. "20 minutes".
    """
    return {"duration": timeexpr.iso_duration(timeexpr.parse_duration_seconds(expression))}


LOOKUP_FUNCTIONS = [search_music, find_device, find_city, resolve_datetime, resolve_duration]

# ---- actions: calling one ends the task -----------------------------------------------------


def play_music(song: str | None = None, artist: str | None = None, playlist: str | None = None) -> str:
    """Start playing music: a song, an artist, or a playlist.

    Args:
        song: canonical song title, from search_music.
        artist: canonical artist name, from search_music.
        playlist: canonical playlist name, from search_music.
    """
    return f"playing {song or playlist or artist}"


def add_to_playlist(song: str, playlist: str, artist: str | None = None) -> str:
    """Add a song to one of the user's playlists.

    Args:
        song: canonical song title, from search_music.
        playlist: canonical playlist name, from search_music.
        artist: canonical artist name, only when the user named one.
    """
    return f"added {song} to {playlist}"


def set_alarm(time: str) -> str:
    """Set an alarm.

    Args:
        time: local date and time, ISO 8601 "YYYY-MM-DDTHH:MM", from resolve_datetime.
    """
    return f"alarm set for {time}"


def set_timer(duration: str) -> str:
    """Start a countdown timer.

    Args:
        duration: ISO 8601 duration such as "PT20M", from resolve_duration.
    """
    return f"timer set for {duration}"


def control_device(device_id: str, action: Literal["on", "off", "set"], value: int | None = None) -> str:
    """Turn a device on or off, or set its level.

    Args:
        device_id: the device id from find_device, e.g. "light.kitchen".
        action: "on", "off", or "set" (with value).
        value: for "set": percent (lights, blinds, speakers) or degrees Celsius (heaters, thermostats).
    """
    return f"{device_id} {action} {value if value is not None else ''}".strip()


def get_weather(city: str, date: str) -> str:
    """Get the weather forecast for a city on a date.

    Args:
        city: canonical city name, from find_city.
        date: ISO 8601 date "YYYY-MM-DD", from resolve_datetime.
    """
    return f"forecast for {city} on {date}"


ACTION_FUNCTIONS = [play_music, add_to_playlist, set_alarm, set_timer, control_device, get_weather]
