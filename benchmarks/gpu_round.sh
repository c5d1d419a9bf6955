#!/usr/bin/env bash
# The GPU measurements of docs/PERFORMANCE.md rounds 11-13, in one pass (a benchmark, not a test):
#
#     bash benchmarks/gpu_round.sh OUT_DIR         # on a machine with a CUDA GPU, ~6 min on one H200 (+ ~4: parts 5-6)
#     QUICK=1 DEVICE=cpu bash benchmarks/gpu_round.sh /tmp/dry   # a dry run of every command on a CPU
#
# Every part runs under its own time limit and writes its JSON and log under OUT_DIR, so a part that
# fails or runs out of time leaves the others' numbers.  What it measures:
#   1. the NSD-shape step (issue 18): bf16 autocast at batch 256 and 1024 against an 8192² bf16 GEMM timed
#      in the same process, fp32 (TF32 off) beside it, and torch.compile at batch 256;
#   2. the HCP step on the plugin's 112×128×112 crop (issue 14): the recipe's model and the paper's, bf16
#      and fp32, activations channels-last with and without channels-last weights, batch 4 and 16, peak
#      GPU memory;
#   3. the data path's headroom (the shard loader's samples/s against the bf16 step's, NSD shape);
#   4. README's first recipe on the GPU through `accelerate launch foundation/train.py` (shards and run beside OUT_DIR);
#   5. (round 12) the NSD step's forward + loss compiled as one graph (`bench_step.py --compile-step`), eager, compiled
#      and replayed as CUDA graphs, then profiled with the device syncs listed (where the step's time goes).
#   6. (round 13) the whole NSD step captured as one CUDA graph (`bench_step.py --cuda-graph`), batch 256 and 1024,
#      and its profile.
# ONLY="PREFIX ..." runs only the parts whose name starts with one of the prefixes (round 12's with its eager
# baseline from part 1: ONLY="nsd_bf16_b256 compile").
set -u
OUT=${1:?usage: gpu_round.sh OUT_DIR}
DEVICE=${DEVICE:-cuda}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
if [ -n "${QUICK:-}" ]; then S=1; W=1; G=512; B=8; BIG=16; HB=1; HB2=2; TSTEPS=20; SAMPLES=64; GRID="--hcp-grid 48 56 48"
else S=20; W=5; G=8192; B=256; BIG=1024; HB=4; HB2=16; TSTEPS=1500; SAMPLES=4096; GRID=""; fi

part() {  # part NAME LIMIT_S COMMAND...: run one measurement, log it, keep going on failure
    local name=$1 limit=$2; shift 2
    if [ -n "${ONLY:-}" ]; then
        local prefix hit=""
        for prefix in $ONLY; do case $name in "$prefix"*) hit=1 ;; esac; done
        [ -n "$hit" ] || return 0
    fi
    echo "=== $name: $*" | tee -a "$OUT/summary.log"
    local t0=$SECONDS
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    tail -n 25 "$OUT/$name.log" | tee -a "$OUT/summary.log"
    echo "=== $name: exit $rc after $((SECONDS - t0)) s" | tee -a "$OUT/summary.log"
}

STEP="$PY benchmarks/bench_step.py --device $DEVICE --steps $S --warmup $W --gemm $G"  # word-split on purpose

{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>/dev/null || true
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn',
torch.backends.cudnn.version() if torch.cuda.is_available() else None, torch.cuda.is_available() and
torch.cuda.get_device_name())"; nproc; } 2>&1 | tee "$OUT/machine.log"

