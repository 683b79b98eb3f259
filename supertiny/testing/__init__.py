"""Test and bench helpers that ship with supertiny (no test framework needed to import them)."""
from supertiny.testing.openai_server import ScriptedOpenAIServer, ScriptError, count_tokens, prompt_tokens

__all__ = ["ScriptedOpenAIServer", "ScriptError", "count_tokens", "prompt_tokens"]
