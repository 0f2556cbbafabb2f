"""The registry of backends: which name in ``Settings.backend`` builds which :class:`PageStore`.

One :class:`BackendRegistry` per process, :data:`backend_registry`, owns the table; built-in
backends and third-party ones (:func:`register_backend`, like fsspec's
``register_implementation``) live in it side by side. A backend given as ``"module:Class"`` is
imported only when first opened, so a missing optional dependency matters only for the backend
that needs it, and the error says what to install. Installed packages can also declare backends
in the ``bottomless.backends`` entry-point group (``name = "module:Class"``), which need no
import before use.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, TypeAlias, cast

from bottomless.backends.base import PageStore
from bottomless.errors import BucketNotFoundError, ConfigError, ReplicaNotFoundError
from bottomless.settings import Settings, env_var

#: what :meth:`BackendRegistry.register` accepts: a class with ``from_settings(settings)``, any
#: callable taking Settings and returning a PageStore, or ``"module:Class"`` imported on first use
BackendFactory: TypeAlias = "type[PageStore] | Callable[[Settings], PageStore] | str"

#: entry-point group through which installed packages name their backends
ENTRY_POINT_GROUP = "bottomless.backends"

#: the backends that ship with bottomless: name -> (factory, pip requirement of its dependencies)
BUILTIN_BACKENDS: Mapping[str, tuple[str, str | None]] = MappingProxyType({
    "memory": ("bottomless.backends.memory:MemoryPageStore", None),
    "file": ("bottomless.backends.file:FilePageStore", None),
    "s3": ("bottomless.backends.s3:S3PageStore", "bottomless[s3]"),
})

_NAME = re.compile(r"^[a-z][a-z0-9_.+-]*$")
_TARGET = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


@dataclass(frozen=True)
class _Entry:
    factory: BackendFactory
    extra: str | None


class BackendRegistry:
    """The backends this process can open, by name; the one owner of that table.

    Thread-safe. :data:`backend_registry` is the instance that ``open_store`` and ``Settings``
    consult; tests that register backends undo it with :meth:`unregister` or :meth:`reset`.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}
        self._entry_points_loaded = False
        self.reset()

    def register(
        self,
        name: str,
        factory: BackendFactory,
        *,
        extra: str | None = None,
        clobber: bool = False,
    ) -> None:
        """Make ``Settings(backend=name)`` open stores built by ``factory``.

        ``factory`` is a PageStore subclass (its ``from_settings(settings)`` is called), any
        callable taking :class:`~bottomless.Settings` and returning a PageStore, or the text
        ``"module:Class"``, imported when the backend is first opened. ``extra`` is the pip
        requirement that provides the factory's dependencies (``"bottomless[s3]"``,
        ``"bottomless-gcs"``): when importing them fails, the error says to install it.

        Raises ValueError if ``name`` is taken (registering the very same factory again is
        allowed, as fsspec does) unless ``clobber=True``, which replaces it; ValueError for a
        name other than lowercase ``[a-z][a-z0-9_.+-]*``, and TypeError for a factory that is
        neither callable nor ``"module:Class"`` text.
        """
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValueError(
                f"invalid backend name {name!r}: use lowercase letters, digits and _.+-,"
                " starting with a letter"
            )
        if isinstance(factory, str):
            if not _TARGET.match(factory):
                raise ValueError(
                    f"backend {name!r}: factory {factory!r} is not 'module:Class' text"
                )
        elif not callable(factory):
            raise TypeError(
                f"backend {name!r}: factory must be a class, a callable or 'module:Class'"
                f" text, not {type(factory).__name__}"
            )
        entry = _Entry(factory, extra)
        with self._lock:
            current = self._entries.get(name)
            if current is not None and current != entry and not clobber:
                raise ValueError(
                    f"backend {name!r} is already registered ({_describe(current.factory)});"
                    " pass clobber=True to replace it"
                )
            self._entries[name] = entry

    def unregister(self, name: str) -> None:
        """Forget backend ``name``; raise KeyError if it is not registered."""
        self._load_entry_points()
        with self._lock:
            if name not in self._entries:
                raise KeyError(f"backend {name!r} is not registered")
            del self._entries[name]

    def reset(self) -> None:
        """Forget every registration: back to the built-in backends (installed packages'
        entry points are read again on the next lookup). A hook for tests."""
        with self._lock:
            self._entries = {
                name: _Entry(factory, extra)
                for name, (factory, extra) in BUILTIN_BACKENDS.items()
            }
            self._entry_points_loaded = False

    def names(self) -> list[str]:
        """The registered backend names, sorted."""
        self._load_entry_points()
        with self._lock:
            return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self.names()

    def factory(self, name: str) -> Callable[[Settings], PageStore]:
        """The callable that builds backend ``name`` from Settings, imported if need be.

        Raises ConfigError if ``name`` is not registered (naming the setting and the allowed
        names), or if its module or one of its dependencies cannot be imported (saying what
        to install).
        """
        self._load_entry_points()
        with self._lock:
            entry = self._entries.get(name)
        if entry is None:
            names = self.names()
            raise ConfigError(_unknown(name, names), field="backend", value=name, allowed=names)
        target: Any = entry.factory
        if isinstance(target, str):
            target = _import(name, target, entry.extra)
        build = getattr(target, "from_settings", None)
        if isinstance(target, type) and callable(build):
            target = build
        if not callable(target):
            raise ConfigError(f"backend {name!r}: {_describe(entry.factory)} is not callable")
        return cast("Callable[[Settings], PageStore]", target)

    def portable(self, store: PageStore) -> tuple[str, str | None] | None:
        """How another process can open ``store`` from the same Settings: the registration of
        its backend, ``("module:Class", extra)``, for that process to make in its own registry;
        None when it cannot.

        Only a registration as ``"module:Class"`` text naming ``store``'s own class will do
        (built-in backends, entry points, text given to :meth:`register`), for a store that is
        not ``process_local``: a factory registered as an object exists only in this process,
        and a wrapper around a store is not what the registration builds.
        """
        self._load_entry_points()
        with self._lock:
            entry = self._entries.get(store.backend)
        cls = type(store)
        if (entry is None or store.process_local or not isinstance(entry.factory, str)
                or entry.factory != f"{cls.__module__}:{cls.__qualname__}"
                or cls.__module__ == "__main__"):  # another process has another __main__
            return None
        return entry.factory, entry.extra

    def open(self, settings: Settings) -> PageStore:
        """Build the store that ``settings.backend`` names.

        Raises ConfigError as :meth:`factory` does, whatever the factory raises (StoreError
        when the store cannot be reached), and TypeError if it returns something other than a
        PageStore.
        """
        store = self.factory(settings.backend)(settings)
        if not isinstance(store, PageStore):
            raise TypeError(
                f"backend {settings.backend!r} returned {type(store).__name__}, not a PageStore"
            )
        return store

    def _load_entry_points(self) -> None:
        """Register, once, the backends installed packages declare (never over a name taken)."""
        if self._entry_points_loaded:
            return
        found = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
        with self._lock:
            for point in found:
                target = point.value.replace(" ", "")
                if _NAME.match(point.name) and _TARGET.match(target):
                    extra = point.dist.name if point.dist is not None else None
                    self._entries.setdefault(point.name, _Entry(target, extra))
            self._entry_points_loaded = True


