"""PostgreSQL schema history. `{schema}` is replaced by the quoted schema name.

Ids are COLLATE "C" so ties order by code point exactly as on SQLite and Redis,
whatever the database's default collation.
"""

from __future__ import annotations

from . import Migration, check_sequence

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "turns, summaries, facts; idempotency primary key",
        (
            """CREATE TABLE {schema}.turns (
                user_id text COLLATE "C" NOT NULL,
                idem_key text COLLATE "C" NOT NULL,
                conversation_id text COLLATE "C" NOT NULL,
                seq bigint NOT NULL,
                role text NOT NULL,
                text text NOT NULL,
                created_at timestamptz NOT NULL,
                source text NOT NULL,
                agent_id text,
                item_id text,
                PRIMARY KEY (user_id, idem_key)
            )""",
            """CREATE TABLE {schema}.summaries (
                user_id text COLLATE "C" PRIMARY KEY,
                text text NOT NULL,
                covers_until timestamptz NOT NULL,
                turn_count bigint NOT NULL,
                created_at timestamptz NOT NULL,
                method text NOT NULL
            )""",
            """CREATE TABLE {schema}.facts (
                user_id text COLLATE "C" NOT NULL,
                key text COLLATE "C" NOT NULL,
                text text NOT NULL,
                created_at timestamptz NOT NULL,
                PRIMARY KEY (user_id, key)
            )""",
        ),
    ),
    Migration(
        2,
        "turns.interrupted; spoken-order index for latest-N; created_at index for purge",
        (
            "ALTER TABLE {schema}.turns ADD COLUMN interrupted boolean NOT NULL DEFAULT false",
            # latest-N of a user = one forward scan of this index, no sort.
            # Plain CREATE INDEX (migrations run in a transaction): on a large
            # existing table run it by hand CONCURRENTLY first, IF NOT EXISTS skips it.
            """CREATE INDEX IF NOT EXISTS turns_latest ON {schema}.turns
                (user_id, created_at DESC, conversation_id DESC, seq DESC, idem_key DESC)""",
            "CREATE INDEX IF NOT EXISTS turns_created_at ON {schema}.turns (created_at)",
        ),
    ),
)

check_sequence(MIGRATIONS)

LATEST = MIGRATIONS[-1].version
