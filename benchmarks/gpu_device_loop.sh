#!/usr/bin/env bash
# Issue 15's GPU measurements in one run (at most BUDGET_S, 8 minutes), most important first:
# ppo and diffppo with their `mjx` presets (2,048 envs) on CheetahRun for PPO_S and DIFFPPO_S
# seconds (env steps/s from their metrics.csv, and how far each gets: its last evaluation
# return), then where an MJX env step's time goes at 2,048 envs (CheetahRun, CartpoleBalance),
# then the device loop against the host loop (sac and ppo on CartpoleBalance, ppo on CheetahRun).
# Every part after the first two stops at what is left of the budget.
#
#   OUT=gpu-out BUDGET_S=480 bash benchmarks/gpu_device_loop.sh
#
# On a CPU it runs too (SMOKE=1 shrinks every part to a check of the script itself).
set -euo pipefail
OUT=${OUT:-gpu-out}
BUDGET_S=${BUDGET_S:-480}
ENVS=${ENVS:-2048}
PPO_S=${PPO_S:-90}
DIFFPPO_S=${DIFFPPO_S:-150}
CARTPOLE_STEPS=(4000 32768)   # sac, ppo on the host and device loops
CHEETAH_STEPS=16384
if [[ "${SMOKE:-0}" == 1 ]]; then
  ENVS=4; PPO_S=90; DIFFPPO_S=90; CARTPOLE_STEPS=(600 4096); CHEETAH_STEPS=0; BUDGET_S=600
fi
mkdir -p "$OUT"
start=$(date +%s)
left() { echo $((BUDGET_S - ($(date +%s) - start))); }
# Runs "$@" for at most what is left of the budget (nothing when under 30 s are left).
part() {
  local seconds
  seconds=$(left)
  if (( seconds < 30 )); then echo "(budget spent, not run: $*)"; return; fi
  timeout --signal=TERM "$seconds" "$@" || echo "(stopped at the budget or failed: $*)"
}
python -c "import jax; print('backend', jax.default_backend(), jax.devices())" | tee "$OUT/device.txt"

# SIGTERM at the limit leaves a checkpoint and the metrics rows so far (one row per update:
# 262,144 env steps at 2,048 envs x 128 steps).
run_mjx() {
  local algo=$1 seconds=$2
  timeout --signal=TERM "$seconds" diffmaxent train --algo "$algo" --env mjx:CheetahRun \
    --preset mjx --steps 100000000 --out "$OUT/$algo" --quiet \
    --set num_envs="$ENVS" --set eval_every=$((ENVS * 128)) --set eval_episodes=4 || true
}
run_mjx ppo "$PPO_S"
run_mjx diffppo "$DIFFPPO_S"

if (( CHEETAH_STEPS > 0 )); then
  part python benchmarks/mjx_step.py --env mjx:CheetahRun --num-envs "$ENVS" | tee "$OUT/mjx_step.md"
fi
part python benchmarks/mjx_step.py --env mjx:CartpoleBalance --num-envs "$ENVS" \
  | tee -a "$OUT/mjx_step.md"
{
  part python benchmarks/device_loop.py sac --steps "${CARTPOLE_STEPS[0]}" --set \
    learning_starts=$((CARTPOLE_STEPS[0] / 4)) eval_every=$((CARTPOLE_STEPS[0] / 2)) eval_episodes=1
  part python benchmarks/device_loop.py ppo --steps "${CARTPOLE_STEPS[1]}" \
    --set eval_every=$((CARTPOLE_STEPS[1] / 2)) eval_episodes=1
  if (( CHEETAH_STEPS > 0 )); then
    part python benchmarks/device_loop.py ppo --env mjx:CheetahRun --steps "$CHEETAH_STEPS" \
      --set num_envs=8 rollout_steps=64 eval_every=$((CHEETAH_STEPS / 2)) eval_episodes=1
  fi
} 2>&1 | tee "$OUT/device_loop.md"

python - "$OUT" <<'PY'
import csv, pathlib, sys
out = pathlib.Path(sys.argv[1])
print("| agent (mjx preset, CheetahRun) | env steps | env steps/s after the first row | last eval return |")
print("|---|---|---|---|")
for metrics in sorted(out.glob("*/metrics.csv")):
    rows = [r for r in csv.DictReader(metrics.open()) if r.get("wall_seconds")]
    if not rows:
        print(f"| {metrics.parent.name} | no row before the time limit | | |")
        continue
    first, last = rows[0], rows[-1]
    span = float(last["wall_seconds"]) - float(first["wall_seconds"])
    steps = int(float(last["env_step"])) - int(float(first["env_step"]))
    rate = f"{steps / span:,.0f}" if span > 0 else "one row"
    print(f"| {metrics.parent.name} | {last['env_step']} | {rate} | {last['eval_return_mean']} |")
PY
echo "total $(($(date +%s) - start)) s"
