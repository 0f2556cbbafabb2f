"""The ``bottomless`` command line: a thin layer over the library.

Backend, bucket and endpoint come from the same ``LIBSQL_BOTTOMLESS_*`` environment variables
as the library, and from options, which win.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import click

from bottomless.api import restore as restore_database
from bottomless.errors import BottomlessError
from bottomless.settings import Settings, load_settings

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}


def _settings(options: dict[str, Any]) -> Settings:
    given = {k: v for k, v in options.items() if v is not None}
    return load_settings(**given)


def _store_options(function: Any) -> Any:
    for option in reversed(
        [
            click.option("--backend", type=click.Choice(["s3", "file", "memory"]),
                         help="Where replicas live [env LIBSQL_BOTTOMLESS_BACKEND]."),
            click.option("--bucket", help="Bucket, or directory for the file backend"
                         " [env LIBSQL_BOTTOMLESS_BUCKET]."),
            click.option("--endpoint", help="S3 endpoint URL [env LIBSQL_BOTTOMLESS_ENDPOINT]."),
        ]
    ):
        function = option(function)
    return function


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True,
              help="More logging (-v info, -vv debug); default from LIBSQL_BOTTOMLESS_LOG.")
def cli(verbose: int) -> None:
    """Operate on bottomless replicas of SQLite databases."""
    level_name = os.environ.get("LIBSQL_BOTTOMLESS_LOG", "warning").lower()
    level = _LEVELS.get(level_name, logging.WARNING)
    if verbose:
        level = logging.DEBUG if verbose > 1 else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


@cli.command()
@click.argument("db_name")
@click.option("-o", "--output", "output", required=True, type=click.Path(dir_okay=False),
              help="File to write the restored database to.")
@click.option("--force", is_flag=True, help="Replace OUTPUT if it exists.")
@_store_options
def restore(db_name: str, output: str, force: bool, **options: Any) -> None:
    """Restore the newest replicated state of DB_NAME into a plain SQLite file."""
    result = restore_database(
        output, _settings(options), db_name=db_name, overwrite=force
    )
    click.echo(
        f"restored {result.db_name} (generation {result.generation}, commit {result.seq},"
        f" {result.db_size} pages of {result.page_size} bytes) to {output}"
        f" in {result.seconds:.2f}s"
    )


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
        sys.exit(1)
    except BottomlessError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
