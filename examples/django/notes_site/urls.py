"""URLs of the notes example."""

from __future__ import annotations

from django.urls import path
from notes import views

urlpatterns = [
    path("", views.notes, name="notes"),
    path("status", views.status, name="status"),
]
