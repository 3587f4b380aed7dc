"""spark-submit entry point: ``spark-submit [--master URL ...] batch_jobs/submit.py JOB ARGS``.

Runs the same jobs as ``vista job JOB ARGS``; the cluster needs vista-memory
installed on its nodes (``pip install vista-memory``), the model folder and
event folders on storage every node can read, and the config file (or
``VISTA_*`` variables) on the driver.
"""

from __future__ import annotations

import sys

from batch_jobs.cli import submit_main

if __name__ == "__main__":
    raise SystemExit(submit_main(sys.argv[1:]))
