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
    Migration(
        3,
        "facts.origin, facts.source_turns; full-text index of turn text (FTS5)",
        (
            "ALTER TABLE facts ADD COLUMN origin TEXT NOT NULL DEFAULT 'author'",
            # JSON array of the idempotency keys of the caller turns a fact was read from
            "ALTER TABLE facts ADD COLUMN source_turns TEXT NOT NULL DEFAULT '[]'",
            # hex(user_id) is always exactly one FTS token, so a search can be scoped
            # to one user inside the index (the match intersects that user's doclist)
            # instead of matching every user's turns and filtering afterwards
            "ALTER TABLE turns ADD COLUMN fts_owner TEXT "
            "GENERATED ALWAYS AS (hex(user_id)) VIRTUAL",
            # external content: the text is stored once, in turns; triggers keep the
            # index in step with every insert, delete (purge, delete_user) and update
            """CREATE VIRTUAL TABLE turns_fts USING fts5(
                text, fts_owner, content='turns', content_rowid='id',
                tokenize='unicode61 remove_diacritics 2'
            )""",
            """CREATE TRIGGER turns_fts_insert AFTER INSERT ON turns BEGIN
                INSERT INTO turns_fts (rowid, text, fts_owner)
                VALUES (new.id, new.text, hex(new.user_id));
            END""",
            """CREATE TRIGGER turns_fts_delete AFTER DELETE ON turns BEGIN
                INSERT INTO turns_fts (turns_fts, rowid, text, fts_owner)
                VALUES ('delete', old.id, old.text, hex(old.user_id));
            END""",
            """CREATE TRIGGER turns_fts_update AFTER UPDATE OF text, user_id ON turns BEGIN
                INSERT INTO turns_fts (turns_fts, rowid, text, fts_owner)
                VALUES ('delete', old.id, old.text, hex(old.user_id));
                INSERT INTO turns_fts (rowid, text, fts_owner)
                VALUES (new.id, new.text, hex(new.user_id));
            END""",
            # index the rows written before this migration
            "INSERT INTO turns_fts (turns_fts) VALUES ('rebuild')",
            # rank by the text column only: the owner token matches every row of the user
            "INSERT INTO turns_fts (turns_fts, rank) VALUES ('rank', 'bm25(1.0, 0.0)')",
        ),
    ),
    Migration(
        4,
        "calls: one record per call (what was loaded, replayed, recorded)",
        (
            # the record is JSON (history.calls.CallRecord): read whole, never queried inside
            """CREATE TABLE calls (
                user_id TEXT NOT NULL,
                conversation_id TEXT NOT NULL,
                ended_at INTEGER NOT NULL,
                record TEXT NOT NULL,
                PRIMARY KEY (user_id, conversation_id)
            ) STRICT, WITHOUT ROWID""",
            "CREATE INDEX calls_latest ON calls (user_id, ended_at)",
            "CREATE INDEX calls_ended_at ON calls (ended_at)",
        ),
    ),
)

check_sequence(MIGRATIONS)

LATEST = MIGRATIONS[-1].version
