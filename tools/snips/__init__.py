"""The ``snips`` domain: the seven intents of the SNIPS NLU benchmark as function calls.

Each intent is an action function (``PlayMusic``, ``GetWeather``, ...) whose arguments are the
intent's slots, so an utterance's gold annotation is a gold call: ``"play Adele on Spotify"`` ->
``PlayMusic(artist="Adele", service="Spotify")``. There are no lookup tools: understanding the
request is the whole task, which makes it a clean benchmark for the student. ``tasks.load_tasks``
reads the benchmark's files (``supertiny tasks import DIR --domain snips``); supertiny ships no
SNIPS data.
"""
