"""``python -m bottomless.dbapi [database [sql]]``: Python 3.12's ``python -m sqlite3`` shell,
over this module, so the database it opens is replicated like any other.

With ``sql`` it runs that one statement and prints the rows; without, it reads statements
from standard input (a prompt per line, a statement runs once it is complete) until
``.quit`` or end of input. ``.version`` prints SQLite's version, ``.help`` the commands.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

import bottomless.dbapi as dbapi

PROMPT = "sqlite> "
CONTINUATION = "    ... "
#: the package this module was imported from: ``sqlite3`` where it stands in for the stdlib's
PROGRAM = f"python -m {__spec__.parent if __spec__ else 'bottomless.dbapi'}"


def run(target: Any, sql: str) -> bool:
    """Run ``sql`` on ``target`` (a connection or cursor) and print its rows; on an error,
    print it to standard error and return False."""
    try:
        for row in target.execute(sql):
            print(row)
    except dbapi.Error as e:
        code = getattr(e, "sqlite_errorname", None)
        kind = type(e).__name__ if code is None else f"{type(e).__name__} ({code})"
        print(f"{kind}: {e}", file=sys.stderr)
        return False
    return True


def _shell(connection: dbapi.Connection, described: str) -> None:
    """Read statements from standard input until ``.quit`` or its end."""
    print(f"SQLite {dbapi.sqlite_version} shell over bottomless.dbapi\n"
          f"Connected to {described}\n"
          "Type SQL statements ending with ';', '.help' for help, '.quit' to leave.",
          file=sys.stderr)
    if sys.stdin.isatty():
        with contextlib.suppress(ImportError):
            import readline  # noqa: F401 - line editing for input()
    cursor = connection.cursor()
    pending: list[str] = []
    while True:
        try:
            line = input(CONTINUATION if pending else PROMPT)
        except EOFError:
            print(file=sys.stderr)
            return
        except KeyboardInterrupt:  # Ctrl-C drops the statement being typed, as a shell does
            print("\nKeyboardInterrupt", file=sys.stderr)
            pending.clear()
            continue
        command = line.strip()
        if not pending and command == ".quit":
            return
        if not pending and command == ".version":
            print(dbapi.sqlite_version)
        elif not pending and command == ".help":
            print("SQL statements run when complete (ended by ';'); .version, .quit")
        elif pending or command:
            pending.append(line)
            source = "\n".join(pending)
            if dbapi.complete_statement(source):
                pending.clear()
                run(cursor, source)


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Parse ``argv`` (default: ``sys.argv[1:]``), run the statement or the shell, and exit:
    status 1 when the statement given on the command line fails."""
    parser = argparse.ArgumentParser(
        prog=PROGRAM, description="An SQLite shell over bottomless.dbapi."
    )
    parser.add_argument("filename", nargs="?", default=":memory:",
                        help="the database (default ':memory:'); created if missing")
    parser.add_argument("sql", nargs="?", help="one statement to run; its rows are printed")
    parser.add_argument("-v", "--version", action="version",
                        version=f"SQLite version {dbapi.sqlite_version}",
                        help="print the version of SQLite and exit")
    args = parser.parse_args(argv)
    memory = args.filename == ":memory:"
    try:
        connection = dbapi.connect(args.filename, isolation_level=None)
    except dbapi.Error as e:  # a bad setting, an unreachable store, a missing directory
        print(f"{PROGRAM}: cannot open {args.filename!r}: {e}", file=sys.stderr)
        sys.exit(1)
    try:
        if args.sql:
            if not run(connection, args.sql):
                sys.exit(1)
        else:
            _shell(connection, "a transient in-memory database" if memory
                   else repr(args.filename))
    finally:
        connection.close()
    sys.exit(0)


if __name__ == "__main__":
    main()
