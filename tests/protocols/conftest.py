"""Fixtures shared by the protocol tests."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest


@pytest.fixture
def no_gc() -> Iterator[None]:
    """The cyclic collector off for the test (and for a server it runs in a thread):
    an object that needs it stays alive."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
