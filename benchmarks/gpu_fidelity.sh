#!/usr/bin/env bash
# Issue 12's GPU measurements in one run (about 8 minutes): the cost of one update of maxentdp
# official / paper / fast, dime paper-dmc and sac paper, then `reproduce maxentdp-gym` on
# HalfCheetah for the time that remains; time per 1k env steps comes from its metrics.csv
# (wall_seconds), to set against the paper's 3.9 h per 1M steps on an RTX 3090 (Table B3).
#
#   OUT=gpu-out BUDGET_S=420 bash benchmarks/gpu_fidelity.sh
#
# On a CPU it runs too (SMOKE=1 shrinks it to a check of the script itself).
set -euo pipefail
OUT=${OUT:-gpu-out}
BUDGET_S=${BUDGET_S:-420}
REPEATS=${REPEATS:-10}
SCALE=${SCALE:-1}
if [[ "${SMOKE:-0}" == 1 ]]; then REPEATS=1; SCALE=0.0003; BUDGET_S=120; fi
mkdir -p "$OUT"
start=$(date +%s)
python -c "import jax; print('backend', jax.default_backend(), jax.devices())" | tee "$OUT/device.txt"
while read -r algo preset env; do
  diffmaxent bench --algo "$algo" --preset "$preset" --env "$env" --repeats "$REPEATS" \
    2>&1 | tee -a "$OUT/bench.txt"
done <<'RUNS'
maxentdp official paper/HalfCheetah-v3
maxentdp paper paper/HalfCheetah-v3
maxentdp fast paper/HalfCheetah-v3
dime paper-dmc dmc:dog-run
sac paper paper/HalfCheetah-v3
RUNS
left=$((BUDGET_S - ($(date +%s) - start)))
if (( left > 60 )); then
  # SIGTERM at the limit leaves a checkpoint per seed: the same command continues it later.
  timeout --signal=TERM "$left" diffmaxent reproduce maxentdp-gym --env paper/HalfCheetah-v3 \
    --seeds 1 --scale "$SCALE" --out "$OUT/reproduce" --quiet || true
fi
python - "$OUT" <<'PY'
import csv, pathlib, sys
out = pathlib.Path(sys.argv[1])
for metrics in sorted(out.glob("reproduce/*/seed*/metrics.csv")):
    rows = [r for r in csv.DictReader(metrics.open()) if r.get("wall_seconds")]
    if len(rows) >= 2:
        steps = int(rows[-1]["env_step"]) - int(rows[0]["env_step"])
        seconds = float(rows[-1]["wall_seconds"]) - float(rows[0]["wall_seconds"])
        if steps > 0:
            print(f"{metrics.parent}: {1000 * seconds / steps:.1f} s per 1k env steps "
                  f"({steps} steps); paper: 3.9 h per 1M = 14.0 s per 1k")
PY
