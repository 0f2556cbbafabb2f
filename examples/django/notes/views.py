"""``GET /`` lists notes (``?pinned=1`` only pinned ones), ``POST /`` adds one, ``GET /status``
shows the replication status."""

from __future__ import annotations

import json

from django.db import connection, transaction
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from notes.models import Note, Notebook


@csrf_exempt
def notes(request: HttpRequest) -> HttpResponse:
    """List notes, or add one from ``{"notebook": ..., "title": ..., "meta": {...}}``."""
    if request.method == "POST":
        try:
            body = json.loads(request.body)
            notebook_name, title = str(body["notebook"]), str(body["title"])
            meta = body.get("meta", {})
        except (ValueError, KeyError, TypeError):
            return JsonResponse({"error": "send notebook and title as JSON"}, status=400)
        with transaction.atomic():  # one commit: one object in the bucket
            notebook, _ = Notebook.objects.get_or_create(name=notebook_name)
            note = Note.objects.create(notebook=notebook, title=title, meta=meta)
        return JsonResponse(note.as_dict(), status=201)
    found = Note.objects.select_related("notebook")
    if request.GET.get("pinned") == "1":
        found = found.filter(meta__pinned=True)
    return JsonResponse({"notes": [note.as_dict() for note in found]})


def status(request: HttpRequest) -> HttpResponse:
    """bottomless's replication status of the database (``PRAGMA bottomless_status``)."""
    with connection.cursor() as cursor:
        cursor.execute("PRAGMA bottomless_status")
        row = cursor.fetchone()
    return JsonResponse(json.loads(row[0]) if row and row[0] else {"replicating": False})
