"""Replication of one database: the lineage check at open, generations, the sync commit
protocol, the async shipper and its spool, the snapshot policy and the writer lease.

:class:`~bottomless.engine.replicator.Replicator` is the facade the VFS talks to; it knows
nothing of apsw.
"""
