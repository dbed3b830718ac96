"""Coverage-guided fuzzing (atheris) of every entry point that reads untrusted bytes.

:mod:`~tests.fuzz.targets` holds one target per entry point (the contract it checks),
:mod:`~tests.fuzz.seeds` their seed corpora, :mod:`~tests.fuzz.runner` runs a target under
libFuzzer in a subprocess and parses what it reports. ``benchmarks/fuzz.py`` runs them for minutes,
``test_fuzz_smoke.py`` for seconds, ``test_fuzz_regressions.py`` replays every input a run ever
found (``tests/fixtures/fuzz/``).
"""
