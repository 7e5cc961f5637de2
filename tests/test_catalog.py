"""The edge's cached view of the registry, against a real registry server."""

from __future__ import annotations

import pytest

from edge.catalog import Catalog
from services.common.errors import NotFound
from services.common.records import ServingRecord
from services.common.registry_client import RegistryClient
from services.registry.defaults import DEFAULT_CHAT_MODEL


async def test_a_serving_created_after_the_last_fetch_is_found_at_once(registry_server):
    registry = RegistryClient(registry_server)
    # A TTL far longer than the test: only a miss can make the catalog fetch again.
    catalog = Catalog(registry, ttl_s=3600)
    await catalog.models()
    created = await registry.create_serving(
        ServingRecord(id=0, name="catalog-fresh", model=DEFAULT_CHAT_MODEL)
    )
    try:
        assert (await catalog.serving(created.id)).name == "catalog-fresh"
        with pytest.raises(NotFound, match="does not exist"):
            await catalog.serving(created.id + 10_000)
    finally:
        await registry.delete_serving(created.id)
