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
    Migration(
        3,
        "facts.origin, facts.source_turns; full-text search column and GIN index on turns",
        (
            "ALTER TABLE {schema}.facts ADD COLUMN origin text NOT NULL DEFAULT 'author'",
            # idempotency keys of the caller turns a fact was read from
            "ALTER TABLE {schema}.facts ADD COLUMN source_turns text[] NOT NULL DEFAULT '{{}}'",
            # 'simple': no stemming or stop words, so every language is indexed alike.
            # The lexeme 'u' || md5(user_id) scopes a search to one user inside the GIN
            # index (no extension needed, unlike btree_gin). left(): a tsvector holds at
            # most 1 MB, and an oversized turn must never make an append fail.
            # STORED fills the column for every existing row (rewrites the table).
            """ALTER TABLE {schema}.turns ADD COLUMN search tsvector GENERATED ALWAYS AS (
                to_tsvector('simple'::regconfig, left(text, 65536))
                || array_to_tsvector(ARRAY['u' || md5(user_id)])
            ) STORED""",
            "CREATE INDEX IF NOT EXISTS turns_search ON {schema}.turns USING gin (search)",
        ),
    ),
    Migration(
        4,
        "calls: one record per call (what was loaded, replayed, recorded)",
        (
            # the record is history.calls.CallRecord as JSON, read whole
            """CREATE TABLE {schema}.calls (
                user_id text COLLATE "C" NOT NULL,
                conversation_id text COLLATE "C" NOT NULL,
                ended_at timestamptz NOT NULL,
                record jsonb NOT NULL,
                PRIMARY KEY (user_id, conversation_id)
            )""",
            "CREATE INDEX IF NOT EXISTS calls_latest ON {schema}.calls (user_id, ended_at DESC)",
            "CREATE INDEX IF NOT EXISTS calls_ended_at ON {schema}.calls (ended_at)",
        ),
    ),
)

check_sequence(MIGRATIONS)

LATEST = MIGRATIONS[-1].version
