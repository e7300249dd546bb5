"""`livekit-history`: look at, export, preview and delete callers' stored history.

Every command works on any store URL (`--store`, else env LIVEKIT_HISTORY_URL,
else `sqlite:///livekit_history.db`). Errors are one line on stderr and a
documented exit code (see `ExitCode` and `--help`), never a traceback, so
scripts can branch on them.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import os
import re
import sqlite3
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from enum import Enum, IntEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, TextIO, TypeVar

import typer
from pydantic import TypeAdapter, ValidationError
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.panel import Panel
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.syntax import Syntax
from rich.table import Table
from typer.core import TyperGroup

from .history.calls import CallRecord
from .history.models import ConversationInfo, Fact, Ident, Role, StoreStats, Summary, Turn
from .history.stores import DEFAULT_URL, ENV_VAR, HistoryStore, open_store
from .history.stores.base import (
    MissingDriverError,
    PurgeProgress,
    StoreError,
    StoreUnavailableError,
    redact_url,
)
from .log import logger
from .version import __version__

if TYPE_CHECKING:
    # livekit (several seconds to import) only where a command needs it
    from .history.budget import BudgetConfig

T = TypeVar("T")

__all__ = ["EXIT_CODES", "ExitCode", "app", "main"]


class ExitCode(IntEnum):
    """Process exit codes; scripts may rely on them."""

    OK = 0
    USAGE = 1  # bad command line or bad input: bad store URL, option value, user id; declined
    NOT_FOUND = 2  # the user has no stored history
    UNAVAILABLE = 3  # the store cannot be reached: server down, timeout, missing SQLite file
    STORE_ERROR = 4  # the store answered but failed: schema too new, corrupt file, no driver
    DEMO_FAILED = 5  # the offline demo ran but one of its checks did not hold
    BUG = 70  # an unexpected exception: a bug in livekit-history, not a store problem (EX_SOFTWARE)
    INTERRUPTED = 130  # Ctrl-C


EXIT_CODES: dict[ExitCode, str] = {
    ExitCode.OK: "success",
    ExitCode.USAGE: "usage error or bad input (store URL, option value, user id; delete declined)",
    ExitCode.NOT_FOUND: "unknown user: nothing stored for that user id",
    ExitCode.UNAVAILABLE: "store unreachable (server down, timeout, SQLite file missing, locked)",
    ExitCode.STORE_ERROR: "store error (schema too new, corrupt database, driver not installed)",
    ExitCode.DEMO_FAILED: "demo: a check of the offline demo failed",
    ExitCode.BUG: "internal error: a bug in livekit-history (rerun with --verbose, report it)",
    ExitCode.INTERRUPTED: "interrupted (Ctrl-C)",
}


def _epilog() -> str:
    """The exit code table and the store URL forms, for the end of `--help`."""
    import typer.rich_utils

    # older typer releases join the lines of a paragraph: there, each line is one
    keeps_lines = hasattr(typer.rich_utils, "_fix_linebreaks")
    line_sep = "\n" if keeps_lines else "\n\n"
    codes = line_sep.join(
        f"[bold]{int(code):>3}[/bold]  {escape(text)}" for code, text in EXIT_CODES.items()
    )
    urls = line_sep.join(
        [
            "sqlite:///relative/path.db   sqlite:////abs/path.db",
            "postgresql://user:pw@host:5432/db?schema=livekit_history",
            "redis://host:6379/0?prefix=livekit_history",
        ]
    )
    return "\n\n".join(["[bold]Exit codes[/bold]", codes, "[bold]Store URLs[/bold]", urls])


# a big export or purge shows a progress bar (when stderr is a terminal)
_PROGRESS_MIN_TURNS = 2_000
_EXPORT_PAGE = 1_000
_SHOW_DEFAULT_LIMIT = 200
_SPEAKER = {Role.USER: "caller", Role.ASSISTANT: "agent", Role.SYSTEM: "note"}
_AGE_RE = re.compile(r"\s*(\d+)\s*([smhdw])\s*", re.IGNORECASE)
_AGE_UNITS = {"s": 1, "m": 60, "h": 3_600, "d": 86_400, "w": 604_800}
_user_id_adapter: TypeAdapter[str] = TypeAdapter(Ident)


class CliError(Exception):
    """A failure to report as one line with an exit code."""

    def __init__(self, message: str, code: ExitCode) -> None:
        super().__init__(message)
        self.code = code


# -- click plumbing ---------------------------------------------------------------------


def _usage_error_type() -> type[Exception]:
    # recent typer releases vendor click as typer._click; older ones use click itself
    for name in ("typer._click.exceptions", "click.exceptions"):
        try:
            cls: type[Exception] = importlib.import_module(name).UsageError
        except (ImportError, AttributeError):
            continue
        return cls
    raise ImportError("neither typer._click nor click provides UsageError")


_UsageError = _usage_error_type()


def _no_args_help_type() -> tuple[type[Exception], ...]:
    # click >= 8.2 raises this (a UsageError) to print the help of a bare command
    module = importlib.import_module(_UsageError.__module__)
    cls = getattr(module, "NoArgsIsHelpError", None)
    return (cls,) if isinstance(cls, type) else ()


_NoArgsIsHelp = _no_args_help_type()


def usage_error_line(error: Exception) -> str:
    """A click usage error as the CLI's one `error:` line, naming the --help to read."""
    format_message = getattr(error, "format_message", None)
    text = format_message() if callable(format_message) else str(error)
    message = " ".join(text.split()) or "bad usage"
    ctx = getattr(error, "ctx", None)
    path = getattr(ctx, "command_path", None) or "livekit-history"
    return f"error: {message} (see '{path} --help')"


def _usage_exit(error: Exception) -> typer.Exit:
    """Usage errors exit 1 (click's default is 2, which here means "not found"),
    as one line, not click's or rich's multi-line box."""
    _console(stderr=True).print(usage_error_line(error), style="red", markup=False, soft_wrap=True)
    return typer.Exit(int(ExitCode.USAGE))


class _Group(TyperGroup):
    """Usage errors are one `error:` line and exit 1."""

    def make_context(
        self, info_name: str | None, args: list[str], parent: Any = None, **extra: Any
    ) -> Any:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except _NoArgsIsHelp:
            raise
        except _UsageError as e:
            raise _usage_exit(e) from None

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except _NoArgsIsHelp:
            raise
        except _UsageError as e:
            raise _usage_exit(e) from None
        except KeyboardInterrupt:
            _console(stderr=True).print("interrupted", style="red", markup=False)
            raise typer.Exit(ExitCode.INTERRUPTED) from None


