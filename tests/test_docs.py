"""The documentation stays true: generated references are current, every CLI command and
option is documented, every setting is in the reference, and quickstart code runs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import pytest

from bottomless.cli import cli
from bottomless.settings import Settings, env_var

ROOT = Path(__file__).resolve().parent.parent


def test_generated_reference_is_current() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "docs" / "gen_reference.py"), "--check"],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_cli_command_and_option_is_documented() -> None:
    reference = (ROOT / "docs" / "reference" / "cli.md").read_text()
    operations = (ROOT / "docs" / "guides" / "operations.md").read_text()
    assert isinstance(cli, click.Group)
    for name, command in cli.commands.items():
        assert f"## `bottomless {name}`" in reference
        assert f"bottomless {name}" in operations or name == "restore"
        section = reference.split(f"## `bottomless {name}`", 1)[1].split("\n## ", 1)[0]
        for param in command.params:
            if isinstance(param, click.Option):
                for flag in param.opts:
                    assert f"`{flag}`" in section, f"{name} {flag} is not documented"
    # a docstring's indentation would turn a command's description into a code block
    outside_fences = re.sub(r"```.*?```", "", reference, flags=re.DOTALL)
    assert not re.findall(r"^    \S.*", outside_fences, flags=re.MULTILINE)


def test_every_setting_is_documented() -> None:
    reference = (ROOT / "docs" / "reference" / "settings.md").read_text()
    readme = (ROOT / "README.md").read_text()
    for name in Settings.model_fields:
        assert f"`{name}`" in reference and env_var(name) in reference
        assert name in readme, f"README's configuration table misses {name}"


def _python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


def _run_block(block: str, cwd: Any) -> subprocess.CompletedProcess[str]:
    """Run a page's code block in a fresh interpreter, without LIBSQL_BOTTOMLESS_* set."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIBSQL_BOTTOMLESS_")}
    result = subprocess.run(
        [sys.executable, "-c", block], cwd=cwd, capture_output=True, text=True, env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result


@pytest.mark.parametrize("page", ["README.md", "docs/index.md"])
def test_quickstart_code_runs(page: str, tmp_path: Any) -> None:
    block = _python_blocks(ROOT / page)[0]
    assert "bottomless.connect" in block
    _run_block(block, tmp_path)
    copies = list(tmp_path.glob("*.db"))
    assert len(copies) >= 2, "the quickstart should leave the database and its restored copy"


def test_the_sqlite3_guide_example_runs_and_replicates(tmp_path: Any) -> None:
    block = _python_blocks(ROOT / "docs" / "guides" / "sqlite3.md")[0]
    assert "import bottomless.dbapi as sqlite3" in block
    result = _run_block(block, tmp_path)
    assert result.stdout.strip() == "(1,)"
    assert (tmp_path / "replicas" / "app.db" / "generations").is_dir()


def test_the_docs_build_check_can_fail() -> None:
    """``--quiet`` hides the warnings ``--strict`` counts: the docs step must not pass it."""
    dev = (ROOT / "dev.py").read_text()
    command = dev[dev.index('"mkdocs"'):]
    command = command[: command.index("]")]
    assert '"--strict"' in command and '"--quiet"' not in command, command
