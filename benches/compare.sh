#!/usr/bin/env bash
# Alternates our engine bench with PyTorch's on the same cores, ROUNDS times, so the
# two see the same machine state (the development VM drifts by ±15% between runs).
# Each round runs ours on 2 threads, PyTorch (2 threads, fixed by the baseline), and
# ours on 1 thread (the thread-scaling row).
#
#   benches/compare.sh MODEL BATCH STEPS [ROUNDS] [PYTHON]
#   benches/compare.sh small16 64 20 3
#   benches/compare.sh resnet18 32 5 3 /tmp/torchenv/bin/python
#   benches/compare.sh resnet50 16 5 3
#
# PYTHON defaults to /tmp/torchenv/bin/python (see README, Benchmarks).
set -euo pipefail
model=${1:?model (smallW, resnet18 or resnet50)}
batch=${2:?batch per view}
steps=${3:?timed steps}
rounds=${4:-3}
python=${5:-/tmp/torchenv/bin/python}
root=$(cd "$(dirname "$0")/.." && pwd)
baseline="$root/benches/torch_baseline.py"
[ -f "$baseline" ] || { echo "missing $baseline" >&2; exit 2; }
bin=$(cd "$root" && cargo bench --bench engine --no-run --message-format=json 2>/dev/null |
  sed -n 's/.*"executable":"\([^"]*engine[^"]*\)".*/\1/p' | tail -1)
[ -x "$bin" ] || { echo "could not build the engine bench" >&2; exit 2; }
for _ in $(seq "$rounds"); do
  NO_PER_OP=1 "$bin" "$model" "$batch" "$steps" 2 | head -1
  "$python" "$baseline" bench "$model" "$batch" "$steps" 2>&1 | tail -1
  NO_PER_OP=1 "$bin" "$model" "$batch" "$steps" 1 | head -1
done
