"""Seeded task generator for the home domain.

Each task is an utterance, its context (the local "now"), and the gold call with canonical
arguments. The generator picks the true values first (a song, a room, a datetime) and then
renders them as text with varied phrasing, casing, fillers and typos.

Splits: train and dev use the ``TRAIN`` phrasings; test uses only ``TEST`` phrasings, never
seen in train. A marked slice of test (``slice="novel"``) uses catalog entries held out of
train and dev; the rest of test is ``slice="seen"``.
"""
from __future__ import annotations

import random
from datetime import datetime, timedelta

from tools.home.catalog import CATALOG, DEVICE_WORDS, SETTABLE
from tools.home.timeexpr import WEEKDAYS, iso_duration
from tools.registry import Task

# intent -> {"train": [...], "test": [...]} phrasings. Slots: {song} {artist} {playlist}
# {room} {device} {city} {when} {duration} {date} {value} {onoff}
TEMPLATES: dict[str, dict[str, list[str]]] = {
    "play_song": {
        "train": ["play {song} by {artist}", "put on {song} by {artist}", "i want to hear {song} by {artist}",
                  "play the song {song}", "play {song}", "can you play {song} by {artist}", "i wanna hear {song}",
                  "let me hear {song} by {artist}", "play the track {song} from {artist}", "start playing {song}"],
        "test": ["can you queue up {song} by {artist}", "blast {song} from {artist}", "i'm in the mood for {song}"],
    },
    "play_artist": {
        "train": ["play some {artist}", "play music by {artist}", "play {artist}", "put on some {artist}",
                  "i want to listen to {artist}", "play songs by {artist}", "can you play some {artist}",
                  "something by {artist} please"],
        "test": ["let's listen to some {artist}", "i feel like hearing {artist}"],
    },
    "play_playlist": {
        "train": ["play my {playlist} playlist", "start the {playlist} playlist", "put on my {playlist} playlist",
                  "play the {playlist} playlist", "can you start my {playlist} playlist", "play playlist {playlist}",
                  "put the {playlist} playlist on"],
        "test": ["shuffle the {playlist} playlist", "throw on my {playlist} playlist"],
    },
    "add_to_playlist": {
        "train": ["add {song} to my {playlist} playlist", "add {song} by {artist} to {playlist}",
                  "put {song} on my {playlist} playlist", "add the song {song} to the {playlist} playlist",
                  "add {song} to {playlist}", "can you add {song} by {artist} to my {playlist} playlist",
                  "please put {song} into the {playlist} playlist"],
        "test": ["save {song} to {playlist}", "stick {song} by {artist} in my {playlist} playlist",
                 "include {song} in the {playlist} playlist"],
    },
    "set_alarm": {
        "train": ["set an alarm {when}", "wake me up {when}", "set alarm {when}", "i need an alarm {when}",
                  "alarm {when}", "please set an alarm {when}", "can you wake me {when}", "set my alarm {when}"],
        "test": ["please get me up {when}", "create an alarm {when}", "make sure i'm awake {when}"],
    },
    "set_timer": {
        "train": ["set a timer for {duration}", "start a timer for {duration}", "timer for {duration}",
                  "countdown {duration}", "can you set a timer for {duration}", "i need a timer for {duration}",
                  "timer {duration}", "countdown for {duration} please"],
        "test": ["begin a timer of {duration}", "can you time {duration} for me", "{duration} timer please"],
    },
    "device_onoff": {
        "train": ["turn {onoff} the {room} {device}", "switch {onoff} the {device} in the {room}",
                  "turn the {room} {device} {onoff}", "turn {onoff} {room} {device}", "switch the {room} {device} {onoff}",
                  "can you turn {onoff} the {device} in the {room}", "please switch {onoff} the {room} {device}",
                  "{device} in the {room} {onoff}"],
        "test": ["could you power {onoff} the {device} in the {room}", "{room} {device} {onoff}"],
    },
    "device_set": {
        "train": ["set the {room} {device} to {value}", "set the {device} in the {room} to {value}",
                  "change the {room} {device} to {value}", "put the {room} {device} at {value}",
                  "can you set the {device} in the {room} to {value}", "make the {room} {device} {value}"],
        "test": ["adjust the {room} {device} to {value}", "i'd like the {device} in the {room} at {value}"],
    },
    "get_weather": {
        "train": ["what's the weather in {city} {date}", "weather {date} in {city}",
                  "will it rain in {city} {date}", "weather forecast for {city} {date}",
                  "what's the forecast for {city} {date}", "how's the weather in {city} {date}",
                  "weather in {city} {date}", "will it be cold in {city} {date}", "check the weather for {city} {date}"],
        "test": ["do i need an umbrella in {city} {date}", "is it going to be sunny in {city} {date}",
                 "tell me the forecast for {city} {date}"],
    },
}
NOVEL_INTENTS = ["play_song", "play_artist", "play_playlist", "add_to_playlist", "device_onoff",
                 "device_set", "get_weather"]
