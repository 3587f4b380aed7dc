"""spark-submit entry point: ``spark-submit [--master URL ...] batch_jobs/submit.py JOB ARGS``.

Runs the same jobs as ``vista job JOB ARGS``; the cluster needs vista-memory
installed on its nodes (``pip install vista-memory``), the model folder and
event folders on storage every node can read, and the config file (or
``VISTA_*`` variables) on the driver.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from summarizer.cli import main as vista_main

    args = list(sys.argv[1:] if argv is None else argv)
    config: list[str] = []
    if args[:1] == ["--config"] and len(args) > 1:
        config, args = args[:2], args[2:]
    return vista_main([*config, "job", "--submitted", *args])


if __name__ == "__main__":
    raise SystemExit(main())
