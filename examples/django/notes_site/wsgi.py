"""WSGI entry point (``gunicorn notes_site.wsgi -w 4``: every worker opens the same file)."""

from __future__ import annotations

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "notes_site.settings")
application = get_wsgi_application()
