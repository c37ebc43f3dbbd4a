"""Shared instances for the selection-scheme tests: random laws plus the edge cases."""

from __future__ import annotations

import pytest
from _spec_reference import instances


@pytest.fixture(scope="session")
def laws4():
    return instances(4, 4, seed=0)


@pytest.fixture(scope="session")
def laws5():
    return instances(5, 4, seed=1)
