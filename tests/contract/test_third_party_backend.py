"""A backend from outside bottomless: registered with :func:`bottomless.register_backend`, held
to the contract suite, and used by a real database through ``Settings(backend=...)``.

Also the registry's own rules: clobbering, lazy ``"module:Class"`` imports with an install
hint, entry points, and the names Settings accepts.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import integrity, restored, rows

import bottomless
from bottomless import (
    ConfigError,
    ObjectChangedError,
    ObjectExistsError,
    ObjectNotFoundError,
    PageStore,
    Settings,
)
from bottomless.backends import BackendRegistry, backend_registry, open_store
from bottomless.backends.memory import MemoryPageStore
from bottomless.testing.contract import PageStoreContract


# --8<-- [start:dict-store]
class Shelves:
    """The buckets of every DictPageStore in this process: key -> (bytes, version)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.buckets: dict[str, dict[str, tuple[bytes, str]]] = {}

    def bucket(self, name: str) -> dict[str, tuple[bytes, str]]:
        with self.lock:
            return self.buckets.setdefault(name, {})


SHELVES = Shelves()


class DictPageStore(PageStore):
    """A complete backend: objects in a dict, one dict per bucket name, shared in-process."""

    backend = "dict-test"

    def __init__(self, bucket: str) -> None:
        self.bucket = bucket
        self.objects = SHELVES.bucket(bucket)
        self.lock = SHELVES.lock  # one lock makes every check-then-write atomic

    @classmethod
    def from_settings(cls, settings: Settings) -> DictPageStore:
        return cls(settings.bucket)

    @property
    def location(self) -> str:
        return f"dict://{self.bucket}"  # no credentials in here, ever

    def put_if_absent(self, key: str, data: bytes) -> None:
        with self.lock:
            if key in self.objects:  # even when it holds the same bytes
                raise ObjectExistsError(f"{self.location}: {key} already exists")
            self.objects[key] = (bytes(data), uuid.uuid4().hex)

    def get(self, key: str) -> bytes:
        return self.get_versioned(key)[0]

    def get_range(self, key: str, start: int, end: int) -> bytes:
        return self.get(key)[start:end]  # fewer bytes at the end, b"" past it

    def list_keys(self, prefix: str) -> list[str]:
        with self.lock:
            return sorted(key for key in self.objects if key.startswith(prefix))

    def list_children(self, prefix: str) -> list[str]:
        keys = self.list_keys(prefix)
        return sorted({key[len(prefix):].split("/", 1)[0] for key in keys})

    def delete(self, key: str) -> None:
        with self.lock:
            self.objects.pop(key, None)  # a missing key is not an error

    def get_versioned(self, key: str) -> tuple[bytes, str]:
        with self.lock:
            if key not in self.objects:
                raise ObjectNotFoundError(f"{self.location}: {key} does not exist")
            return self.objects[key]

    def put_if_match(self, key: str, data: bytes, version: str) -> str:
        with self.lock:
            if key not in self.objects or self.objects[key][1] != version:
                raise ObjectChangedError(f"{self.location}: {key} changed or is gone")
            self.objects[key] = (bytes(data), uuid.uuid4().hex)
            return self.objects[key][1]
# --8<-- [end:dict-store]


NAME = DictPageStore.backend


@pytest.fixture
def registered() -> Iterator[str]:
    """DictPageStore registered under NAME for one test."""
    bottomless.register_backend(NAME, DictPageStore)
    yield NAME
    backend_registry.unregister(NAME)


class TestDictPageStore(PageStoreContract):
    """The contract suite, run on the third-party backend opened through the registry."""

    @pytest.fixture
    def store(self, registered: str) -> Iterator[PageStore]:
        store = open_store(Settings(backend=registered, bucket=f"b-{uuid.uuid4().hex}"))
        assert isinstance(store, DictPageStore)
        yield store
        store.close()


def test_a_database_replicates_through_a_registered_backend(registered: str, tmp_path: Any) -> None:
    settings = Settings(backend=registered, bucket=f"b-{uuid.uuid4().hex}")
    db = bottomless.connect(str(tmp_path / "app.db"), settings)
    db.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
    for i in range(20):
        db.execute("INSERT INTO t(v) VALUES(?)", (f"row {i}",))
    expected = db.execute("SELECT * FROM t ORDER BY id").fetchall()
    db.close()
    objects = SHELVES.bucket(settings.bucket)
    assert any(key.startswith("app.db/") for key in objects)
    copy = restored(tmp_path, settings, "app.db")
    assert integrity(copy) == "ok"
    assert rows(copy, "SELECT * FROM t ORDER BY id") == expected


