"""Tests of the notes app; ``manage.py test`` runs them on a replicated file test database."""

from __future__ import annotations

from django.test import TestCase

from notes.models import Note


class NotesTests(TestCase):
    """The JSON API."""

    def test_add_and_list(self) -> None:
        created = self.client.post("/", {"notebook": "work", "title": "ship it",
                                          "meta": {"pinned": True, "tags": ["a"]}},
                                   content_type="application/json")
        self.assertEqual(created.status_code, 201)
        self.client.post("/", {"notebook": "work", "title": "later"},
                         content_type="application/json")
        listed = self.client.get("/").json()["notes"]
        self.assertEqual([note["title"] for note in listed], ["ship it", "later"])
        pinned = self.client.get("/?pinned=1").json()["notes"]
        self.assertEqual([note["title"] for note in pinned], ["ship it"])
        self.assertEqual(Note.objects.get(title="ship it").meta["tags"], ["a"])



class ReplicationTests(TestCase):
    """Bad input, and the test database itself."""

    def test_bad_request(self) -> None:
        response = self.client.post("/", "not json", content_type="application/json")
        self.assertEqual(response.status_code, 400)

    def test_the_test_database_replicates(self) -> None:
        status = self.client.get("/status").json()
        self.assertTrue(status["replicating"])
        self.assertTrue(status["db_name"].startswith("test_"))
