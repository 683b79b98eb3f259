"""``planner``: an offline chat model for the home domain that LangGraph drives like any LLM.

It stands in for the remote teacher when there is no endpoint: it reads the conversation
(the request in the user message, the tool results so far), emits tool calls, and finally the
action call. It never sees the gold answer. Like a real LLM it is imperfect: it understands
requests through a general vocabulary of command words, so phrasings outside it go wrong, and
with ``temperature > 0`` it samples (intents, search hits, whether to bother with a lookup)
so that best-of-N sampling has different candidates to choose from.

The chat-model plumbing (reading the conversation, sampling, token estimates) is
:class:`agent.offline.OfflinePlannerChatModel`'s.
"""
from __future__ import annotations

import random
import re
from typing import Any, ClassVar

from langchain_core.messages import AIMessage

from agent.offline import Conversation, OfflinePlannerChatModel
from tools.home.catalog import DEVICE_WORDS

FILLERS = ["hey assistant", "hey", "ok", "please", "could you", "can you", "thanks", "now", "for me"]
PLAY_WORDS = ["can you queue up", "queue up", "i want to hear", "i wanna hear", "let me hear", "let's listen to",
              "i want to listen to", "listen to", "start playing", "put on", "the track", "something",
              "throw on", "play", "start", "shuffle", "blast", "the song", "songs by", "music by", "some"]
ADD_WORDS = ["add", "save", "put", "stick", "include"]
ALARM_WORDS = ["set an alarm", "set alarm", "set", "an alarm", "alarm", "wake me up", "wake me",
               "i need", "create", "get me up"]
TIMER_WORDS = ["set a timer for", "start a timer for", "timer for", "set a timer", "timer", "countdown",
               "start", "set", "for"]
DEVICE_VOCAB = sorted({w for words in DEVICE_WORDS.values() for w in words}, key=len, reverse=True)
DATE_PHRASE = re.compile(r"\b(today|tomorrow|the day after tomorrow|on \w+day|this \w+day|in \d+ days?)\b")


def _clean(text: str) -> str:
    text = re.sub(r"[^\w\s:%'.]", " ", text.lower()).replace(" .", " ")
    words = " " + " ".join(text.split()) + " "
    for filler in FILLERS:
        words = re.sub(rf"^ {re.escape(filler)} | {re.escape(filler)} $", " ", words)
    return " ".join(words.split())


def _strip_words(text: str, words: list[str]) -> str:
    out = f" {text} "
    for word in words:
        out = out.replace(f" {word} ", " ")
    return " ".join(out.split())


def _split_last(text: str, separators: list[str]) -> tuple[str, str] | None:
    best = max(((text.rfind(f" {sep} "), sep) for sep in separators), key=lambda x: x[0])
    if best[0] < 0:
        return None
    return text[: best[0]], text[best[0] + len(best[1]) + 2:]


