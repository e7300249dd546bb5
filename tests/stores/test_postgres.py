"""PostgreSQL-specific behaviour: query plans and connection failures."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from livekit_history_plugin.history.stores import StoreUnavailableError, open_store
from livekit_history_plugin.history.stores.postgres import PostgresStore

from .helpers import T0, PostgresBackend, free_port


async def test_latest_n_is_an_index_scan_without_sort(pg_backend: PostgresBackend) -> None:
    b = pg_backend
    async with b.store() as store:
        assert isinstance(store, PostgresStore)
        sql = store._sql  # the exact statements the store runs

    rows = [
        (
            f"user-{u}",
            f"c{u}:{i}",
            f"c{u}",
            i,
            "user",
            "some text",
            T0 + timedelta(seconds=i),
            "voice",
            False,
        )
        for u in range(200)
        for i in range(100)
    ]

    async def load_and_explain(conn: Any) -> list[str]:
        await conn.copy_records_to_table(
            "turns",
            schema_name=b.schema,
            records=rows,
            columns=[
                "user_id",
                "idem_key",
                "conversation_id",
                "seq",
                "role",
                "text",
                "created_at",
                "source",
                "interrupted",
            ],
        )
        await conn.execute(f'ANALYZE "{b.schema}".turns')
        plans = []
        for query, args in (
            (sql.latest, ("user-7", 20)),
            (sql.latest_before, ("user-7", T0 + timedelta(seconds=50), 20)),
        ):
            plan = await conn.fetch(f"EXPLAIN {query}", *args)
            plans.append("\n".join(r[0] for r in plan))
        return plans

    for plan in await b.run(load_and_explain):
        assert "Index Scan using turns_latest" in plan, plan
        assert "Sort" not in plan, plan
        assert "Seq Scan" not in plan, plan


async def test_unreachable_server_is_store_unavailable() -> None:
    store = open_store(f"postgresql://postgres@127.0.0.1:{free_port()}/test")
    with pytest.raises(StoreUnavailableError, match=r"127\.0\.0\.1:\d+.*open failed"):
        await store.open()


async def test_password_never_appears_in_url_or_errors() -> None:
    store = open_store(f"postgresql://app:s3cret@127.0.0.1:{free_port()}/test?schema=x")
    assert "s3cret" not in store.url and "***" in store.url
    with pytest.raises(StoreUnavailableError) as err:
        await store.open()
    assert "s3cret" not in str(err.value)
