"""Storage backends: the :class:`~bottomless.backends.base.PageStore` contract, the registry
that maps a backend name to its factory, and the built-in backends (``memory``, ``file``,
``s3``), each in its own module and imported only when used."""

from bottomless.backends.base import PageStore
from bottomless.backends.registry import (
    BackendFactory,
    BackendRegistry,
    backend_registry,
    open_store,
    register_backend,
)

__all__ = [
    "BackendFactory",
    "BackendRegistry",
    "PageStore",
    "backend_registry",
    "open_store",
    "register_backend",
]
