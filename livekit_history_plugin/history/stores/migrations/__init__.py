"""Versioned schemas of the SQL stores.

Each backend keeps an ordered list of migrations; a store applies, in one
transaction under the backend's lock, every migration newer than the version
recorded in its `schema_version` table (one row per applied migration).
Migrations are append-only: never edit one that has shipped, add the next.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    statements: tuple[str, ...]


def check_sequence(migrations: tuple[Migration, ...]) -> None:
    """Versions must be 1, 2, 3...: a gap or a duplicate is a packaging bug."""
    for expected, m in enumerate(migrations, start=1):
        if m.version != expected:
            raise RuntimeError(f"migration list broken at {m.version}: expected {expected}")
