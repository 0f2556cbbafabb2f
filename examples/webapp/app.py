"""A to-do list on Flask whose data lives in a bottomless database.

    pip install 'bottomless[s3]' flask
    LIBSQL_BOTTOMLESS_BACKEND=file LIBSQL_BOTTOMLESS_BUCKET=replicas \
        flask --app examples/webapp/app.py run

Delete todo.db while it is stopped and start it again: the list comes back from the bucket.
"""

from __future__ import annotations

import os
from typing import Any

import apsw
from flask import Flask, g, jsonify, request

import bottomless


def create_app(path: str | None = None, settings: bottomless.Settings | None = None) -> Flask:
    """Build the app; ``path`` and ``settings`` default to TODO_DB and the environment."""
    app = Flask(__name__)
    db_path = path or os.environ.get("TODO_DB", "todo.db")

    def db() -> apsw.Connection:
        if "db" not in g:
            g.db = bottomless.connect(db_path, settings)
            g.db.set_busy_timeout(5000)
        connection: apsw.Connection = g.db
        return connection

    @app.teardown_appcontext
    def close(_: BaseException | None) -> None:
        connection = g.pop("db", None)
        if connection is not None:
            connection.close()

    with app.app_context():
        db().execute("CREATE TABLE IF NOT EXISTS todo(id INTEGER PRIMARY KEY, title TEXT,"
                     " done INTEGER DEFAULT 0)")

    @app.get("/todos")
    def list_todos() -> Any:
        rows = db().execute("SELECT id, title, done FROM todo ORDER BY id").fetchall()
        return jsonify([{"id": i, "title": t, "done": bool(d)} for i, t, d in rows])

    @app.post("/todos")
    def add_todo() -> Any:
        title = str((request.get_json(silent=True) or {}).get("title", "")).strip()
        if not title:
            return jsonify({"error": "title is required"}), 400
        db().execute("INSERT INTO todo(title) VALUES(?)", (title,))
        return jsonify({"id": db().last_insert_rowid(), "title": title, "done": False}), 201

    @app.post("/todos/<int:todo_id>/done")
    def finish(todo_id: int) -> Any:
        db().execute("UPDATE todo SET done = 1 WHERE id = ?", (todo_id,))
        return jsonify({"id": todo_id, "done": True})

    @app.get("/status")
    def status() -> Any:
        return jsonify(bottomless.status(db()))

    return app

