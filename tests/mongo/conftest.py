"""MongoDB for the tests: the server `AAS_TEST_MONGO_URL` names (a real mongod, e.g. from
docker-compose.yml), or else mongoeco's wire-protocol server started here on a free loopback port
and stopped after the run. When neither is possible the MongoDB tests are reported NOT RUN."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from pymongo import MongoClient

from tests.conftest import NOT_RUN

from ._server import MongoecoServer, mongoeco_python

DB_NAME = "aas_test"


@dataclass(frozen=True)
class MongoTarget:
    url: str
    real: bool  # a server named by AAS_TEST_MONGO_URL rather than mongoeco started here
    python: str | None  # the interpreter that has mongoeco, when there is one


@pytest.fixture(scope="session")
def mongo() -> Iterator[MongoTarget]:
    python, why_not = mongoeco_python()
    url = os.environ.get("AAS_TEST_MONGO_URL")
    if url:
        yield MongoTarget(url, True, python)
        return
    if python is None:
        NOT_RUN["mongo"] = why_not
        pytest.skip(why_not)
    server = MongoecoServer(python)
    try:
        server.start()
    except Exception as exc:
        NOT_RUN["mongo"] = f"the mongoeco server did not start: {exc}"
        raise
    try:
        yield MongoTarget(server.url, False, python)
    finally:
        server.stop()


@pytest.fixture(scope="session")
def admin(mongo: MongoTarget) -> Iterator[MongoClient[dict[str, object]]]:
    """A plain (synchronous) client for set-up and clean-up."""
    client: MongoClient[dict[str, object]] = MongoClient(mongo.url, serverSelectionTimeoutMS=5000)
    yield client
    client.close()


@pytest.fixture
def collection_name(admin: MongoClient[dict[str, object]]) -> Iterator[str]:
    """A collection name no other test uses; its collections are dropped after the test."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    yield name
    database = admin[DB_NAME]
    for suffix in ("_runs", "", "_migrations", "_leases"):
        database.drop_collection(name + suffix)


def cleanup(name: str) -> Callable[[MongoClient[dict[str, object]]], None]:
    def drop(admin: MongoClient[dict[str, object]]) -> None:
        for suffix in ("_runs", "", "_migrations", "_leases"):
            admin[DB_NAME].drop_collection(name + suffix)

    return drop
