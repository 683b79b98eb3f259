"""The ``units`` domain: multi-step arithmetic and unit-conversion word problems.

The teacher reads a problem ("3 laps of 400 m and then 2.5 km more: how far in miles?"),
does every computation with the ``calculate`` and ``convert`` tools, and ends with one
``submit_answer(value, unit)`` call. Answers are judged by :func:`functions.compare_answers`
(numeric tolerance, unit aliases) and :func:`functions.check_answer` (no gold needed).
"""
