"""Compatibility shim: the SeaweedFS launcher lives in bottomless.seaweed."""

from bottomless.seaweed import ACCESS_KEY, SECRET_KEY, SeaweedServer, start_seaweed

__all__ = ["ACCESS_KEY", "SECRET_KEY", "SeaweedServer", "start_seaweed"]