app = typer.Typer(
    cls=_Group,
    name="livekit-history",
    help="Inspect, export, preview and delete the caller history of livekit-history-plugin.",
    epilog=_epilog(),
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@dataclass
class Settings:
    """The global options, shared by every command."""

    store_url: str
    timeout: float = 10.0
    verbose: bool = False
    progress: bool | None = None  # None: when stderr is a terminal
    out: Console = field(default_factory=lambda: _console(stderr=False))
    err: Console = field(default_factory=lambda: _console(stderr=True))

    @property
    def show_progress(self) -> bool:
        return self.err.is_terminal if self.progress is None else self.progress


def _console(*, stderr: bool) -> Console:
    # a terminal or COLUMNS sets the width; a pipe gets a generous one, so table
    # cells are not cut to rich's default of 80 columns
    interactive = os.isatty(2 if stderr else 1)
    width = None if interactive or os.environ.get("COLUMNS") else 120
    return Console(stderr=stderr, width=width, highlight=False)


def _settings(ctx: typer.Context) -> Settings:
    obj = ctx.find_root().obj
    if not isinstance(obj, Settings):  # only when a command is invoked without the root
        obj = Settings(store_url=os.environ.get(ENV_VAR) or DEFAULT_URL)
        ctx.find_root().obj = obj
    return obj


def _version(value: bool) -> None:
    if value:
        typer.echo(f"livekit-history {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    store: Annotated[
        str,
        typer.Option(
            "--store",
            "-s",
            envvar=ENV_VAR,
            metavar="URL",
            help="History store URL (sqlite, postgresql or redis).",
            show_default=True,
        ),
    ] = DEFAULT_URL,
    timeout: Annotated[
        float,
        typer.Option(min=0.1, help="Seconds to wait for the store to connect."),
    ] = 10.0,
    progress: Annotated[
        bool | None,
        typer.Option(
            "--progress/--no-progress",
            help="Progress bars on long exports and purges (default: when stderr is a terminal).",
            show_default=False,
        ),
    ] = None,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Log details (and tracebacks) to stderr.")
    ] = False,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    settings = Settings(store_url=store.strip(), timeout=timeout, verbose=verbose, progress=progress)
    if not settings.store_url:  # an empty --store is a mistake, not a wish for the default
        raise fail(
            settings,
            CliError(
                f"--store is empty: give a store URL, or leave --store out to use "
                f"{ENV_VAR} or {DEFAULT_URL}",
                ExitCode.USAGE,
            ),
        )
    ctx.obj = settings


# -- running a store operation -----------------------------------------------------------


@contextmanager
def _logging(settings: Settings) -> Iterator[None]:
    """Route the plugin's warnings (e.g. a corrupt row skipped) to stderr, one line each."""
    handler = RichHandler(
        console=settings.err, show_time=False, show_path=False, markup=False, rich_tracebacks=False
    )
    level = logging.DEBUG if settings.verbose else logging.WARNING
    handler.setLevel(level)
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(min(level, old_level) if old_level else level)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


def _check_sqlite_file(store: HistoryStore) -> None:
    """Opening a file that is not yet a history database would write the schema
    into it: a typo in the path would create a file and look like "no such
    user", a 0-byte or foreign file would be changed. The CLI only opens files
    that already hold a history database."""
    from .history.stores.sqlite import SqliteStore

    if not isinstance(store, SqliteStore) or store.memory:
        return
    path = Path(store.path)
    hint = f"check --store / {ENV_VAR}; current directory {os.getcwd()!r}"
    if not path.is_file():
        raise CliError(f"no SQLite history database at {store.path!r} ({hint})", ExitCode.UNAVAILABLE)
    if path.stat().st_size == 0:
        raise CliError(
            f"{store.path!r} is an empty file, not a history database; nothing written ({hint})",
            ExitCode.UNAVAILABLE,
        )
    if not _has_history_schema(path):
        raise CliError(
            f"{store.path!r} is not a livekit-history database (no schema_version table); "
            "nothing written",
            ExitCode.STORE_ERROR,
        )


def _has_history_schema(path: Path) -> bool:
    """Whether the file has the stores' `schema_version` table; read-only, writes nothing.
    A file SQLite cannot read this way is left for the store to report."""
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error:
        return True
    try:
        row = db.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
        ).fetchone()
    except sqlite3.DatabaseError:
        return True  # not a database at all: the store's open reports it as corrupt
    finally:
        db.close()
    return row is not None


@asynccontextmanager
async def open_cli_store(settings: Settings) -> AsyncIterator[HistoryStore]:
    """The store of `settings`, opened; failures raise CliError with their exit code."""
    store = open_store(settings.store_url)
    _check_sqlite_file(store)
    try:
        await asyncio.wait_for(store.open(), settings.timeout)
    except asyncio.TimeoutError:
        raise CliError(
            f"{redact_url(settings.store_url)}: no connection within {settings.timeout:g} s",
            ExitCode.UNAVAILABLE,
        ) from None
    try:
        yield store
    finally:
        await store.close()


def classify(exc: BaseException) -> tuple[ExitCode, str]:
    """The exit code and one-line message for an exception a command raised."""
    if isinstance(exc, CliError):
        return exc.code, str(exc)
    if isinstance(exc, MissingDriverError):
        return ExitCode.STORE_ERROR, str(exc)
    if isinstance(exc, StoreUnavailableError):
        return ExitCode.UNAVAILABLE, str(exc)
    if isinstance(exc, StoreError):
        # the file or server could not be opened at all: unreachable, not broken
        if exc.op == "open" and isinstance(exc.cause, (sqlite3.OperationalError, OSError)):
            return ExitCode.UNAVAILABLE, str(exc)
        return ExitCode.STORE_ERROR, str(exc)
    if isinstance(exc, (ConnectionError, TimeoutError, asyncio.TimeoutError)):
        return ExitCode.UNAVAILABLE, f"store unreachable: {_one_line(exc)}"
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first.get("loc", ()))
        return ExitCode.USAGE, f"invalid input{f' {loc}' if loc else ''}: {first.get('msg')}"
    if isinstance(exc, ValueError):  # our own messages: already say what is wrong
        return ExitCode.USAGE, str(exc).strip().splitlines()[0] if str(exc).strip() else "bad input"
    if isinstance(exc, OSError):
        return ExitCode.UNAVAILABLE, f"store unreachable: {_one_line(exc)}"
    # not a store error (stores wrap every driver failure in StoreError): a bug of ours
    return ExitCode.BUG, (
        f"internal error (a bug in livekit-history, not a store problem): {_one_line(exc)}; "
        "rerun with --verbose for the traceback and report it"
    )


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    return f"{first} ({type(exc).__name__})" if first else type(exc).__name__