def test_the_environment_and_uri_select_a_registered_backend(
    registered: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LIBSQL_BOTTOMLESS_BACKEND", registered)
    assert bottomless.settings.load_settings().backend == registered
    assert bottomless.settings.resolve(Settings(backend="memory"), {"backend": registered}
                                       ).backend == registered


def test_an_unregistered_backend_is_a_config_error_naming_the_setting() -> None:
    with pytest.raises(ConfigError) as raised:
        bottomless.settings.load_settings(backend=NAME)
    message = str(raised.value)
    for word in (NAME, "LIBSQL_BOTTOMLESS_BACKEND", "URI parameter backend", "'memory'", "'s3'",
                 "register_backend"):
        assert word in message
    assert raised.value.field == "backend" and raised.value.value == NAME
    assert raised.value.allowed == ("file", "memory", "s3")


def test_importing_bottomless_imports_neither_pytest_nor_the_testing_helpers() -> None:
    code = (
        "import sys, bottomless, bottomless.backends.registry\n"
        "loaded = [m for m in sys.modules if m.split('.')[0] in ('pytest', '_pytest')"
        " or m.startswith('bottomless.testing')]\n"
        "assert not loaded, loaded\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_unregistering_makes_open_store_refuse_settings_made_before(registered: str) -> None:
    settings = Settings(backend=registered, bucket="x")
    backend_registry.unregister(registered)
    try:
        with pytest.raises(ConfigError) as raised:
            open_store(settings)
        assert raised.value.field == "backend" and raised.value.value == registered
        assert "LIBSQL_BOTTOMLESS_BACKEND" in str(raised.value)
        assert raised.value.allowed is not None and "memory" in raised.value.allowed
    finally:
        bottomless.register_backend(registered, DictPageStore)


# ---------------------------------------------------------------- the registry's rules


def test_registering_a_taken_name_raises_unless_clobber() -> None:
    registry = BackendRegistry()
    registry.register("mine", DictPageStore)
    registry.register("mine", DictPageStore)  # the same factory again: allowed, as in fsspec
    with pytest.raises(ValueError, match="already registered"):
        registry.register("mine", MemoryPageStore)
    with pytest.raises(ValueError, match="already registered"):
        registry.register("memory", DictPageStore)
    registry.register("memory", DictPageStore, clobber=True)
    assert isinstance(registry.open(Settings(backend="memory", bucket="b")), DictPageStore)
    registry.reset()
    assert registry.names() == ["file", "memory", "s3"]
    assert isinstance(registry.open(Settings(backend="memory", bucket="b")), MemoryPageStore)


@pytest.mark.parametrize(("name", "factory", "error"), [
    ("Upper", DictPageStore, ValueError),
    ("", DictPageStore, ValueError),
    ("has space", DictPageStore, ValueError),
    ("dotted", "no.colon.Here", ValueError),
    ("number", 42, TypeError),
])
def test_bad_names_and_factories_are_refused(name: str, factory: Any, error: type) -> None:
    with pytest.raises(error):
        BackendRegistry().register(name, factory)


@pytest.fixture
def scratch_name() -> Iterator[str]:
    """A backend name no one uses; unregistered after the test if the test registered it."""
    name = f"scratch-{uuid.uuid4().hex[:8]}"
    yield name
    if name in backend_registry:
        backend_registry.unregister(name)


def test_a_plain_callable_is_a_factory(scratch_name: str) -> None:
    seen: list[Settings] = []

    def build(settings: Settings) -> PageStore:
        seen.append(settings)
        return DictPageStore(settings.bucket)

    bottomless.register_backend(scratch_name, build)
    settings = Settings(backend=scratch_name, bucket="b")
    assert isinstance(open_store(settings), DictPageStore)
    assert seen == [settings]


def test_a_factory_that_returns_no_pagestore_is_a_type_error(scratch_name: str) -> None:
    bottomless.register_backend(scratch_name, lambda settings: object())
    with pytest.raises(TypeError, match="not a PageStore"):
        open_store(Settings(backend=scratch_name))


def test_a_module_class_string_is_imported_on_first_open(scratch_name: str) -> None:
    bottomless.register_backend(scratch_name, "tests_lazy_backend_module:LazyStore")
    assert "tests_lazy_backend_module" not in sys.modules
    settings = Settings(backend=scratch_name)  # known by name before its module is imported
    with pytest.raises(ConfigError, match="tests_lazy_backend_module"):
        open_store(settings)
    bottomless.register_backend(scratch_name, f"{__name__}:DictPageStore", clobber=True)
    assert isinstance(open_store(settings), DictPageStore)


def test_a_missing_dependency_says_what_to_install(scratch_name: str) -> None:
    bottomless.register_backend(scratch_name, "bottomless_no_such_module:Store",
                                extra="bottomless-absent")
    with pytest.raises(ConfigError) as raised:
        open_store(Settings(backend=scratch_name))
    assert "pip install 'bottomless-absent'" in str(raised.value)
    assert "bottomless_no_such_module" in str(raised.value)
    assert isinstance(raised.value.__cause__, ImportError)
    bottomless.register_backend(scratch_name, f"{__name__}:NoSuchStore", clobber=True)
    with pytest.raises(ConfigError, match="NoSuchStore does not exist"):
        open_store(Settings(backend=scratch_name))


def test_the_s3_backend_without_its_extra_says_to_install_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delitem(sys.modules, "bottomless.backends.s3", raising=False)
    monkeypatch.setitem(sys.modules, "s3fs", None)  # as if s3fs were not installed
    with pytest.raises(ConfigError) as raised:
        open_store(Settings(backend="s3"))
    assert "pip install 'bottomless[s3]'" in str(raised.value)
    assert "s3fs" in str(raised.value)


def test_installed_packages_declare_backends_by_entry_point(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    point = importlib.metadata.EntryPoint(
        name="from-plugin", value=f"{__name__}:DictPageStore", group="bottomless.backends"
    )
    taken = importlib.metadata.EntryPoint(
        name="memory", value=f"{__name__}:DictPageStore", group="bottomless.backends"
    )
    real = importlib.metadata.entry_points

    def entry_points(**selection: Any) -> Any:
        if selection.get("group") == "bottomless.backends":
            return importlib.metadata.EntryPoints([point, taken])
        return real(**selection)

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    registry = BackendRegistry()
    assert "from-plugin" in registry.names()
    assert isinstance(registry.factory("from-plugin")(Settings(backend="memory")),
                      DictPageStore)
    # an entry point never takes a name already registered
    assert isinstance(registry.open(Settings(backend="memory", bucket="b")), MemoryPageStore)


# ---------------------------------------------------------------- the guide's examples

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "guides" / "writing-a-backend.md"


def _with_snippets(block: str) -> str:
    """``block`` with each ``--8<-- "path:section"`` line replaced as pymdownx.snippets does."""

    def section(match: re.Match[str]) -> str:
        path, name = match.group(1), match.group(2)
        text = (ROOT / path).read_text()
        start = text.index(f"# --8<-- [start:{name}]\n") + len(f"# --8<-- [start:{name}]\n")
        return text[start : text.index(f"# --8<-- [end:{name}]")]

    return re.sub(r'^--8<-- "([^":]+):([^"]+)"$', section, block, flags=re.M)


def test_the_guide_examples_register_a_backend_that_passes_the_contract(tmp_path: Path) -> None:
    blocks = re.findall(r"```python\n(.*?)```", GUIDE.read_text(), flags=re.S)
    [store] = [b for b in blocks if b.startswith("# my_backend/store.py")]
    [init] = [b for b in blocks if b.startswith("# my_backend/__init__.py")]
    [suite] = [b for b in blocks if "(PageStoreContract)" in b]
    package = tmp_path / "my_backend"
    package.mkdir()
    (package / "store.py").write_text(_with_snippets(store))
    (package / "__init__.py").write_text(init)
    (tmp_path / "test_my_backend.py").write_text(suite)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIBSQL_BOTTOMLESS_")}
    env["PYTHONPATH"] = str(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_my_backend.py"],
        cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    passed = re.search(r"(\d+) passed", result.stdout)
    assert passed and int(passed.group(1)) >= 50, result.stdout[-500:]
