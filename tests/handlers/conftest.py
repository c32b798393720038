"""Fixtures for the bundled handler tests."""

import pytest

from handler_harness import HandlerProcess


@pytest.fixture
def spawn():
    started = []

    def start(script, env=None):
        handler = HandlerProcess(script, env)
        started.append(handler)
        return handler

    yield start
    for handler in started:
        handler.kill()