def fail(settings: Settings, exc: BaseException) -> typer.Exit:
    """Report `exc` as one line on stderr; the Exit to raise."""
    code, message = classify(exc)
    if settings.verbose and not isinstance(exc, CliError):
        settings.err.print_exception(show_locals=False)
    settings.err.print(f"error: {message}", style="red", markup=False, soft_wrap=True)
    return typer.Exit(int(code))


def run(settings: Settings, op: Callable[[HistoryStore], Awaitable[T]]) -> T:
    """Open the store, run `op` on it, close it; any failure exits with its code."""

    async def main() -> T:
        async with open_cli_store(settings) as store:
            return await op(store)

    with _logging(settings):
        try:
            return asyncio.run(main())
        except (typer.Exit, KeyboardInterrupt):
            raise
        except Exception as e:
            raise fail(settings, e) from None


def _user(settings: Settings, user: str) -> str:
    try:
        return _user_id_adapter.validate_python(user)
    except ValidationError as e:
        msg = e.errors()[0].get("msg", "invalid")
        raise fail(settings, CliError(f"invalid user id {user!r}: {msg}", ExitCode.USAGE)) from None


@dataclass
class UserRecord:
    user_id: str
    turns: int
    summary: Summary | None
    facts: list[Fact]


async def require_user(store: HistoryStore, user_id: str) -> UserRecord:
    """What is stored for `user_id`; CliError(NOT_FOUND) when nothing is."""
    turns = await store.count_turns(user_id)
    summary = await store.load_summary(user_id)
    facts = await store.load_facts(user_id)
    if not turns and summary is None and not facts:
        raise CliError(f"unknown user {user_id!r}: no history in {store.url}", ExitCode.NOT_FOUND)
    return UserRecord(user_id, turns, summary, facts)


async def load_all_turns(
    store: HistoryStore,
    user_id: str,
    *,
    page: int = _EXPORT_PAGE,
    on_page: Callable[[int], None] | None = None,
) -> list[Turn]:
    """Every turn of a user, oldest first, read newest-first in pages.

    The store pages with a strict `before=` time, and a skipped corrupt row
    still takes a place in a page, so a short page does not mean the end.
    A page is only trusted for the turns newer than its oldest time (all of
    those ranked ahead of it, so they are all there); the next page starts
    just after that time (times are whole microseconds in every store). A
    page without two distinct times is read again twice as wide, until it is
    wider than the rows that can be left (`count_turns` counts corrupt rows
    too): then it holds everything. No turn is lost or read twice.
    """
    left = await store.count_turns(user_id)  # rows not yet read: an upper bound
    pages: list[list[Turn]] = []
    before: datetime | None = None
    size = page
    while left > 0:
        batch = await store.load_latest(user_id, min(size, left), before=before)
        if size >= left:  # every row left fitted in this page
            pages.append(batch)
            if on_page is not None:
                on_page(len(batch))
            break
        oldest = batch[0].created_at if batch else None
        newer = [t for t in batch if oldest is not None and t.created_at > oldest]
        if oldest is None or not newer:  # nothing certain in this page: widen it
            size *= 2
            continue
        pages.append(newer)
        if on_page is not None:
            on_page(len(newer))
        left -= len(newer)
        before = oldest + timedelta(microseconds=1)
        size = page
    return [t for p in reversed(pages) for t in p]


@contextmanager
def _progress(settings: Settings, enabled: bool) -> Iterator[Progress]:
    progress = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=settings.err,
        transient=False,
        disable=not enabled,
    )
    with progress:
        yield progress


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def _fmt_time(dt: datetime) -> str:
    return dt.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


# -- show ---------------------------------------------------------------------------------


def _turns_table(turns: Sequence[Turn], title: str) -> Table:
    table = Table(title=title, title_justify="left", show_lines=False, expand=False)
    table.add_column("time (UTC)", no_wrap=True, style="dim")
    table.add_column("call", no_wrap=True)
    table.add_column("#", justify="right", no_wrap=True)
    table.add_column("speaker", no_wrap=True)
    table.add_column("agent", no_wrap=True, style="cyan")
    table.add_column("text", overflow="fold", ratio=1)
    for i, t in enumerate(turns):
        speaker = _SPEAKER[t.role]
        if t.interrupted:
            speaker += " (interrupted)"
        if t.source.value != "voice":
            speaker += f" [{t.source.value}]"
        last_of_call = i + 1 == len(turns) or turns[i + 1].conversation_id != t.conversation_id
        table.add_row(
            _fmt_time(t.created_at),
            escape(t.conversation_id),
            str(t.seq),
            escape(speaker),
            escape(t.agent_id or ""),
            escape(t.text),
            end_section=last_of_call,
            style="bold" if t.role is Role.USER else None,
        )
    return table


def _facts_table(facts: Sequence[Fact]) -> Table:
    table = Table(title="Durable facts", title_justify="left")
    table.add_column("key", no_wrap=True, style="cyan")
    table.add_column("fact", overflow="fold")
    table.add_column("since (UTC)", no_wrap=True, style="dim")
    for f in facts:
        table.add_row(escape(f.key), escape(f.text), _fmt_time(f.created_at))
    return table


def _summary_panel(summary: Summary) -> Panel:
    return Panel(
        escape(summary.text),
        title=(
            f"Summary of {summary.turn_count} older turns until "
            f"{_fmt_time(summary.covers_until)} ({escape(summary.method)})"
        ),
        title_align="left",
    )


@app.command()
def show(
    ctx: typer.Context,
    user: Annotated[str, typer.Argument(metavar="USER", help="The caller's user id.")],
    limit: Annotated[
        int,
        typer.Option("--limit", "-n", min=0, help="Show the newest N turns; 0 shows all."),
    ] = _SHOW_DEFAULT_LIMIT,
) -> None:
    """Show a caller's stored conversation as a table, with summary and facts."""
    settings = _settings(ctx)
    user_id = _user(settings, user)

    async def op(store: HistoryStore) -> tuple[UserRecord, list[Turn]]:
        record = await require_user(store, user_id)
        if limit == 0:
            return record, await load_all_turns(store, user_id)
        return record, await store.load_latest(user_id, limit)

    record, turns = run(settings, op)
    out = settings.out
    calls = len({t.conversation_id for t in turns})
    shown = (
        f"{len(turns)} turns"
        if len(turns) == record.turns
        else f"newest {len(turns)} of {record.turns} turns (--limit 0 for all)"
    )
    title = f"History of {escape(user_id)!s}: {shown} in {calls} call{'s' if calls != 1 else ''}"
    if turns:
        out.print(_turns_table(turns, title))
    else:
        out.print(f"{title}", markup=False)
    if record.summary is not None:
        out.print(_summary_panel(record.summary))
    if record.facts:
        out.print(_facts_table(record.facts))


