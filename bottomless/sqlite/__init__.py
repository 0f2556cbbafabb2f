"""The apsw side: the VFS that SQLite calls, and the capture of its writes as commits.

Nothing else in the package imports apsw's VFS machinery; this room hands each commit to
:mod:`bottomless.engine` and turns the engine's errors into SQLite error codes.
"""
