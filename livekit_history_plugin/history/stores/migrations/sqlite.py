"""SQLite schema history.

Times are INTEGER microseconds since the Unix epoch (UTC): exact, sortable and
cheap to compare. Tables are STRICT so a column can never hold the wrong type.
"""

from __future__ import annotations

from . import Migration, check_sequence

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "turns, summaries, facts; idempotency index",
        (
            """CREATE TABLE turns (
                id INTEGER PRIMARY KEY,
                user_id TEXT NOT NULL,
                conversation_id TEXT NOT NULL,
                seq INTEGER NOT NULL,
                idem_key TEXT NOT NULL,
                role TEXT NOT NULL,
                text TEXT NOT NULL,
                created_at INTEGER NOT NULL,
                source TEXT NOT NULL,
                agent_id TEXT,
                item_id TEXT
            ) STRICT""",
            "CREATE UNIQUE INDEX turns_idem ON turns (user_id, idem_key)",
            """CREATE TABLE summaries (
                user_id TEXT PRIMARY KEY,
                text TEXT NOT NULL,
                covers_until INTEGER NOT NULL,
                turn_count INTEGER NOT NULL,
                created_at INTEGER NOT NULL,
                method TEXT NOT NULL
            ) STRICT""",
            """CREATE TABLE facts (
                user_id TEXT NOT NULL,
                key TEXT NOT NULL,
                text TEXT NOT NULL,
                created_at INTEGER NOT NULL,
                PRIMARY KEY (user_id, key)
            ) STRICT, WITHOUT ROWID""",
        ),
    ),
    Migration(
        2,
        "turns.interrupted; spoken-order index for latest-N; created_at index for purge",
        (
            "ALTER TABLE turns ADD COLUMN interrupted INTEGER NOT NULL DEFAULT 0",
            # latest-N of a user = one backward range scan of this index, no sort
            """CREATE INDEX turns_latest
                ON turns (user_id, created_at, conversation_id, seq, idem_key)""",
            "CREATE INDEX turns_created_at ON turns (created_at)",
        ),
    ),
)

check_sequence(MIGRATIONS)

LATEST = MIGRATIONS[-1].version
