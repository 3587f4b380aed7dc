"""``python -m summarizer.cli``: the `vista` command."""

from summarizer.cli import main

raise SystemExit(main())
