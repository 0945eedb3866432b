"""One embedded stack (`billing up`) per test session; tests that restart it make their own."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from pipeline.ingest.broker import EmbeddedBroker
from pipeline.settings import Settings
from pipeline.store.chclient import connect, migrate
from tests.integration.stack import Stack


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # worker ticks off: settlements then follow the records alone, as the oracle computes them
    running = Stack(tmp_path_factory.mktemp("stack"), env={"BILLING_AUTO_TICK": "0"}).start()
    yield running
    running.stop()


@pytest.fixture
def fresh_dir(tmp_path: Path) -> Path:
    return tmp_path / "billing"


@pytest.fixture(scope="session")
def inprocess_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tests that run workers inside the test process share one embedded ClickHouse: chdb opens
    one data directory per process. They keep apart by their accounts and consumer groups."""
    return tmp_path_factory.mktemp("inprocess")


@pytest.fixture
def client(inprocess_dir: Path):
    """The shared embedded ClickHouse, migrated."""
    client = connect(Settings(data_dir=inprocess_dir).clickhouse_url)
    migrate(client)
    return client


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[str]:
    """A broker of the test's own (its topics, groups and offsets start empty)."""
    with EmbeddedBroker(tmp_path / "broker.log") as running:
        yield running.bootstrap