FILLER_PREFIXES = ["", "", "", "hey, ", "please ", "hey assistant ", "ok ", "could you "]
FILLER_SUFFIXES = ["", "", "", " please", " thanks", " now"]


def _typo(word: str, rng: random.Random) -> str:
    """One realistic keyboard slip: swap, drop or double a letter inside the word."""
    if len(word) < 5:
        return word
    i = rng.randrange(1, len(word) - 2)
    kind = rng.choice(["swap", "drop", "double"])
    if kind == "swap":
        return word[:i] + word[i + 1] + word[i] + word[i + 2:]
    if kind == "drop":
        return word[:i] + word[i + 1:]
    return word[:i] + word[i] + word[i:]


def _speak(name: str, rng: random.Random, typo_rate: float) -> str:
    """A catalog name as a person types it: lower case, sometimes with a typo in one word."""
    words = name.lower().split()
    if rng.random() < typo_rate:
        longest = max(range(len(words)), key=lambda i: len(words[i]))
        words[longest] = _typo(words[longest], rng)
    return " ".join(words)


def _clock_text(hour: int, minute: int, rng: random.Random) -> str:
    if hour == 12 and minute == 0 and rng.random() < 0.5:
        return "noon"
    if rng.random() < 0.2:
        return f"{hour:02d}:{minute:02d}"
    meridiem = "am" if hour < 12 else "pm"
    h12 = hour % 12 or 12
    clock = f"{h12}" if minute == 0 else f"{h12}:{minute:02d}"
    return clock + rng.choice([meridiem, " " + meridiem])


def _render_alarm(now: datetime, rng: random.Random) -> tuple[str, str]:
    """Pick an alarm time after ``now`` and say it; returns (phrase, ISO datetime)."""
    style = rng.choice(["clock", "tomorrow", "weekday", "relative"])
    if style == "relative":
        amount, unit = rng.choice([(1, "hour"), (2, "hours"), (3, "hours"), (30, "minutes"), (45, "minutes"), (90, "minutes")])
        target = now + (timedelta(hours=amount) if unit.startswith("hour") else timedelta(minutes=amount))
        return f"in {amount} {unit}", target.strftime("%Y-%m-%dT%H:%M")
    hour, minute = rng.randint(5, 22), rng.choice([0, 0, 15, 30, 45, 10, 20])
    clock = _clock_text(hour, minute, rng)
    if style == "clock":
        target = now.replace(hour=hour, minute=minute)
        if target <= now:
            target += timedelta(days=1)
        return f"at {clock}", target.strftime("%Y-%m-%dT%H:%M")
    if style == "tomorrow":
        target = (now + timedelta(days=1)).replace(hour=hour, minute=minute)
        return f"tomorrow at {clock}", target.strftime("%Y-%m-%dT%H:%M")
    ahead = rng.randint(2, 6)  # never today's weekday: "on saturday" on a saturday is ambiguous
    target = (now + timedelta(days=ahead)).replace(hour=hour, minute=minute)
    return f"on {WEEKDAYS[target.weekday()]} at {clock}", target.strftime("%Y-%m-%dT%H:%M")