def _import(name: str, target: str, extra: str | None) -> Any:
    module_name, _, attribute = target.partition(":")
    try:
        found: Any = importlib.import_module(module_name)
    except ImportError as e:
        hint = f"pip install '{extra}'" if extra else f"install what provides {module_name}"
        raise ConfigError(
            f"backend {name!r} needs a missing dependency ({e.name or module_name}): {hint}"
        ) from e
    for part in attribute.split("."):
        try:
            found = getattr(found, part)
        except AttributeError:
            raise ConfigError(f"backend {name!r}: {target} does not exist") from None
    return found


def _describe(factory: BackendFactory) -> str:
    if isinstance(factory, str):
        return factory
    module = getattr(factory, "__module__", "?")
    return f"{module}:{getattr(factory, '__qualname__', repr(factory))}"


def _unknown(name: str, names: list[str]) -> str:
    allowed = ", ".join(repr(n) for n in names)
    return (
        f"unknown backend {name!r} [env {env_var('backend')} / URI parameter backend];"
        f" allowed: {allowed} (register others with bottomless.register_backend)"
    )


#: the registry of this process: what Settings accepts and open_store opens
backend_registry = BackendRegistry()
# settings sits below this layer and may not import it; it asks this registry through its hook
Settings.backend_names = backend_registry.names


def register_backend(
    name: str, factory: BackendFactory, *, extra: str | None = None, clobber: bool = False
) -> None:
    """Register a backend under ``name`` in the process's registry (:data:`backend_registry`).

    Shorthand for ``backend_registry.register(...)``; see :meth:`BackendRegistry.register` for
    ``factory``, ``extra`` and what it raises. Afterwards ``Settings(backend=name)``,
    ``LIBSQL_BOTTOMLESS_BACKEND=name`` and the URI parameter ``backend=name`` select it.
    """
    backend_registry.register(name, factory, extra=extra, clobber=clobber)


def open_store(settings: Settings, *, read_only: bool = False) -> PageStore:
    """Build the backend that ``settings.backend`` names, from the process's registry.

    Backends are imported lazily, so a missing optional dependency only matters for the backend
    that needs it; the error says what to install. Raises ConfigError for a backend that is not
    registered or cannot be imported (see :meth:`~bottomless.backends.BackendRegistry.open`).
    ``read_only``: for an operation that only reads, which must not create a missing bucket
    (a mistyped name would then look like an empty bucket): ReplicaNotFoundError says that it
    does not exist.
    """
    if not read_only:
        return backend_registry.open(settings)
    try:
        return backend_registry.open(settings.model_copy(update={"create_bucket": False}))
    except BucketNotFoundError as e:  # nothing to read: as for a bucket without the database
        raise ReplicaNotFoundError(f"no replica: {e}") from None
