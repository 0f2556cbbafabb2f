"""Notebooks and notes; a note's ``meta`` is free-form JSON (tags, pinned, ...)."""

from __future__ import annotations

from typing import Any

from django.db import models


class Notebook(models.Model):
    """A named collection of notes."""

    name = models.CharField(max_length=100, unique=True)

    def __str__(self) -> str:
        return self.name


class Note(models.Model):
    """One note."""

    notebook = models.ForeignKey(Notebook, on_delete=models.CASCADE, related_name="notes")
    title = models.CharField(max_length=200)
    meta = models.JSONField(default=dict, blank=True)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ("id",)

    def __str__(self) -> str:
        return self.title

    def as_dict(self) -> dict[str, Any]:
        """The note as JSON-ready data."""
        return {"id": self.id, "notebook": self.notebook.name, "title": self.title,
                "meta": self.meta, "created": self.created.isoformat()}
