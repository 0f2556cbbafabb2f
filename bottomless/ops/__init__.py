"""Operations on what the bucket holds: restore, snapshots and compaction, retention (gc),
the catalog (ls) and verify. They work from the bucket alone, with no database open."""
