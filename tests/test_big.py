"""A big database (1 GB) goes through the initial upload and a restore with bounded memory."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest

_SCRIPT = """
import os, resource, sys, apsw, bottomless
path, bucket, out, size_mb = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
db = apsw.Connection(path)
db.execute("PRAGMA journal_mode=WAL")
db.execute("CREATE TABLE big(id INTEGER PRIMARY KEY, v BLOB)")
rows = size_mb * 1024 * 1024 // 3900
with db:
    for i in range(rows):
        db.execute("INSERT INTO big(v) VALUES(randomblob(3900))")
db.close()
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
settings = bottomless.Settings(backend="file", bucket=bucket)
db = bottomless.connect(path, settings)          # the initial upload
db.close()
upload = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
result = bottomless.restore(out, settings, db_name=os.path.basename(path))
restore = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(base, upload, restore, result.db_size * result.page_size, os.path.getsize(path))
"""


@pytest.mark.slow
def test_one_gigabyte_upload_and_restore_in_bounded_memory(tmp_path: Any) -> None:
    script = tmp_path / "big.py"
    script.write_text(_SCRIPT)
    result = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "big.db"), str(tmp_path / "replicas"),
         str(tmp_path / "restored.db"), "1024"],
        capture_output=True, text=True, timeout=1800,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    base_kb, upload_kb, restore_kb, restored_bytes, local_bytes = map(int, result.stdout.split())
    print(f"\npeak RSS: before {base_kb // 1024} MB, after upload {upload_kb // 1024} MB,"
          f" after restore {restore_kb // 1024} MB, database {local_bytes >> 20} MB")
    assert restored_bytes == local_bytes >= 1 << 30
    assert restore_kb < 250 * 1024, "peak RSS over 250 MB"
    assert os.path.getsize(tmp_path / "restored.db") == local_bytes