# -- export --------------------------------------------------------------------------------


def export_records(
    user_id: str, turns: Sequence[Turn], summary: Summary | None, facts: Sequence[Fact]
) -> Iterator[dict[str, Any]]:
    """The JSONL records of an export: turns oldest first, then the summary and facts.

    Each record is the stored model's JSON with a `type` of "turn", "summary" or "fact".
    """
    for t in turns:
        yield {"type": "turn", **t.model_dump(mode="json")}
    if summary is not None:
        yield {"type": "summary", **summary.model_dump(mode="json")}
    for f in facts:
        yield {"type": "fact", **f.model_dump(mode="json")}


def _write_jsonl(records: Iterator[dict[str, Any]], stream: TextIO) -> int:
    n = 0
    for rec in records:
        stream.write(json.dumps(rec, ensure_ascii=False, separators=(",", ":")) + "\n")
        n += 1
    return n


def _write_file_atomically(path: Path, write: Callable[[TextIO], int]) -> int:
    # a partial export never takes the place of a complete one
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            n = write(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return n


@app.command()
def export(
    ctx: typer.Context,
    user: Annotated[str, typer.Argument(metavar="USER", help="The caller's user id.")],
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Write to FILE (replaced atomically when complete) instead of stdout.",
            dir_okay=False,
            metavar="FILE",
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", "-f", help="Replace FILE if it exists.")
    ] = False,
) -> None:
    """Export everything stored for a caller as JSON lines (turns, summary, facts)."""
    settings = _settings(ctx)
    user_id = _user(settings, user)
    if out is not None and out != Path("-"):
        if not out.parent.is_dir():
            raise fail(
                settings, CliError(f"no such directory: {str(out.parent)!r}", ExitCode.USAGE)
            )
        if out.exists() and not force:
            raise fail(
                settings,
                CliError(
                    f"{str(out)!r} exists: nothing written (pass --force to replace it)",
                    ExitCode.USAGE,
                ),
            )

    async def op(store: HistoryStore) -> tuple[UserRecord, list[Turn]]:
        record = await require_user(store, user_id)
        big = record.turns >= _PROGRESS_MIN_TURNS
        with _progress(settings, settings.show_progress and big) as progress:
            task = progress.add_task(f"Exporting {user_id}", total=record.turns)
            turns = await load_all_turns(
                store, user_id, on_page=lambda n: progress.advance(task, n)
            )
            progress.update(task, completed=len(turns), total=len(turns))
        return record, turns

    record, turns = run(settings, op)
    records = export_records(user_id, turns, record.summary, record.facts)
    if out is None or out == Path("-"):
        _write_jsonl(records, sys.stdout)
        sys.stdout.flush()
        return
    try:
        n = _write_file_atomically(out, lambda f: _write_jsonl(records, f))
    except OSError as e:
        raise fail(
            settings, CliError(f"cannot write {str(out)!r}: {e.strerror or e}", ExitCode.USAGE)
        ) from None
    settings.err.print(
        f"exported {n} records of {user_id!r} ({_plural(len(turns), 'turn')}, "
        f"{'1 summary' if record.summary else 'no summary'}, {_plural(len(record.facts), 'fact')}) "
        f"to {out}",
        markup=False,
        soft_wrap=True,
    )


# -- preview ---------------------------------------------------------------------------------


class Mode(str, Enum):
    items = "items"
    packed = "packed"
    instructions = "instructions"


class WireDialect(str, Enum):
    beta = "beta"
    ga = "ga"


class Provider(str, Enum):
    azure = "azure"
    openai = "openai"


PreviewMode = Literal["items", "packed", "instructions"]
PreviewDialect = Literal["beta", "ga"]

_DIALECT_LABEL = {
    "beta": "beta (Azure OpenAI api-version / legacy deployments)",
    "ga": "ga (OpenAI, Azure OpenAI /v1)",
}


@dataclass(frozen=True)
class PreviewRequest:
    user_id: str
    mode: PreviewMode = "packed"
    budget: int | None = None  # None: computed from the model's context window
    instructions: str = ""
    model: str = "gpt-realtime"
    tools_json: str = ""
    dialects: tuple[PreviewDialect, ...] = ("beta", "ga")


@dataclass
class PreviewEvent:
    event: dict[str, Any]
    role: str
    tokens: int


@dataclass
class PreviewResult:
    request: PreviewRequest
    budget: int
    budget_computed: bool
    context_window: int
    stored_turns: int
    replayed_turns: int
    truncated_turn: bool
    summary_stored: bool
    summary_replayed: bool
    summary_updated: int  # turns this load folded into the summary
    facts: int
    history_tokens: int
    instructions: str
    instructions_tokens: int
    events: dict[str, list[PreviewEvent]]

    def as_json(self) -> dict[str, Any]:
        return {
            "user_id": self.request.user_id,
            "mode": self.request.mode,
            "model": self.request.model,
            "context_window": self.context_window,
            "budget": self.budget,
            "budget_computed": self.budget_computed,
            "history_tokens": self.history_tokens,
            "stored_turns": self.stored_turns,
            "replayed_turns": self.replayed_turns,
            "truncated_turn": self.truncated_turn,
            "summary": {
                "stored": self.summary_stored,
                "replayed": self.summary_replayed,
                "newly_summarized_turns": self.summary_updated,
            },
            "facts": self.facts,
            "instructions": {"text": self.instructions, "tokens": self.instructions_tokens},
            "events": {
                dialect: [{"tokens": e.tokens, "event": e.event} for e in events]
                for dialect, events in self.events.items()
            },
        }


def _event_ids() -> Callable[[str], str]:
    # deterministic ids, so two previews of the same history compare equal
    counter = iter(range(1, 1_000_000))
    return lambda kind: f"preview_{kind}_{next(counter)}"


