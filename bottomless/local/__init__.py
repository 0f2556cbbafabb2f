"""The database's files on this machine: SQLite's file and WAL layout as read from disk, the
bottomless state file beside the database, and the session marker that tells a crash from a
machine restart. No apsw here: these are plain files."""