def _render_duration(rng: random.Random) -> tuple[str, str]:
    seconds, phrases = rng.choice([
        (60, ["1 minute", "one minute", "a minute"]), (300, ["5 minutes", "five minutes"]),
        (600, ["10 minutes", "ten minutes"]), (900, ["15 minutes", "fifteen minutes"]),
        (1200, ["20 minutes", "twenty minutes"]), (1500, ["25 minutes"]), (1800, ["30 minutes", "half an hour"]),
        (2700, ["45 minutes", "forty five minutes"]), (3600, ["1 hour", "an hour", "one hour"]),
        (5400, ["an hour and a half", "1 hour 30 minutes", "90 minutes"]), (7200, ["2 hours", "two hours"]),
        (90, ["90 seconds"]), (30, ["30 seconds", "thirty seconds"]), (480, ["8 minutes"]),
        (720, ["12 minutes"]), (2400, ["40 minutes"]), (4500, ["1 hour 15 minutes"]),
    ])
    return rng.choice(phrases), iso_duration(seconds)


def _render_date(now: datetime, rng: random.Random) -> tuple[str, str]:
    style = rng.choice(["today", "tomorrow", "weekday", "none", "in_days", "after_tomorrow"])
    if style in ("today", "none"):
        return ("today" if style == "today" else ""), now.date().isoformat()
    if style == "tomorrow":
        return "tomorrow", (now + timedelta(days=1)).date().isoformat()
    if style == "after_tomorrow":
        return "the day after tomorrow", (now + timedelta(days=2)).date().isoformat()
    if style == "in_days":
        days = rng.randint(2, 5)
        return f"in {days} days", (now + timedelta(days=days)).date().isoformat()
    target = now + timedelta(days=rng.randint(1, 6))
    return f"on {WEEKDAYS[target.weekday()]}", target.date().isoformat()


