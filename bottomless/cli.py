"""The ``bottomless`` command line: a thin layer over the library.

Backend, bucket and endpoint come from the same ``LIBSQL_BOTTOMLESS_*`` environment variables
as the library, and from options, which win. Every listing prints a table on a terminal and
JSON with ``--json``. Logging: ``-v`` (info), ``-vv`` (debug), or ``LIBSQL_BOTTOMLESS_LOG``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import click

from bottomless.errors import BottomlessError, ConfigError
from bottomless.replica.command import follow, promote

if TYPE_CHECKING:
    from bottomless import api
    from bottomless.settings import Settings
else:

    class _ImportedOnUse:
        """A module imported when one of its names is first read.

        The library (apsw, pydantic, the engine) and the backends (botocore) are imported by
        the command that needs them, never at start-up: ``bottomless --help`` loads click and
        little else (a test checks which modules it loads).
        """

        def __init__(self, name: str) -> None:
            self._name = name

        def __getattr__(self, attribute: str) -> Any:
            return getattr(importlib.import_module(self._name), attribute)

    api = _ImportedOnUse("bottomless.api")

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}


def _settings(options: dict[str, Any]) -> Settings:
    import bottomless.backends.registry  # noqa: F401 - Settings checks backend names against it
    from bottomless.settings import load_settings

    return load_settings(**{k: v for k, v in options.items() if v is not None})


def store_options(function: Any) -> Any:
    """The options every command shares to say where the replicas are."""
    for option in reversed([
        # any registered backend: Settings checks the name and lists the allowed ones
        click.option("--backend", metavar="NAME",
                     help="Where replicas live: s3, file, memory or a registered backend"
                     " [env LIBSQL_BOTTOMLESS_BACKEND]."),
        click.option("--bucket", help="Bucket, or directory for the file backend"
                     " [env LIBSQL_BOTTOMLESS_BUCKET]."),
        click.option("--endpoint", help="S3 endpoint URL [env LIBSQL_BOTTOMLESS_ENDPOINT]."),
    ]):
        function = option(function)
    return function


def target_options(function: Any) -> Any:
    """The options that pick a point in time."""
    for option in reversed([
        click.option("--generation", "generation", help="Generation id (default: newest)."),
        click.option("--commit", "commit", type=int, help="Exact commit number, as `ls` shows."),
        click.option("--timestamp", "timestamp",
                     help="Last commit at or before this ISO 8601 time, e.g."
                     " 2026-11-25T10:00:00Z."),
    ]):
        function = option(function)
    return function


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")


@contextlib.contextmanager
def _progress(label: str, total: int | None = None) -> Iterator[Callable[[int], None] | None]:
    """A byte progress bar on a terminal (stderr); nothing when not attached to one."""
    if not sys.stderr.isatty():
        yield None
        return
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    columns = [TextColumn(label), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
               TimeRemainingColumn()]
    with Progress(*columns, transient=True) as bar:
        task = bar.add_task(label, total=total)
        yield lambda size: bar.advance(task, size)


def _terminal_progress(label: str, total: int) -> Callable[[int], None]:
    """A progress bar for an upload at open (the shell's initial replication)."""
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TransferSpeedColumn,
    )

    bar = Progress(TextColumn(label), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                   transient=True)
    task = bar.add_task(label, total=total)
    bar.start()
    done = [0]

    def advance(size: int) -> None:
        done[0] += size
        bar.advance(task, size)
        if done[0] >= total:
            bar.stop()

    return advance


#: columns whose values are copied into other commands: never cut or wrapped
_WHOLE_COLUMNS = ("generation", "db_name", "time", "timestamp", "started", "last_commit_time",
                  "snapshot", "key")


def _table(title: str, rows: list[dict[str, Any]], console: Any = None) -> None:
    """Print ``rows``: a table on a terminal, tab-separated lines in a pipe or a file.

    Ids and timestamps are never cut: on a narrow terminal the other columns wrap.
    """
    if not rows:
        click.echo(f"{title}: none")
        return
    cells = [["" if v is None else str(v) for v in row.values()] for row in rows]
    if console is None and not sys.stdout.isatty():
        click.echo(f"# {title}")
        click.echo("\t".join(rows[0]))
        for line in cells:
            click.echo("\t".join(line))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for index, column in enumerate(rows[0]):
        if column in _WHOLE_COLUMNS or column.endswith(("_id", "_time")):
            width = max(len(line[index]) for line in cells)
            table.add_column(column.replace("_", " "), no_wrap=True, min_width=width)
        else:
            table.add_column(column.replace("_", " "), overflow="fold")
    for line in cells:
        table.add_row(*line)
    (console or Console()).print(table)


def _size(count: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024  # type: ignore[assignment]
    return str(count)


def _emit(as_json: bool, title: str, rows: list[dict[str, Any]]) -> None:
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        _table(title, rows)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True,
              help="More logging: -v info, -vv debug (default from LIBSQL_BOTTOMLESS_LOG).")