class ReadOnlyStore(HistoryStore):
    """A store view for previews: reads pass through, writes are not made.

    `HistoryPlugin.load` stores a summary it updated; a preview must not. It
    also logs and swallows store errors (a call must start anyway); a preview
    must report them, so the first one is kept in `error`.
    """

    def __init__(self, inner: HistoryStore) -> None:
        self.inner = inner
        self.url = inner.url
        self.error: BaseException | None = None

    async def _read(self, call: Awaitable[T]) -> T:
        try:
            return await call
        except BaseException as e:
            self.error = self.error or e
            raise

    async def open(self) -> None:
        pass  # the CLI opened the inner store

    async def close(self) -> None:
        pass

    async def load_latest(
        self, user_id: str, limit: int, *, before: datetime | None = None
    ) -> list[Turn]:
        return await self._read(self.inner.load_latest(user_id, limit, before=before))

    async def count_turns(self, user_id: str) -> int:
        return await self._read(self.inner.count_turns(user_id))

    async def list_conversations(self, user_id: str) -> list[ConversationInfo]:
        return await self._read(self.inner.list_conversations(user_id))

    async def list_users(self) -> list[str]:
        return await self._read(self.inner.list_users())

    async def load_summary(self, user_id: str) -> Summary | None:
        return await self._read(self.inner.load_summary(user_id))

    async def load_facts(self, user_id: str) -> list[Fact]:
        return await self._read(self.inner.load_facts(user_id))

    async def stats(self) -> StoreStats:
        return await self._read(self.inner.stats())

    async def save_summary(self, summary: Summary) -> None:
        pass  # the preview shows the updated summary; the next real call stores it

    async def append(self, turns: Sequence[Turn]) -> int:
        raise StoreError(f"{self.url}: a preview does not write", store=self.url, op="append")

    async def delete_user(self, user_id: str) -> int:
        raise StoreError(f"{self.url}: a preview does not write", store=self.url, op="delete")

    async def load_calls(self, user_id: str, limit: int) -> list[CallRecord]:
        return await self._read(self.inner.load_calls(user_id, limit))

    async def record_call(self, record: CallRecord) -> None:
        raise StoreError(f"{self.url}: a preview does not write", store=self.url, op="record_call")

    async def purge_older_than(
        self,
        age: timedelta,
        *,
        now: datetime | None = None,
        progress: PurgeProgress | None = None,
    ) -> int:
        raise StoreError(f"{self.url}: a preview does not write", store=self.url, op="purge")

    async def save_fact(self, fact: Fact) -> None:
        raise StoreError(f"{self.url}: a preview does not write", store=self.url, op="save_fact")

    async def delete_fact(self, user_id: str, key: str) -> bool:
        raise StoreError(f"{self.url}: a preview does not write", store=self.url, op="delete_fact")


def _fixed_budget(base: BudgetConfig, tokens: int) -> BudgetConfig:
    """A budget config under which `compute_history_budget` gives exactly `tokens`:
    window = tokens + reply priming, nothing reserved, all of it for history."""
    from .history.tokens import REPLY_PRIMING_TOKENS

    return base.model_copy(
        update={
            "context_window": tokens + REPLY_PRIMING_TOKENS,
            "output_reserve": 0,
            "instructions_tokens": 0,
            "tools_tokens": 0,
            "max_history_fraction": 1.0,
        }
    )


async def build_preview(store: HistoryStore, request: PreviewRequest) -> PreviewResult:
    """What the next call of `request.user_id` sends.

    The history comes from `HistoryPlugin.load` itself, the call-start code
    path (budget, selection, summary update, rendering), on a read-only view
    of the store; the events are the replay engine's first burst on a fresh
    connection (nothing on the server yet), per dialect: exactly what goes on
    the wire, except the event ids. Older turns are folded into the summary
    with the offline extractive summarizer (a deployment with an LLM
    summarizer words its summary differently).
    """
    from livekit.agents import llm

    from .history.budget import context_window_for
    from .history.plugin import HistoryConfig, HistoryPlugin
    from .history.render import TRUNCATION_MARK
    from .history.tokens import count_tokens, message_tokens
    from .replay.engine import ReplayEngine, SendEvent
    from .replay.plan import plan_update

    user_id = request.user_id
    view = ReadOnlyStore(store)
    base = HistoryConfig(store_url=store.url, mode=request.mode)
    config = (
        base
        if request.budget is None
        else base.model_copy(update={"budget": _fixed_budget(base.budget, request.budget)})
    )
    plugin = HistoryPlugin(view, config)
    stored = await store.count_turns(user_id)
    summary_stored = await store.load_summary(user_id) is not None
    with _quiet_budget_warning(request.budget == 0):
        loaded = await plugin.load(
            user_id,
            instructions=request.instructions,
            tools_json=request.tools_json,
            model=request.model,
            # the summary the next call replays once its post-call job has run
            summarize_now=True,
        )
    if view.error is not None:  # load() carries on without history; a preview must not
        raise view.error

    tokens_by_id: dict[str, tuple[str, int]] = {}
    for item in loaded.chat_ctx.items:
        if isinstance(item, llm.ChatMessage):
            text = item.text_content or ""
            tokens_by_id[item.id] = (item.role, message_tokens(item.role, text))
    events: dict[str, list[PreviewEvent]] = {}
    for dialect in request.dialects:
        plan = plan_update(loaded.chat_ctx, llm.ChatContext.empty(), dialect)
        engine = ReplayEngine(
            plan.creates, plan.deletes, remote_order=plan.remote_order, new_event_id=_event_ids()
        )
        sent = [o.event for o in engine.start(0.0) if isinstance(o, SendEvent)]
        events[dialect] = [
            PreviewEvent(ev, *tokens_by_id.get(str(ev.get("item", {}).get("id")), ("", 0)))
            for ev in sent
        ]
    return PreviewResult(
        request=request,
        budget=loaded.budget,
        budget_computed=request.budget is None,
        context_window=config.budget.context_window or context_window_for(request.model),
        stored_turns=stored,
        replayed_turns=len(loaded.turns),
        truncated_turn=any(t.text.endswith(TRUNCATION_MARK) for t in loaded.turns[-1:]),
        summary_stored=summary_stored,
        summary_replayed=loaded.summary is not None,
        summary_updated=loaded.summarized_turns,
        facts=len(loaded.facts),
        history_tokens=loaded.tokens,
        instructions=loaded.instructions,
        instructions_tokens=count_tokens(loaded.instructions),
        events=events,
    )


@contextmanager
def _quiet_budget_warning(quiet: bool) -> Iterator[None]:
    """`--budget 0` asks for no history: the budget's "no room" warning is noise then."""
    if not quiet:
        yield
        return
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _summary_note(result: PreviewResult) -> str:
    if not result.summary_replayed:
        return "stored but does not fit" if result.summary_stored else "none"
    if result.summary_updated:
        return f"replayed, updated with {result.summary_updated} older turns"
    return "replayed"


