"""Fixtures of the training tests: ``postgres``, one real PostgreSQL server for the whole session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.training.postgres import Server


@pytest.fixture(scope="session")
def postgres() -> Iterator[Server]:
    """A PostgreSQL server on a free loopback port in a temporary folder (tests/training/postgres.py), started
    once; stopped and removed at the end. A server that cannot be started fails the tests that ask for it."""
    server = Server()
    yield server
    server.close()