def cli(verbose: int) -> None:
    """Operate on bottomless replicas of SQLite databases."""
    level_name = os.environ.get("LIBSQL_BOTTOMLESS_LOG", "warning").lower()
    if level_name not in _LEVELS:
        raise ConfigError(
            f"LIBSQL_BOTTOMLESS_LOG={level_name!r}: allowed values are debug, info, warning",
            field="LIBSQL_BOTTOMLESS_LOG", value=level_name, allowed=list(_LEVELS),
        )
    level = _LEVELS[level_name]
    if verbose:
        level = logging.DEBUG if verbose > 1 else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    # the S3 libraries' debug output prints request headers, credentials and session tokens
    # among them: never below info, and at info only with -vv (it is noise otherwise)
    for name in ("botocore", "aiobotocore", "s3fs", "urllib3"):
        logging.getLogger(name).setLevel(logging.INFO if level <= logging.DEBUG
                                          else logging.WARNING)


@cli.command()
@click.argument("db_name")
@click.option("-o", "--output", "output", required=True, type=click.Path(dir_okay=False),
              help="File to write the restored database to.")
@click.option("--force", is_flag=True, help="Replace OUTPUT if it exists.")
@target_options
@store_options
def restore(db_name: str, output: str, force: bool, generation: str | None, commit: int | None,
            timestamp: str | None, **options: Any) -> None:
    """Restore DB_NAME into a plain SQLite file (newest commit, or a point in time)."""
    from bottomless.format import iso_time

    with _progress("restoring") as progress:
        result = api.restore(
            output, _settings(options), db_name=db_name, overwrite=force, generation=generation,
            commit=commit, timestamp=timestamp, progress=progress,
        )
    click.echo(
        f"restored {result.db_name} generation {result.generation} commit {result.seq}"
        f" ({iso_time(result.created_ms)}, {result.db_size} pages of {result.page_size}"
        f" bytes) to {output} in {result.seconds:.2f}s"
    )


@cli.command(name="ls")
@click.argument("db_name", required=False)
@click.option("--generation", help="List the commits of this generation.")
@json_option
@store_options
def list_command(db_name: str | None, generation: str | None, as_json: bool,
                 **options: Any) -> None:
    """List databases; with DB_NAME its generations; with --generation its commits."""
    settings = _settings(options)
    if db_name is None:
        if generation is not None:
            raise click.UsageError("--generation needs a DB_NAME")
        names = api.ls(None, settings)
        _emit(as_json, f"databases in {settings.bucket} ({settings.backend})",
              [{"db_name": n} for n in names])
    elif generation is None:
        gens = api.ls(db_name, settings)
        if as_json:
            _emit(True, "", [dataclasses.asdict(g) for g in gens])
        else:
            _table(f"generations of {db_name}", [{
                "generation": g.generation,
                "started": (g.started or "incomplete")[:19],
                "reason": g.reason,
                "snapshot": _size(g.snapshot_bytes),
                "snapshots": len(g.snapshots),
                "commits": g.commits,
                "first commit": (g.first_commit_time or "")[:19],
                "last commit": (g.last_commit_time or "")[:19],
            } for g in gens])
    else:
        commits = api.ls(db_name, settings, generation=generation)
        _emit(as_json, f"commits of {db_name} generation {generation}",
              [dataclasses.asdict(c) for c in commits])


@cli.command()
@click.argument("db_name")
@target_options
@json_option
@store_options
def verify(db_name: str, generation: str | None, commit: int | None, timestamp: str | None,
           as_json: bool, **options: Any) -> None:
    """Check every object of DB_NAME, restore it to a temporary file and integrity-check it.

    Exits with status 1 if anything is wrong; the report names each faulty object.
    """
    settings = _settings(options)
    with _progress("verifying") as progress:
        report = api.verify(db_name, settings, generation=generation, commit=commit,
                            timestamp=timestamp, progress=progress)
    if as_json:
        click.echo(json.dumps({**dataclasses.asdict(report), "ok": report.ok}, indent=2))
    else:
        click.echo(f"verified {db_name}: {report.objects} objects, {report.bytes} bytes read")
        if report.restore_seconds is not None:
            click.echo(f"restore of generation {report.generation} commit {report.seq} took"
                       f" {report.restore_seconds:.2f}s (RTO); integrity_check:"
                       f" {report.integrity}")
        for problem in report.problems:
            click.echo(f"PROBLEM: {problem}")
        click.echo("OK" if report.ok else f"FAILED: {len(report.problems)} problem(s)")
    if not report.ok:
        sys.exit(1)


@cli.command()
@click.argument("db_name")
@click.option("--older-than", help="Keep every point newer than this (30s, 15m, 12h, 7d, 2w)"
              " [env LIBSQL_BOTTOMLESS_RETENTION, default 7d].")
@click.option("--keep", "keep", type=int,
              help="Also keep the newest N snapshots restorable"
              " [env LIBSQL_BOTTOMLESS_KEEP_SNAPSHOTS].")
