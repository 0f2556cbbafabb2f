"""The notes app."""

from __future__ import annotations

from django.apps import AppConfig


class NotesConfig(AppConfig):
    """Notebooks holding notes with free-form JSON metadata."""

    name = "notes"
