#!/usr/bin/env bash
# The GPU checks of issue 10, in one run on the GPU machine (no Rust, no network there).
# Prepared on a machine without a GPU and NOT yet run on one: expect to fix it the
# first time. Build the kit here first:
#
#   bash scripts/build-cuda.sh . recipe        # writes target-cuda/gpu-kit/
#
# then, through the device tool, carry `target-cuda/gpu-kit` and run
#
#   bash scripts/gpu-check.sh target-cuda/gpu-kit "$OUT"
#
# It prints, and writes under OUT: (1) every own op on the GPU against the CPU kernels
# (1e-4 relative), (2) a 20-step SimCLR run on the GPU and on the CPU with both loss
# curves, (3) training images/s of SimCLR ResNet-18 (CIFAR stem) at 2×256 on 32×32 for
# us and for PyTorch on the same GPU, with the GPU memory each used.
set -uo pipefail
kit=${1:?gpu kit directory}
out=${2:-/tmp/gpu-check}
mkdir -p "$out"
run() { "$kit/run-on-gpu.sh" "$@"; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"

echo "== 1/3 op parity (GPU composed forms vs CPU kernels)"
run device-check --device cuda | tee "$out/device-check.txt"

echo "== 2/3 20 SimCLR steps, GPU then CPU (log every step)"
for dev in cuda cpu; do
  run run recipes/simclr.yaml --quiet --out "$out/$dev" --stop-after-steps 20 \
    --set train.device=$dev --set train.log_every=1 > "$out/run-$dev.txt" 2>&1
  echo "$dev: exit $?"
done
python3 - "$out" <<'PY'
import json, glob, sys
out = sys.argv[1]
def losses(dev):
    f = glob.glob(f"{out}/{dev}/*/metrics.jsonl")
    if not f: return []
    rows = [json.loads(l) for l in open(f[0])]
    return [r["loss"] for r in rows if r.get("kind") == "step" and "loss" in r]
g, c = losses("cuda"), losses("cpu")
print("step  gpu       cpu       rel.diff")
worst = 0.0
for i, (a, b) in enumerate(zip(g, c)):
    d = abs(a - b) / max(abs(b), 1e-12); worst = max(worst, d)
    print(f"{i+1:4d}  {a:.6f}  {b:.6f}  {d:.2e}")
print(f"steps compared: {min(len(g), len(c))}, worst relative difference {worst:.2e}")
PY

echo "== 3/3 throughput, SimCLR ResNet-18 CIFAR stem, 2x256 at 32x32"
run bench recipes/cifar10/simclr.yaml --set train.device=cuda --batch 256 --steps 20 --warmup 3 \
  2>&1 | tee "$out/bench-ours.txt" &
pid=$!
peak=0
while kill -0 $pid 2>/dev/null; do
  m=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -1)
  [ "${m:-0}" -gt "$peak" ] && peak=$m
  sleep 0.5
done
echo "ours: peak GPU memory ${peak} MiB (nvidia-smi, whole device)" | tee -a "$out/bench-ours.txt"
python3 "$(dirname "$0")/../benches/torch_gpu.py" 256 20 | tee "$out/bench-torch.txt"
