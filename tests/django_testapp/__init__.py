"""A small Django app for tests/test_django.py: the field types whose values the backend adapts
and converts (JSON, Decimal, bool, date, datetime) and a foreign key."""