# 1. NSD shape (24 layers x 512 x 8 heads, 10 ROI tokens of 512)
part nsd_bf16_b$B 60 $STEP --shape nsd --batch "$B" --amp --out "$OUT/nsd_bf16_b$B.json"
part nsd_bf16_b$BIG 60 $STEP --shape nsd --batch "$BIG" --amp --out "$OUT/nsd_bf16_b$BIG.json"
part nsd_fp32_b$B 60 $STEP --shape nsd --batch "$B" --no-amp --gemm-dtype fp32 --out "$OUT/nsd_fp32_b$B.json"
# 2. HCP crop: the recipe's model (standardize + spatial + rank-64 voxel read-out) and the paper's
part hcp_bf16_b$HB 90 $STEP --shape hcp --batch "$HB" $GRID --amp --out "$OUT/hcp_bf16_b$HB.json"
part hcp_bf16_cl_b$HB 90 $STEP --shape hcp --batch "$HB" $GRID --amp --channels-last --out "$OUT/hcp_bf16_cl_b$HB.json"
part hcp_fp32_b$HB 90 $STEP --shape hcp --batch "$HB" $GRID --no-amp --gemm-dtype fp32 --out "$OUT/hcp_fp32_b$HB.json"
part hcp_bf16_paper_b$HB 90 $STEP --shape hcp --batch "$HB" $GRID --amp --volume-input raw --volume-readout attention \
    --volume-linear-rank 0 --out "$OUT/hcp_bf16_paper_b$HB.json"
part hcp_bf16_b$HB2 90 $STEP --shape hcp --batch "$HB2" $GRID --amp --out "$OUT/hcp_bf16_b$HB2.json"
# 3. the loader against the bf16 NSD step
part data_nsd 120 $PY benchmarks/bench_data_path.py --shape nsd --device "$DEVICE" --batch "$B" --workers 0 4 \
    --samples "$SAMPLES" --step-json "$OUT/nsd_bf16_b$B.json" --out "$OUT/data_nsd.json"
# 4. README's first command, the Accelerate loop on the GPU (shards built on this machine's CPUs first)
part train_synthetic 150 env HF_HUB_OFFLINE=1 $PY -m accelerate.commands.launch --num_processes 1 foundation/train.py \
    recipes/synthetic.yaml shards.root="$OUT.shards" run.dir="$OUT.run" train.steps="$TSTEPS"
cp "$OUT.run/metrics.json" "$OUT/train_metrics.json" 2>/dev/null || true
# 1b. torch.compile last: its compile time is the least predictable
part nsd_bf16_compile_b$B 120 $STEP --shape nsd --batch "$B" --amp --compile --warmup 3 --out "$OUT/nsd_compile_b$B.json"
# 5. round 12: the step compiled (forward + loss as one graph, its backward with it), and as CUDA graphs; the eager
#    step beside them is part 1's nsd_bf16_b$B
part compile_nsd_graphs_b$B 150 $STEP --shape nsd --batch "$B" --amp --compile-step reduce-overhead --warmup 3 \
    --out "$OUT/compile_nsd_graphs_b$B.json"
part compile_nsd_default_b$B 150 $STEP --shape nsd --batch "$B" --amp --compile-step default --warmup 3 \
    --out "$OUT/compile_nsd_default_b$B.json"
for mode in none reduce-overhead; do  # where the time goes: the profile (CPU, then GPU time) and the device syncs
    c=""; [ $mode = none ] || c="--compile-step $mode --warmup 3"
    part compile_nsd_profile_$mode 150 $STEP --shape nsd --batch "$B" --amp $c --profile 2 --profile-rows 25 \
        --sync-debug --out "$OUT/compile_nsd_profile_$mode.json"
done
# 6. round 13: the whole step (forward, loss, backward, clipping, Adam) captured once as a CUDA graph and replayed
#    (bench_step --cuda-graph): what the host-bound step gains when the host only copies the batch in
part graph_nsd_b$B 120 $STEP --shape nsd --batch "$B" --amp --cuda-graph --out "$OUT/graph_nsd_b$B.json"
part graph_nsd_b$BIG 120 $STEP --shape nsd --batch "$BIG" --amp --cuda-graph --out "$OUT/graph_nsd_b$BIG.json"
part graph_nsd_profile_b$B 120 $STEP --shape nsd --batch "$B" --amp --cuda-graph --profile 2 --profile-rows 15 \
    --sync-debug --out "$OUT/graph_nsd_profile_b$B.json"
echo "done" | tee -a "$OUT/summary.log"