def render_preview(result: PreviewResult, out: Console) -> None:
    req = result.request
    budget_note = (
        f"computed for {req.model}, {result.context_window:,}-token window"
        if result.budget_computed
        else "given"
    )
    summary = _summary_note(result)
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold")
    head.add_column()
    head.add_row("caller", escape(req.user_id))
    head.add_row("mode", req.mode)
    head.add_row("budget", f"{result.budget:,} tokens ({budget_note})")
    head.add_row(
        "history",
        f"{result.history_tokens:,} tokens: {result.replayed_turns} of {result.stored_turns} "
        f"stored turns{' (newest cut)' if result.truncated_turn else ''}, summary {summary}",
    )
    head.add_row("facts", f"{result.facts} (in the instructions)")
    out.print(Panel(head, title="Next call preview", title_align="left"))
    out.print(
        Panel(
            escape(result.instructions) or "[dim](empty)[/dim]",
            title=f"instructions (session.update) - {result.instructions_tokens:,} tokens",
            title_align="left",
        )
    )
    for dialect, events in result.events.items():
        out.print(
            f"[bold]{escape(_DIALECT_LABEL.get(dialect, dialect))}[/bold]: {len(events)} event{'s' if len(events) != 1 else ''}"
        )
        if not events:
            out.print("  [dim](nothing to replay)[/dim]")
        for i, ev in enumerate(events, 1):
            body = json.dumps(ev.event, ensure_ascii=False, indent=2)
            out.print(
                Panel(
                    Syntax(body, "json", word_wrap=True, theme="ansi_dark"),
                    title=f"{i}. {ev.event.get('type')} - {ev.role} - {ev.tokens:,} tokens",
                    title_align="left",
                )
            )


@app.command()
def preview(
    ctx: typer.Context,
    user: Annotated[str, typer.Argument(metavar="USER", help="The caller's user id.")],
    mode: Annotated[Mode, typer.Option("--mode", "-m", help="Replay mode.")] = Mode.packed,
    budget: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="History budget in tokens (default: computed from the model's context window).",
            show_default=False,
        ),
    ] = None,
    instructions: Annotated[
        str, typer.Option(help="The agent's own instructions (facts and history are added).")
    ] = "",
    model: Annotated[
        str, typer.Option(help="Realtime model name (sets the context window).")
    ] = "gpt-realtime",
    tools_json: Annotated[
        str,
        typer.Option(help="The agent's tools as JSON (their tokens come off the budget)."),
    ] = "",
    dialect: Annotated[
        list[WireDialect] | None,
        typer.Option(
            "--dialect",
            "-d",
            help="Wire dialect to show, repeatable: beta (Azure api-version) or ga (default: both).",
            show_default=False,
        ),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON document instead of tables.")
    ] = False,
) -> None:
    """Show exactly what the next call of a caller would send: the conversation.item.create
    events per dialect and the instructions, with token counts."""
    settings = _settings(ctx)
    user_id = _user(settings, user)
    request = PreviewRequest(
        user_id=user_id,
        mode=mode.value,  # type: ignore[arg-type]
        budget=budget,
        instructions=instructions,
        model=model,
        tools_json=tools_json,
        dialects=tuple(dict.fromkeys(d.value for d in dialect or list(WireDialect))),  # type: ignore[arg-type]
    )

    async def op(store: HistoryStore) -> PreviewResult:
        await require_user(store, user_id)
        return await build_preview(store, request)

    result = run(settings, op)
    if as_json:
        sys.stdout.write(json.dumps(result.as_json(), ensure_ascii=False, indent=2) + "\n")
        return
    render_preview(result, settings.out)


# -- delete / purge --------------------------------------------------------------------------


