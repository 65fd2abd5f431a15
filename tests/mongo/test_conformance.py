"""The conformance suite on MongoDB, through PyMongo's async client and through a Motor client."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from motor.motor_asyncio import AsyncIOMotorClient

from async_agent_storage.mongo import MongoStore
from async_agent_storage.testing import SessionStoreConformance, StoreFactory

from ..privacy import RING
from .conftest import DB_NAME, MongoTarget

pytestmark = pytest.mark.mongo


def _pymongo_factory(mongo: MongoTarget, collection_name: str, **defaults: Any) -> StoreFactory:
    def factory(**options: Any) -> MongoStore:
        return MongoStore(
            collection_name,
            db_url=mongo.url,
            db_name=DB_NAME,
            server_selection_timeout=5,
            **{**defaults, **options},
        )

    return factory


class TestMongoPyMongo(SessionStoreConformance):
    @pytest.fixture
    def store_factory(self, mongo: MongoTarget, collection_name: str) -> StoreFactory:
        return _pymongo_factory(mongo, collection_name)


class TestMongoMotor(SessionStoreConformance):
    @pytest.fixture
    def store_factory(self, mongo: MongoTarget, collection_name: str) -> Iterator[StoreFactory]:
        clients: list[Any] = []

        def factory(**options: Any) -> MongoStore:
            client: Any = AsyncIOMotorClient(mongo.url, serverSelectionTimeoutMS=5000)
            clients.append(client)
            return MongoStore(collection_name, client=client, db_name=DB_NAME, **options)

        yield factory
        for client in clients:
            client.close()


class TestMongoSealed(SessionStoreConformance):
    """Every rule holds on a store that encrypts what it writes."""

    @pytest.fixture
    def store_factory(self, mongo: MongoTarget, collection_name: str) -> StoreFactory:
        return _pymongo_factory(mongo, collection_name, encryption=RING)
