"""Child process of the restore benchmark: one restore (or none), then its numbers as JSON.

Reads a job from stdin: ``{"mode": "restore" | "idle", "settings": {...}, "path": ...,
"db_name": ...}``. It runs in its own interpreter so that its peak RSS is the restore's alone;
``idle`` imports the same modules and opens the store without restoring, as a baseline.
Both first open (and close) one store, timed apart as ``client_setup_s``.
The last line of stdout is the JSON result.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time


def main() -> None:
    """Do the job read from stdin and print its result."""
    import bottomless
    from bottomless.backends.registry import open_store

    job = json.loads(sys.stdin.read())
    settings = bottomless.Settings(**job["settings"])
    result: dict[str, object] = {"mode": job["mode"]}
    started = time.perf_counter()
    # the first S3 client of a process loads botocore's service model (~0.3 s): time it apart
    open_store(settings).close()
    result["client_setup_s"] = time.perf_counter() - started
    if job["mode"] == "restore":
        started = time.perf_counter()
        restored = bottomless.restore(job["path"], settings, db_name=job["db_name"])
        result.update(
            restore_s=time.perf_counter() - started, bytes_read=restored.bytes_read,
            objects=restored.objects, db_bytes=restored.db_size * restored.page_size,
            library_seconds=restored.seconds,
        )
    result["maxrss_self_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps(result))


def run_measured(job: dict[str, object]) -> dict[str, object]:
    """Run this script on ``job`` in a grandchild; add the grandchild's peak RSS from rusage."""
    done = subprocess.run(
        [sys.executable, __file__, "--inner"], input=json.dumps(job), capture_output=True,
        text=True, check=False,
    )
    if done.returncode != 0:
        raise SystemExit(done.stderr)
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    result["maxrss_children_kb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return result


if __name__ == "__main__":
    if "--inner" in sys.argv:
        main()
    else:
        # a thin parent whose only child is the worker, so RUSAGE_CHILDREN is that worker's
        print(json.dumps(run_measured(json.loads(sys.stdin.read()))))
