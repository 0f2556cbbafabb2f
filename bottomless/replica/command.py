"""``bottomless follow``: keep a local file a read replica of a database, until stopped.

The command is defined here, beside :class:`~bottomless.replica.Replica`, and registered by
``bottomless.cli``, which adds the options every command shares (``--backend``, ``--bucket``,
``--endpoint``) and passes them through ``**options``.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from types import FrameType
from typing import TYPE_CHECKING, Any

import click

from bottomless.errors import BottomlessError

if TYPE_CHECKING:
    from bottomless.replica.follower import Replica
    from bottomless.settings import Settings


def _load_settings(options: dict[str, Any], db_name: str) -> Settings:
    """Settings from the environment, the shared options and ``db_name``.

    Like the follower, imported only when a command runs, so that ``bottomless --help`` loads
    neither pydantic nor apsw. The backend registry comes first: Settings checks backend names
    against it.
    """
    import bottomless.backends.registry  # noqa: F401
    from bottomless.settings import load_settings

    return load_settings(**{k: v for k, v in options.items() if v is not None}, db_name=db_name)


def status_line(status: dict[str, Any]) -> str:
    """One line saying where the replica is and how far behind."""
    lag = status.get("lag_seconds")
    parts = [
        f"{status['db_name']} generation {status['generation']} commit {status['seq']}",
        f"lag {lag:.3f}s" if lag is not None else "lag -",
        f"{status['commits_applied']} applied",
    ]
    requests = status.get("requests") or {}
    parts.append(f"{sum(requests.values())} requests")
    if status.get("stopped_by"):
        parts.append(f"STOPPED: {status['stopped_by']}")
    elif status.get("last_error"):
        parts.append(f"last error: {status['last_error']}")
    return ", ".join(parts)


@click.command(name="follow")
@click.argument("db_name")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--poll-interval", type=float, default=1.0, show_default=True,
              help="Seconds to wait after a poll found nothing new (each poll is one GET).")
@click.option("--overwrite", is_flag=True,
              help="Replace a PATH that is not a replica (by default that is an error).")
def follow(db_name: str, path: str, poll_interval: float, overwrite: bool,
           **options: Any) -> None:
    """Keep PATH a read replica of DB_NAME until interrupted (Ctrl-C, SIGTERM).

    A missing PATH is restored first; then each new commit is applied as it appears in the
    store. Readers open PATH read-only, with any SQLite, and see whole commits in order. A
    status line shows the position and the lag (plain lines, one per change, when the output
    is not a terminal). Exits with status 1 if the follower stops on an error.
    """
    from bottomless.replica.follower import Replica

    settings = _load_settings(options, db_name)
    stopping = threading.Event()

    def stop(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    replica = Replica(path, settings, poll_interval=poll_interval, overwrite=overwrite)
    try:
        replica.start()
        _watch(replica, stopping, sys.stdout.isatty())
    finally:
        replica.stop()
        for number, handler in previous.items():
            signal.signal(number, handler)
    if replica.error is not None:
        raise BottomlessError(f"the follower stopped: {replica.error}") from replica.error


def _watch(replica: Replica, stopping: threading.Event, terminal: bool) -> None:
    """Show the status until ``stopping`` is set or the follower stops."""
    shown = ""
    while True:
        line = status_line(replica.status())
        if terminal:
            click.echo("\r" + line.ljust(len(shown)), nl=False)
        elif line.split(", lag")[0] != shown.split(", lag")[0] or "STOPPED" in line:
            click.echo(line)  # a new position (or the end): one plain line
        shown = line
        if replica.error is not None or stopping.wait(0.5 if terminal else 1.0):
            break
    line = status_line(replica.status())
    if terminal:
        click.echo("\r" + line.ljust(len(shown)))
    elif line != shown:
        click.echo(line)  # where it stopped


@click.command(name="promote")
@click.argument("db_name")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--force", is_flag=True,
              help="Take the writer lease now, even if the writer's has not expired (only"
              " once a human has decided the writer is gone).")
@click.option("--timeout", type=click.FloatRange(min=0), default=None,
              help="Give up after this many seconds [default: the lease TTL plus 60].")
def promote(db_name: str, path: str, force: bool, timeout: float | None, **options: Any) -> None:
    """Make the read replica at PATH the writer of DB_NAME.

    Waits for the writer's lease to expire (or takes it at once with --force), applies every
    commit in the store, and leaves PATH as the writer's file: open it with bottomless (a
    connect, the shell, your app) to continue the same history. Stop `bottomless follow` on
    PATH first; a missing PATH is restored. The old writer, if it comes back, has its next
    commit refused. Prints where the new writer starts, as JSON.
    """
    from bottomless.replica.follower import Replica

    settings = _load_settings(options, db_name)
    replica = Replica(path, settings)
    try:
        promotion = replica.promote(force=force, timeout=timeout)
    finally:
        replica.stop()
    click.echo(json.dumps(promotion.to_json()))