def _one_task(intent: str, template: str, now: datetime, novel: bool, rng: random.Random, typo_rate: float):
    """Fill one template: returns (utterance, gold call)."""
    songs = [s for s in CATALOG.songs if s.holdout == novel]
    artists = [a for a, held in CATALOG.artists.items() if held == novel]
    playlists = [p for p, held in CATALOG.playlists.items() if held == novel]
    slots: dict[str, str] = {}
    if intent == "play_song":
        song = rng.choice(songs)
        slots = {"song": _speak(song.title, rng, typo_rate), "artist": _speak(song.artist, rng, typo_rate)}
        args = {"song": song.title, "artist": song.artist if "{artist}" in template else None}
        name = "play_music"
    elif intent == "play_artist":
        artist = rng.choice(artists)
        slots, args, name = {"artist": _speak(artist, rng, typo_rate)}, {"artist": artist}, "play_music"
    elif intent == "play_playlist":
        playlist = rng.choice(playlists)
        slots, args, name = {"playlist": _speak(playlist, rng, typo_rate)}, {"playlist": playlist}, "play_music"
    elif intent == "add_to_playlist":
        # in the novel slice one of song/playlist is new, so the slice tests every lookup
        song = rng.choice(songs if not novel or rng.random() < 0.5 else [s for s in CATALOG.songs if s.holdout])
        playlist = rng.choice(playlists)
        slots = {"song": _speak(song.title, rng, typo_rate), "artist": _speak(song.artist, rng, typo_rate),
                 "playlist": _speak(playlist, rng, typo_rate)}
        args = {"song": song.title, "playlist": playlist, "artist": song.artist if "{artist}" in template else None}
        name = "add_to_playlist"
    elif intent == "set_alarm":
        phrase, iso = _render_alarm(now, rng)
        slots, args, name = {"when": phrase}, {"time": iso}, "set_alarm"
    elif intent == "set_timer":
        phrase, iso = _render_duration(rng)
        slots, args, name = {"duration": phrase}, {"duration": iso}, "set_timer"
    elif intent in ("device_onoff", "device_set"):
        devices = [d for d in CATALOG.devices if d.holdout == novel
                   and (intent == "device_onoff" or d.device_type in SETTABLE)]
        device = rng.choice(devices)
        aliases, _ = CATALOG.rooms[device.room]
        slots = {"room": _speak(rng.choice(aliases), rng, typo_rate), "device": rng.choice(DEVICE_WORDS[device.device_type])}
        if intent == "device_onoff":
            action = rng.choice(["on", "off"])
            slots["onoff"] = action
            args = {"device_id": device.device_id, "action": action, "value": None}
        else:
            unit, low, high = SETTABLE[device.device_type]
            value = rng.randrange(low, high + 1, 5 if unit == "percent" else 1)
            slots["value"] = rng.choice([f"{value}%", f"{value} percent"]) if unit == "percent" else f"{value} degrees"
            args = {"device_id": device.device_id, "action": "set", "value": value}
        name = "control_device"
    elif intent == "get_weather":
        city = rng.choice([c for c, (_, held) in CATALOG.cities.items() if held == novel])
        aliases, _ = CATALOG.cities[city]
        phrase, iso = _render_date(now, rng)
        slots = {"city": _speak(rng.choice(aliases), rng, typo_rate), "date": phrase}
        args, name = {"city": city, "date": iso}, "get_weather"
    else:  # pragma: no cover - TEMPLATES and this function are edited together
        raise ValueError(f"unknown intent {intent}")
    text = template.format(**slots)
    return " ".join(text.split()), {"name": name, "arguments": {k: v for k, v in args.items() if v is not None}}


def _surface(text: str, rng: random.Random) -> str:
    """Fillers and casing, the way people type into a voice assistant's text box."""
    already_polite = text.startswith(("could you", "can you", "please"))
    text = ("" if already_polite else rng.choice(FILLER_PREFIXES)) + text + rng.choice(FILLER_SUFFIXES)
    style = rng.random()
    if style < 0.55:
        return text
    if style < 0.85:
        return text[0].upper() + text[1:]
    if style < 0.95:
        return text.title()
    return text.upper()


def generate_tasks(
    seed: int = 0, n_train: int = 400, n_dev: int = 60, n_test: int = 120, novel_fraction: float = 0.3,
    typo_rate: float = 0.2,
) -> list[Task]:
    """All three splits, deterministic for a seed. Ids read ``home-s<seed>-<split>-<n>``."""
    tasks: list[Task] = []
    intents = list(TEMPLATES)
    for split, count in (("train", n_train), ("dev", n_dev), ("test", n_test)):
        # One generator per split: the test set must not change when --train grows.
        rng = random.Random(f"home-{seed}-{split}")
        for index in range(count):
            novel = split == "test" and index < round(count * novel_fraction)
            intent = rng.choice(NOVEL_INTENTS if novel else intents)
            template = rng.choice(TEMPLATES[intent]["test" if split == "test" else "train"])
            now = datetime(2026, 1, 1, 6, 0) + timedelta(days=rng.randrange(365), minutes=rng.randrange(16 * 60))
            text, gold = _one_task(intent, template, now, novel, rng, typo_rate)
            tasks.append(Task(
                id=f"home-s{seed}-{split}-{index:05d}",
                domain="home",
                split=split,
                input=_surface(text, rng),
                context={"now": now.strftime("%Y-%m-%dT%H:%M"), "weekday": now.strftime("%A")},
                gold=gold,
                slice=("novel" if novel else "seen") if split == "test" else None,
                meta={"intent": intent, "template": template},
            ))
    return tasks
