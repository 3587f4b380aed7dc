"""One table and one quality-against-online-cost plot from several `vista evaluate` runs on
the same data and split (their results.json), e.g. the issue-21 rows and the long-sequence
field's (issue 25):

    python benchmarks/field.py --out benchmarks/results/field_ml \
        benchmarks/results/issue21_ml_3seeds_2026-12-03.json out_hstu_ml/results.json ...

Rows keep their order (a later file's row of the same name replaces the earlier one); each
row's "served from" (cache / raw events) comes from the harness's own variant of that name,
so runs made before that column existed get it too. Writes OUT.md and OUT.png.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# benchmarks/kernels.py would shadow the kernels package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(HERE.parent))

from summarizer.config import ModelConfig  # noqa: E402
from summarizer.training import harness  # noqa: E402


def load_rows(paths: list[str]) -> list[harness.Row]:
    forms = {
        v.name: harness.serving_form(v.spec) for v in harness.default_variants(ModelConfig().spec())
    }
    fields = {f.name for f in dataclasses.fields(harness.Row)}
    rows: dict[str, harness.Row] = {}
    for path in paths:
        for raw in json.loads(Path(path).read_text())["rows"]:
            row = harness.Row(**{k: v for k, v in raw.items() if k in fields})
            row.served = forms.get(row.model, row.served)
            rows[row.model] = row
    return list(rows.values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", nargs="+", help="results.json files of vista evaluate")
    ap.add_argument("--out", required=True, help="output path without suffix")
    ap.add_argument("--skip", default="", help="comma-separated row-name prefixes to leave out")
    args = ap.parse_args()
    skip = tuple(p for p in args.skip.split(",") if p)
    rows = [r for r in load_rows(args.results) if not (skip and r.model.startswith(skip))]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(harness.format_table(rows) + "\n")
    harness.plot_quality_vs_cost(rows, out.with_suffix(".png"))
    print(harness.format_table(rows))


if __name__ == "__main__":
    main()