class HomePlannerChatModel(OfflinePlannerChatModel):
    """The offline planner of the home domain."""

    model_name: str = "planner"
    not_a_request_reply: ClassVar[str] = "I can only handle smart-home requests."

    @property
    def _llm_type(self) -> str:
        return "supertiny-home-planner"

    # -- understanding the request ---------------------------------------------------------

    def _intent(self, text: str, rng: random.Random) -> str:
        has = lambda *words: any(re.search(rf"\b{re.escape(w)}\b", text) for w in words)  # noqa: E731
        scores = {
            "set_timer": 3.0 * has("timer", "countdown"),
            "set_alarm": 3.0 * has("alarm", "wake", "awake", "get me up"),
            "get_weather": 3.0 * has("weather", "forecast") + 2.0 * has("rain", "umbrella", "sunny", "snow", "cold", "warm"),
            "add_to_playlist": 3.0 * has(*ADD_WORDS) * has("to", "in", "on", "into") * (not text.startswith("put on")),
            "control_device": 2.0 * has(*DEVICE_VOCAB) + 1.0 * has("turn", "switch", "power", "dim", "set", "adjust"),
            "play_music": 2.0 * has("play", "listen", "hear", "queue", "shuffle", "blast", "playlist") + 0.5,
        }
        return self._choose(rng, [(intent, score * 2) for intent, score in scores.items()])

    def _plan(self, request: str, now: str, seed: int) -> dict[str, Any]:
        """Intent, the lookups to make ``{slot: (tool, args)}``, and values read directly."""
        rng = self._rng(seed, request, "plan")
        text = _clean(request)
        intent = self._intent(text, rng)
        lookups: dict[str, tuple[str, dict[str, Any]]] = {}
        direct: dict[str, Any] = {}
        if intent == "play_music":
            rest = _strip_words(text, PLAY_WORDS)
            if "playlist" in rest.split():
                name = _strip_words(rest.split(" playlist")[0], ["my", "the"])
                lookups["playlist"] = ("search_music", {"query": name, "kind": "playlist"})
            elif (parts := _split_last(rest, ["by", "from"])) is not None:
                lookups["song"] = ("search_music", {"query": parts[0], "kind": "song"})
                lookups["artist"] = ("search_music", {"query": parts[1], "kind": "artist"})
            else:
                lookups["any"] = ("search_music", {"query": rest, "kind": "any"})
        elif intent == "add_to_playlist":
            rest = _strip_words(text, ADD_WORDS + ["the song", "my", "the", "playlist"])
            parts = _split_last(rest, ["to", "into", "in", "on"]) or (rest, rest)
            song_part = parts[0]
            if (by := _split_last(song_part, ["by"])) is not None:
                song_part = by[0]
                lookups["artist"] = ("search_music", {"query": by[1], "kind": "artist"})
            lookups["song"] = ("search_music", {"query": song_part, "kind": "song"})
            lookups["playlist"] = ("search_music", {"query": parts[1], "kind": "playlist"})
        elif intent == "set_alarm":
            lookups["time"] = ("resolve_datetime", {"expression": _strip_words(text, ALARM_WORDS), "now": now})
        elif intent == "set_timer":
            lookups["duration"] = ("resolve_duration", {"expression": _strip_words(text, TIMER_WORDS)})
        elif intent == "control_device":
            value = re.search(r"\b(\d+)\s*(%|percent|degrees)", text)
            words = set(text.split())
            if value:
                direct["action"], direct["value"] = "set", int(value.group(1))
                text = text[: value.start()]
            else:
                direct["action"] = "off" if words & {"off", "kill", "shut"} else "on"
            device = next((w for w in DEVICE_VOCAB if re.search(rf"\b{re.escape(w)}\b", text)), "light")
            room = _strip_words(text.replace(device, " "), [
                "turn", "switch", "power", "set", "dim", "adjust", "could you", "i'd like", "on", "off",
                "the", "in", "to", "at", "my", "of"])
            lookups["device_id"] = ("find_device", {"room": room, "device_type": device})
        elif intent == "get_weather":
            date = DATE_PHRASE.search(text)
            body = text.replace(date.group(0), " ") if date else text
            city = re.search(r"\b(?:in|for|at)\s+([a-z' ]+?)\s*$", " ".join(body.split()))
            lookups["city"] = ("find_city", {"name": city.group(1) if city else body.split()[-1]})
            lookups["date"] = ("resolve_datetime", {"expression": date.group(0) if date else "today", "now": now})
        # A sampled shortcut, like an LLM that does not bother to look a name up.
        for slot in list(lookups):
            if self.temperature > 0 and rng.random() < 0.12 * self.temperature:
                direct[slot] = self._surface_value(*lookups.pop(slot))
        return {"intent": intent, "lookups": lookups, "direct": direct}

    @staticmethod
    def _surface_value(tool: str, args: dict[str, Any]) -> Any:
        """What a lazy model writes without a lookup: the user's words, title-cased."""
        if tool == "find_device":
            return f"{args['device_type'].rstrip('s')}.{args['room'].replace(' ', '_')}"
        if tool in ("resolve_datetime", "resolve_duration"):
            return args["expression"]
        return (args.get("query") or args.get("name") or "").title()

    # -- the conversation ------------------------------------------------------------------

    def _respond(self, conversation: Conversation) -> AIMessage:
        request, results, seed = conversation.request, conversation.results, conversation.seed
        now_match = re.search(r"now=(\S+)", conversation.user_message)
        plan = self._plan(request, now_match.group(1) if now_match else "", seed)
        missing = {slot: spec for slot, spec in plan["lookups"].items() if slot not in results}
        if missing:
            calls = [self.tool_call(slot, tool, args) for slot, (tool, args) in missing.items()]
            return AIMessage(content="", tool_calls=calls)
        name, args = self._final_call(plan, results, self._rng(seed, request, "final"))
        return AIMessage(content="", tool_calls=[self.tool_call("final", name, args)])

    def _final_call(self, plan: dict, results: dict, rng: random.Random) -> tuple[str, dict[str, Any]]:
        intent, direct = plan["intent"], dict(plan["direct"])

        def value(slot: str, pick) -> Any:
            if slot in direct:
                return direct[slot]
            status, result = results.get(slot, ("error", None))
            chosen = pick(result) if status == "ok" and result else None
            return chosen if chosen is not None else self._surface_value(*plan["lookups"][slot])

        def best_hit(kind: str):
            def pick(hits):
                hits = [h for h in hits if h.get("kind") == kind]
                return self._choose(rng, [(h["name"], 10 * h["score"]) for h in hits]) if hits else None
            return pick

        if intent == "play_music":
            args: dict[str, Any] = {}
            if "any" in plan["lookups"] or "any" in direct:
                status, hits = results.get("any", ("error", None))
                hit = hits[0] if status == "ok" and hits else None
                if hit is None:
                    args["artist"] = value("any", lambda r: None)
                else:
                    args["song" if hit["kind"] == "song" else hit["kind"]] = hit["name"]
            for slot in ("song", "artist", "playlist"):
                if slot in plan["lookups"] or slot in direct:
                    args[slot] = value(slot, best_hit(slot))
            return "play_music", args
        if intent == "add_to_playlist":
            args = {"song": value("song", best_hit("song")), "playlist": value("playlist", best_hit("playlist"))}
            if "artist" in plan["lookups"] or "artist" in direct:
                args["artist"] = value("artist", best_hit("artist"))
            return "add_to_playlist", args
        if intent == "set_alarm":
            return "set_alarm", {"time": value("time", lambda r: r.get("datetime"))}
        if intent == "set_timer":
            return "set_timer", {"duration": value("duration", lambda r: r.get("duration"))}
        if intent == "control_device":
            args = {"device_id": value("device_id", lambda r: r[0]["device_id"]), "action": direct["action"]}
            if "value" in direct:
                args["value"] = direct["value"]
            return "control_device", args
        return "get_weather", {"city": value("city", lambda r: r.get("city")), "date": value("date", lambda r: r.get("date"))}
