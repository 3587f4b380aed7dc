#!/usr/bin/env bash
# Every benchmark script once, at its smallest sizes (`make bench-smoke`; CI runs it):
# checks that each still runs on a fresh clone, not what it measures.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
VISTA=${VISTA:-.venv/bin/vista}
T=$(mktemp -d /tmp/vista-bench-smoke.XXXXXX)
trap 'rm -rf "$T"' EXIT
run() { echo "== bench-smoke: $*"; "$@" > "$T/last.log" 2>&1 || { tail -40 "$T/last.log"; exit 1; }; }

run $PY benchmarks/summarize.py --sizes 1000 --repeats 1 --threads 1
run $PY benchmarks/kernels.py --quick --repeats 1 --cpu --out "$T/kernels"
run $PY benchmarks/kernels_ptx.py --arch 90 --out "$T/kernels_ptx"
run $PY benchmarks/memory_bank.py --sizes 2000 --repeats 1 --requests 3 --processes 1 --out "$T/memory_bank.json"
run $PY benchmarks/store.py --users 500 --K 4 --d 8 --points 20 --batches 2 --batch 16 --db "$T/store" --out "$T/store.json"
run $PY benchmarks/state_format.py --users 200 --rows 50 --read 20 --rounds 1 --dir "$T/state_format"
run $PY benchmarks/scorer.py --work "$T/scorer" --users 40 --requests 5 --repeats 1 --batches 1
run $PY benchmarks/take_path.py --store "$T/scorer/store" --reads 20
run $PY benchmarks/serve.py --work "$T/scorer" --users 40 --m 16 --seconds 0.5 --clients 1,4 --fractions 0.5 --rounds 1 --out "$T/serve"
run $PY benchmarks/scorer_memory.py --work "$T/scorer_memory" --users 4 --banks 300 --requests 3 --candidates 64 --gsu-k 8
run $VISTA data synth --users 30 --max-events 400 --seed 1 --out "$T/synth/events" --quiet
run $VISTA data validate --input "$T/synth/events" --valid-out "$T/synth/valid" --quarantine-out "$T/synth/q" --quiet
run $PY benchmarks/synthetic_oracle.py "$T/synth/valid" --topics 400 --targets 8
run $PY benchmarks/item_vector_probe.py "$T/synth/valid" --topics 400 --targets 8
run $PY benchmarks/train_throughput.py "$T/synth/valid" --epochs 1 --threads 1
run env VISTA_TRAIN__EPOCHS=1 $VISTA evaluate --data "$T/synth/valid" --out "$T/eval" --models "no history,DV365"
run $PY benchmarks/field.py --out "$T/field" "$T/eval/results.json"
run $PY benchmarks/batch_jobs.py --work "$T/batch" --users 40 --max-events 600 --giants 1 --min-events 20
run $PY benchmarks/cluster.py --users 200 --lookups 20 --chain-users 8 --out "$T/cluster"
echo "bench-smoke: every benchmark ran"
