"""Compatibility shim: the SeaweedFS launcher lives in bottomless.testing.seaweed."""

from bottomless.testing.seaweed import ACCESS_KEY, SECRET_KEY, SeaweedServer, start_seaweed

__all__ = ["ACCESS_KEY", "SECRET_KEY", "SeaweedServer", "start_seaweed"]