@click.option("--dry-run", is_flag=True, help="Only show what would be built and deleted.")
@json_option
@store_options
def gc(db_name: str, older_than: str | None, keep: int | None, dry_run: bool, as_json: bool,
       **options: Any) -> None:
    """Delete objects of DB_NAME that no point inside retention needs.

    When no snapshot stands at the start of the retention window, one is built there first,
    from the bucket, so that the log before it can go too.
    """
    report = api.gc(db_name, _settings(options), older_than=older_than, keep_snapshots=keep,
                    dry_run=dry_run)
    if as_json:
        click.echo(json.dumps(dataclasses.asdict(report), indent=2))
        return
    if report.snapshot_built is not None:
        built = "would build" if dry_run else "built"
        click.echo(f"{built} a snapshot at commit {report.snapshot_built} of generation"
                   f" {report.kept_generations[-1]}")
    verb = "would delete" if dry_run else "deleted"
    for key in [*report.deleted, *report.temporaries]:
        click.echo(f"{verb} {key}")
    click.echo(f"{db_name}: {verb} {len(report.deleted)} objects; every point since"
               f" {report.window_start} stays restorable")


@cli.command()
@click.argument("path", type=click.Path(dir_okay=False))
@click.argument("shell_args", nargs=-1, type=click.UNPROCESSED, metavar="[-- SHELL_ARGS]...")
@click.option("--db-name", help="Name in the bucket (default: the file's base name).")
@click.option("--initial-replication", type=click.Choice(["error", "force", "skip"]),
              help="What to do if the file and the bucket disagree.")
@store_options
def shell(path: str, shell_args: tuple[str, ...], db_name: str | None,
          initial_replication: str | None, **options: Any) -> None:
    """Open the SQLite shell (apsw) on PATH through bottomless.

    A missing file is restored first; every commit made in the shell is replicated. After
    `--`, the arguments are the sqlite3 shell's own: options (`-csv`, `-header`,
    `-separator ,` ...), then SQL statements or dot-commands, which are run in turn instead
    of the interactive loop (`bottomless shell app.db -- -header "SELECT 1"`).
    """
    import apsw.shell

    options.update(db_name=db_name, initial_replication=initial_replication)
    if sys.stderr.isatty():
        from bottomless.sqlite import vfs

        vfs.register(None).progress = _terminal_progress
    connection = None
    try:
        connection = api.connect(path, _settings(options))
        shell = apsw.shell.Shell(db=connection)
    except apsw.Error as e:  # not a database, a directory that does not exist ...
        if connection is not None:
            connection.close()
        raise click.ClickException(f"cannot open {path}: {e}") from None
    try:
        _run_shell(shell, shell_args)
    finally:
        connection.close()


def _run_shell(shell: Any, shell_args: tuple[str, ...]) -> None:
    """Apply the sqlite3-shell options of ``shell_args``, then run its commands, stopping at
    the first that fails, with exit status 1; with none, the interactive loop."""
    shell_options, commands = _split_shell_args(shell_args)
    try:
        shell.process_args(shell_options)
    except shell.Error as e:  # an unknown shell option, a missing value ...
        raise click.ClickException(str(e)) from None
    except Exception:  # noqa: BLE001 - in an -init file: said, and the run goes on (sqlite3)
        _said(shell)  # (with -bail, it stops there)
    for command in commands:
        try:
            shell.process_complete_line(command)
        except Exception:  # noqa: BLE001 - any failure of the command: SQL, I/O, a dot-command
            _said(shell, stop=True)
    if not commands:
        shell.cmdloop()


def _said(shell: Any, *, stop: bool = False) -> None:
    """Print the failure being handled as the interactive shell does; exit with status 1 if
    ``stop``, or if the shell bails (``-bail``), which raises it again once printed."""
    try:
        shell.handle_exception()
    except Exception:  # noqa: BLE001 - printed already: -bail's way of stopping
        stop = True
    if stop:
        sys.exit(1)


#: the sqlite3 shell's options that take a value
_SHELL_VALUED = frozenset({"init", "separator", "nullvalue", "encoding"})


def _split_shell_args(args: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """The sqlite3-shell options of ``args`` (anywhere, as sqlite3 takes them), and the
    commands (given to the shell as options, the first would be a database to open instead
    of PATH)."""
    options: list[str] = []
    commands: list[str] = []
    rest = list(args)
    while rest:
        argument = rest.pop(0)
        if not argument.startswith("-"):
            commands.append(argument)
            continue
        options.append(argument)
        if argument.lstrip("-") in _SHELL_VALUED and rest:
            options.append(rest.pop(0))
    return options, commands


cli.add_command(store_options(follow))  # defined beside bottomless.Replica
cli.add_command(store_options(promote))


def main() -> None:
    """Console-script entry point: clear one-line errors instead of tracebacks."""
    try:
        cli(standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        click.echo("Aborted!", err=True)  # Ctrl-C
        sys.exit(1)
    except BottomlessError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(1)
    except BrokenPipeError:  # the reader went away (`| head`): nothing to say to it
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    except OSError as e:  # a local file: a missing directory, no permission, a full disk
        click.echo(f"error: {e}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