@app.command()
def delete(
    ctx: typer.Context,
    user: Annotated[str, typer.Argument(metavar="USER", help="The caller's user id.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete everything stored for a caller (turns, summary, facts)."""
    settings = _settings(ctx)
    user_id = _user(settings, user)
    record = run(settings, lambda store: require_user(store, user_id))
    what = (
        f"{_plural(record.turns, 'turn')}, {'a summary' if record.summary else 'no summary'} "
        f"and {_plural(len(record.facts), 'fact')} of {user_id!r}"
    )
    if not yes:
        _confirm(settings, f"Delete {what} from {redact_url(settings.store_url)}?")
    deleted = run(settings, lambda store: store.delete_user(user_id))
    settings.out.print(
        f"deleted {_plural(deleted, 'turn')}, {'the summary' if record.summary else 'no summary'} "
        f"and {_plural(len(record.facts), 'fact')} of {user_id!r}",
        markup=False,
        soft_wrap=True,
    )


def _confirm(settings: Settings, question: str) -> None:
    """Ask on stderr; anything but yes (or no terminal answer) exits 1, nothing deleted."""
    try:
        confirmed = typer.confirm(question, default=False, err=True)
    except typer.Abort:
        confirmed = False
    if not sys.stdin.isatty():
        settings.err.print()  # a piped answer is not echoed: end the prompt's line
    if not confirmed:
        raise fail(
            settings,
            CliError("not confirmed: nothing deleted (pass --yes in scripts)", ExitCode.USAGE),
        )


def parse_age(value: str, now: datetime | None = None) -> timedelta:
    """'30d', '12h', '90m', '45s' or '2w' -> timedelta; an age reaching back
    before year 1 (from `now`) is refused, not an OverflowError."""
    m = _AGE_RE.fullmatch(value)
    if m is None:
        raise typer.BadParameter(f"{value!r} is not an age: use a number and s/m/h/d/w, e.g. 30d")
    too_old = typer.BadParameter(f"{value.strip()!r} reaches back before year 1: use a smaller age")
    try:
        age = timedelta(seconds=int(m.group(1)) * _AGE_UNITS[m.group(2).lower()])
        (now or datetime.now(timezone.utc)) - age  # noqa: B018 - raises OverflowError
    except OverflowError:
        raise too_old from None
    return age


@app.command()
def purge(
    ctx: typer.Context,
    older_than: Annotated[
        str,
        typer.Option(
            "--older-than",
            metavar="AGE",
            help="Delete turns older than AGE (e.g. 30d, 12h, 2w), for every user.",
        ),
    ],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", "-n", help="Print what would be deleted; delete nothing.")
    ] = False,
    yes: Annotated[
        bool,
        typer.Option("--yes", "-y", help="Do not ask, even when every stored turn would go."),
    ] = False,
) -> None:
    """Delete old turns of every caller; summaries and facts are kept. A purge that
    would delete every stored turn asks first."""
    settings = _settings(ctx)
    now = datetime.now(timezone.utc)
    try:
        age = parse_age(older_than, now)
    except typer.BadParameter as e:
        raise fail(
            settings, CliError(f"invalid --older-than: {e.message}", ExitCode.USAGE)
        ) from None
    cutoff = f"older than {older_than.strip()} (before {_fmt_time(now - age)} UTC)"
    where = redact_url(settings.store_url)

    async def count(store: HistoryStore) -> tuple[int, int]:
        return await store.count_turns_older_than(age, now=now), (await store.stats()).turns

    if dry_run or not yes:
        doomed, stored = run(settings, count)
        if dry_run:
            settings.out.print(
                f"dry run: would purge {_plural(doomed, 'turn')} of {_plural(stored, 'stored turn')} "
                f"{cutoff} from {where}; nothing deleted",
                markup=False,
                soft_wrap=True,
            )
            return
        if doomed and doomed >= stored:
            _confirm(settings, f"Purge deletes EVERY stored turn ({doomed:,}) of {where}. Go on?")

    async def op(store: HistoryStore) -> int:
        with _progress(settings, settings.show_progress) as progress:
            task: TaskID = progress.add_task("Purging old turns", total=None)
            deleted = await store.purge_older_than(
                age, now=now, progress=lambda n: progress.update(task, completed=n)
            )
            progress.update(task, completed=deleted, total=deleted)
        return deleted

    deleted = run(settings, op)
    settings.out.print(
        f"purged {_plural(deleted, 'turn')} {cutoff} from {where}; summaries and facts kept",
        markup=False,
        soft_wrap=True,
    )


# -- stats ---------------------------------------------------------------------------------------


@app.command()
def stats(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Counts of users, calls, turns, summaries and facts in the store."""
    settings = _settings(ctx)
    result = run(settings, lambda store: store.stats())
    if as_json:
        data = {"store": redact_url(settings.store_url), **result.model_dump(mode="json")}
        sys.stdout.write(json.dumps(data) + "\n")
        return
    settings.out.print(f"store: {redact_url(settings.store_url)}", markup=False, soft_wrap=True)
    table = Table()
    table.add_column("what")
    table.add_column("count", justify="right")
    for name, value in result.model_dump().items():
        table.add_row(name.replace("_", " "), f"{value:,}")
    settings.out.print(table)


# -- trace ---------------------------------------------------------------------------------


_TRACE_DEFAULT_LIMIT = 10


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f} ms"


def _loaded_cell(record: CallRecord) -> str:
    loaded = record.loaded
    if loaded is None:
        return "-"
    if loaded.failed:
        return f"store failed ({loaded.store}): started without history"
    summary = " + summary" if loaded.summary_used else ""
    return (
        f"{loaded.mode}: {_plural(loaded.turns, 'turn')}{summary}\n"
        f"{loaded.tokens:,}/{loaded.budget:,} tokens, {_ms(loaded.duration_s)}"
    )


def _replayed_cell(record: CallRecord) -> str:
    first = record.history_replay
    if first is None:
        return "-"
    lines = [f"{first.items_sent} sent, {first.confirmed} confirmed, {len(first.rejected)} rejected"]
    if first.rejected:
        lines.append(
            "rejected: " + ", ".join(f"{r.item_id} {r.code}" for r in first.rejected[:3])
            + (", ..." if len(first.rejected) > 3 else "")
        )
    lines.append(
        f"ack p50 {_ms(first.ack_latency_p50_s)}, max {_ms(first.ack_latency_max_s)}, "
        f"{first.resends} resends"
    )
    if record.replays > 1:
        later = record.items_rejected - len(first.rejected)
        lines.append(f"+{_plural(record.replays - 1, 'later update')} ({later} rejected)")
    return "\n".join(lines)


def _gate_cell(record: CallRecord) -> str:
    if record.audio_gate_held_s is None:
        return "-"
    reason = f" ({record.audio_gate_reason})" if record.audio_gate_reason == "timeout" else ""
    return (
        f"{record.audio_gate_held_s:.2f} s{reason}\n{_plural(record.audio_frames_held, 'frame')}"
    )


def _recorded_cell(record: CallRecord) -> str:
    parts = [_plural(record.turns_recorded, "turn")]
    if record.turns_dropped:
        parts.append(f"{record.turns_dropped} dropped")
    if record.write_retries:
        n = record.write_retries
        parts.append(f"{n:,} write {'retry' if n == 1 else 'retries'}")
    return ", ".join(parts)


def trace_table(user_id: str, records: Sequence[CallRecord]) -> Table:
    """The last calls of a user: what was loaded, replayed, held and recorded."""
    table = Table(
        title=f"Last {_plural(len(records), 'call')} of {escape(user_id)} (newest first)",
        title_justify="left",
        show_lines=True,
    )
    table.add_column("ended (UTC)", no_wrap=True, style="dim")
    # the whole id is in --json; the table keeps its start
    table.add_column("call", no_wrap=True, overflow="ellipsis", max_width=18)
    table.add_column("loaded", overflow="fold")
    table.add_column("replayed (first update)", overflow="fold")
    table.add_column("audio held", no_wrap=True)
    table.add_column("recorded", overflow="fold")
    for r in records:
        troubled = r.items_rejected or r.turns_dropped or (r.loaded is not None and r.loaded.failed)
        table.add_row(
            _fmt_time(r.ended_at),
            escape(r.conversation_id),
            escape(_loaded_cell(r)),
            escape(_replayed_cell(r)),
            escape(_gate_cell(r)),
            escape(_recorded_cell(r)),
            style="yellow" if troubled else None,
        )
    return table


@app.command()
def trace(
    ctx: typer.Context,
    user: Annotated[str, typer.Argument(metavar="USER", help="The caller's user id.")],
    limit: Annotated[
        int, typer.Option("--limit", "-n", min=1, help="Show the newest N calls.")
    ] = _TRACE_DEFAULT_LIMIT,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """What the last calls of a caller loaded, replayed and recorded (the call log)."""
    settings = _settings(ctx)
    user_id = _user(settings, user)

    async def op(store: HistoryStore) -> list[CallRecord]:
        records = await store.load_calls(user_id, limit)
        if not records:
            await require_user(store, user_id)
        return records

    records = run(settings, op)
    if as_json:
        data = {"user_id": user_id, "calls": [r.model_dump(mode="json") for r in records]}
        sys.stdout.write(json.dumps(data, ensure_ascii=False, indent=2) + "\n")
        return
    if not records:
        settings.out.print(
            f"{user_id}: stored history but no call records (calls before the call log)",
            markup=False,
        )
        return
    settings.out.print(trace_table(user_id, records))


# -- demo ------------------------------------------------------------------------------------------


# -- memory: facts and recall ----------------------------------------------------------------


def _facts_detail_table(facts: Sequence[Fact], title: str) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("key", no_wrap=True, style="cyan")
    table.add_column("fact", overflow="fold")
    table.add_column("from", no_wrap=True)
    table.add_column("source turns", overflow="fold", style="dim")
    table.add_column("since (UTC)", no_wrap=True, style="dim")
    for f in facts:
        table.add_row(
            escape(f.key),
            escape(f.text),
            escape(f.origin),
            escape(", ".join(f.source_turn_ids)),
            _fmt_time(f.created_at),
        )
    return table


@app.command()
def facts(
    ctx: typer.Context,
    user: Annotated[str, typer.Argument(metavar="USER", help="The caller's user id.")],
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """List a caller's durable facts: key, text, where each came from, source turns."""
    settings = _settings(ctx)
    user_id = _user(settings, user)
    stored = run(settings, lambda store: store.load_facts(user_id))
    if as_json:
        for f in stored:
            line = json.dumps(f.model_dump(mode="json"), ensure_ascii=False)
            settings.out.print(line, markup=False, soft_wrap=True, highlight=False)
        return
    if not stored:
        settings.out.print(f"no facts stored for {user_id!r}", markup=False)
        return
    settings.out.print(_facts_detail_table(stored, f"Facts of {escape(user_id)}"))


@app.command()
def forget(
    ctx: typer.Context,
    user: Annotated[str, typer.Argument(metavar="USER", help="The caller's user id.")],
    key: Annotated[str, typer.Argument(metavar="KEY", help="The fact's key (see `facts USER`).")],
) -> None:
    """Delete one durable fact of a caller (exit 2 when there is no such fact)."""
    settings = _settings(ctx)
    user_id = _user(settings, user)

    async def op(store: HistoryStore) -> bool:
        return await store.delete_fact(user_id, key)

    if not run(settings, op):
        raise fail(settings, CliError(f"no fact {key!r} stored for {user_id!r}", ExitCode.NOT_FOUND))
    settings.out.print(f"deleted fact {key!r} of {user_id!r}", markup=False, soft_wrap=True)


@app.command()
def recall(
    ctx: typer.Context,
    user: Annotated[str, typer.Argument(metavar="USER", help="The caller's user id.")],
    query: Annotated[str, typer.Argument(metavar="QUERY", help="Words to look for.")],
    k: Annotated[int, typer.Option("-k", min=1, max=100, help="Most turns to show.")] = 5,
) -> None:
    """Search a caller's stored turns as the agent's recall tool does (best match first)."""
    settings = _settings(ctx)
    user_id = _user(settings, user)
    hits = run(settings, lambda store: store.search_turns(user_id, query, k))
    if not hits:
        settings.out.print(f"no stored turn of {user_id!r} matches {query!r}", markup=False)
        return
    table = _turns_table([h.turn for h in hits], f"Recall for {escape(user_id)}: {escape(query)}")
    settings.out.print(table)


@app.command()
def demo(
    ctx: typer.Context,
    db: Annotated[
        Path | None,
        typer.Option(
            help="Keep the demo's SQLite store in this file (default: a temporary one). "
            "The demo never uses --store.",
            dir_okay=False,
        ),
    ] = None,
    user: Annotated[str, typer.Option(help="The demo caller's user id.")] = "demo-caller",
    provider: Annotated[
        Provider,
        typer.Option(help="Which realtime API the emulator plays (azure: legacy beta dialect)."),
    ] = Provider.azure,
    mode: Annotated[
        Mode, typer.Option("--mode", "-m", help="Replay mode (items shows one item per turn).")
    ] = Mode.items,
    forget_history: Annotated[
        bool,
        typer.Option(
            "--forget-history",
            help="Delete call 1's turns before call 2 (facts stay): the checks then fail, "
            "which shows they test the replayed history.",
        ),
    ] = False,
) -> None:
    """Run the offline demo: two calls of one caller, real livekit AgentSession, local
    realtime emulator, SQLite store; no credentials or network needed."""
    from .demo import run_demo

    settings = _settings(ctx)
    user_id = _user(settings, user)
    if db is not None and not db.parent.is_dir():
        raise fail(settings, CliError(f"no such directory: {str(db.parent)!r}", ExitCode.USAGE))
    with _logging(settings):
        try:
            result = asyncio.run(
                run_demo(
                    db_path=db,
                    user_id=user_id,
                    provider=provider.value,  # type: ignore[arg-type]
                    mode=mode.value,  # type: ignore[arg-type]
                    console=settings.out,
                    verbose=settings.verbose,
                    forget_history=forget_history,
                )
            )
        except (typer.Exit, KeyboardInterrupt):
            raise
        except Exception as e:
            raise fail(settings, e) from None
    if not result.ok:
        failed = "; ".join(text for text, ok in result.checks if not ok)
        raise fail(settings, CliError(f"demo check failed: {failed}", ExitCode.DEMO_FAILED))




async def _until_stopped() -> None:
    """Until SIGINT (Ctrl+C) or SIGTERM, even where the shell started us with SIGINT
    ignored (a background job of a script), which would leave Ctrl+C no effect."""
    import signal

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


@app.command()
def emulator(
    ctx: typer.Context,
    port: Annotated[
        int, typer.Option(min=0, max=65535, help="Port on 127.0.0.1 (0: any free one).")
    ] = 8765,
) -> None:
    """Serve the bundled realtime emulator on 127.0.0.1 until Ctrl+C, with the demo's
    scripted model; point `examples/voice_agent.py console --text` at it."""
    from .demo import _demo_reply, _Seen
    from .testing import RealtimeEmulator

    settings = _settings(ctx)

    async def serve() -> None:
        async with RealtimeEmulator(reply=_demo_reply(_Seen()), port=port) as emu:
            settings.out.print(
                f"realtime emulator on {emu.base_url} (Ctrl+C stops it); in another terminal:\n"
                f"  export AZURE_OPENAI_ENDPOINT={emu.base_url} "
                f"AZURE_OPENAI_API_KEY={emu.api_key} AZURE_OPENAI_DEPLOYMENT={emu.model}\n"
                "  python examples/voice_agent.py console --text",
                markup=False,
                soft_wrap=True,
                highlight=False,
            )
            await _until_stopped()
        settings.out.print("emulator stopped", markup=False)

    try:
        asyncio.run(serve())
    except OSError as e:  # the port is taken
        message = f"cannot listen on 127.0.0.1:{port}: {e.strerror or e}"
        raise fail(settings, CliError(message, ExitCode.USAGE)) from None
def main(argv: Sequence[str] | None = None) -> int:
    """Console-script entry point; returns the exit code."""
    try:
        app(args=list(argv) if argv is not None else None, prog_name="livekit-history")
    except SystemExit as e:
        code = e.code
        return code if isinstance(code, int) else (0 if code is None else ExitCode.USAGE)
    return ExitCode.OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
