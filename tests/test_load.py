"""The load test's short form for CI: 8 concurrent sessions for ~40 s against `python app.py` on
127.0.0.1 (tests/load_test.py; run it as a script for the long form). Asserts errors 0, every
completed text equal to the engine's, the long request ended by the time limit, RSS within a bound."""
import pytest

from specviz import models

from load_test import TARGET, check, main

pytestmark = pytest.mark.skipif(models.status(TARGET) != "ready", reason=f"{TARGET} is not installed")


def test_load_eight_sessions():
    report = main(sessions=8, seconds=40)
    print(report)
    check(report)
