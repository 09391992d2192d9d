#!/usr/bin/env bash
# Everything a GPU machine has to do, in one call from the repository root:
#   install the package, run the GPU tests and the benchmarks; the log and the
#   result tables are copied to $OUT.
#
#   OUT=/some/folder bash bench/run_gpu.sh
#
# The GPU tests and the benchmarks come first: they are what only this machine
# can produce (CI runs the rest of the suite on CPU). Every step has a time
# limit and the whole run a deadline (RUN_GPU_BUDGET_S, default 470 s), so it
# ends within about 8 minutes even when a step hangs; a step that fails does
# not stop the others. The exit status is 0 only when every step that ran passed.
#
# Environment: PYTHON (default python3), OUT (default: a fresh temporary folder),
# RUN_GPU_BUDGET_S, RUN_GPU_STEPS (default "install gpu_tests bench_net_fit bench_block bench_spmm bench_solvers";
# add any of these, about how long each takes:
#   net_step          SymNMF-Net's training step (its objective in one node and op by op) against the same
#                     network in plain torch, about 2 minutes
#   net_profile       each kernel's share of that step at 1M nodes, r = 64, L = 10 (torch.profiler), about 60 s
#   bench_nnls        the NNLS op against scipy, about 25 s
#   nnls_symanls      SymANLS's NNLS calls at 1M nodes on each GPU path, r = 64 and 16, about 2 minutes
#   neural_nmf_speed  Neural NMF against the NeuralNMF package, about 30 s
#   ext_errors        the extension's argument errors, about 80 s
#   suite             the rest of the test suite on the GPU machine, about 240 s
#   tune              the tile sweep, about 220 s
#   tune_net          the tile sweep of SymNMF-Net's step kernels at r = 64, then its step at 1M nodes, r = 64,
#                     L = 10 with the tiles found (bench_net_step_tuned), about 3 minutes; with net_step in the
#                     same run, the step at the library's tiles is beside it
#   tune_small        the sweep of the one-program-per-problem block kernels alone (forward and backward,
#                     1-16 warps), about 150 s
#   scale             the 4M and 10M-node runs and a whole net fit at 1M, about 2 minutes
#   graph             the exact kNN search, about 180 s
#   inverse           the two forms of the in-register inverse and its one-warp form, about 180 s
#   reorder           what renumbering a graph's nodes buys the SpMM, a whole SymHALS fit and SymNMF-Net's step
#                     at 1M nodes, r = 64, about 4 minutes
# a subset runs only those steps, in this order). $OUT receives at most 8 files: run_gpu.log and the tables
# written under bench/results during this run (packed into bench_results.tar.gz
# when there are more than 7).
set -uo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
OUT=${OUT:-$(mktemp -d)}
BUDGET=${RUN_GPU_BUDGET_S:-470}
STEPS=" ${RUN_GPU_STEPS:-install gpu_tests bench_net_fit bench_block bench_spmm bench_solvers} "
KNOWN=" install gpu_tests bench_net_fit bench_nnls neural_nmf_speed bench_block bench_spmm bench_solvers net_step \
net_profile nnls_symanls ext_errors scale graph inverse reorder tune tune_net tune_small suite "
# A misspelt step, or a list with commas, would run nothing and exit 0: refuse it before the machine's time goes.
for s in $STEPS; do
    if [[ "$KNOWN" != *" $s "* ]]; then
        echo "run_gpu.sh: unknown step '$s' in RUN_GPU_STEPS (names separated by spaces); known:$KNOWN" >&2
        exit 2
    fi
done
mkdir -p "$OUT" bench/results
LOG="$OUT/run_gpu.log"
export PYTHONUNBUFFERED=1
# The CUDA extension's sources compile in parallel (ninja).
export MAX_JOBS=${MAX_JOBS:-16}
unset TRITON_INTERPRET

START=$(date +%s)
STAMP=$(mktemp)
touch "$STAMP"
SUMMARY=()
FAILED=0
: >"$LOG"

say() { echo "$*" | tee -a "$LOG"; }
remaining() { echo $((BUDGET - ($(date +%s) - START))); }

# step NAME LIMIT_S COMMAND...: run COMMAND under min(LIMIT_S, time left), log its output and outcome. Where the
# deadline cuts the limit, a --budget-s in COMMAND is cut by as much, so that the script still stops starting rows
# in time to write its table instead of being killed mid-row.
step() {
    local name=$1 limit=$2 requested=$2 left rc t0 outcome prev="" a
    shift 2
    left=$(remaining)
    if [ "$left" -lt 15 ]; then
        SUMMARY+=("$name: skipped, run deadline reached")
        say "=== $name: skipped, run deadline reached"
        return
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    local cmd=()
    for a in "$@"; do
        if [ "$prev" = "--budget-s" ] && [ "$limit" -lt "$requested" ]; then
            cmd+=("$(( a - (requested - limit) > 5 ? a - (requested - limit) : 5 ))")
        else
            cmd+=("$a")
        fi
        prev=$a
    done
    say "=== $name (limit ${limit} s): ${cmd[*]}"
    t0=$(date +%s)
    timeout --signal=TERM --kill-after=15 "$limit" "${cmd[@]}" 2>&1 | tee -a "$LOG"
    rc=${PIPESTATUS[0]}
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        outcome="TIMED OUT after ${limit} s"
        FAILED=1
    elif [ "$rc" -eq 5 ] && [[ "$name" == pytest* ]]; then
        outcome="no tests collected"
    elif [ "$rc" -ne 0 ]; then
        outcome="FAILED (exit $rc) in $(($(date +%s) - t0)) s"
        FAILED=1
    else
        outcome="ok in $(($(date +%s) - t0)) s"
    fi
    SUMMARY+=("$name: $outcome")
    say "=== $name: $outcome"
}

run_bench() {
    local script=bench/$1 limit=$2
    shift 2
    if [ -f "$script" ]; then
        step "$script" "$limit" "$PY" "$script" "$@"
    else
        SUMMARY+=("$script: skipped, not in this checkout")
    fi
}

collect() {
    local tables=()
    while IFS= read -r f; do tables+=("$f"); done < <(find bench/results -maxdepth 1 \( -name '*.md' -o -name '*.json' \) -newer "$STAMP" | sort)
    say "=== summary ($(($(date +%s) - START)) s in all)"
    for line in "${SUMMARY[@]}"; do say "$line"; done
    say "tables: ${tables[*]:-none}"
    if [ "${#tables[@]}" -gt 7 ]; then
        tar czf "$OUT/bench_results.tar.gz" "${tables[@]}"
    elif [ "${#tables[@]}" -gt 0 ]; then
        cp "${tables[@]}" "$OUT/"
    fi
    rm -f "$STAMP"
}

say "=== machine"
say "$(date -u)"
say "$(nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv 2>&1)"
say "$("$PY" -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, 'gpu', torch.cuda.is_available() and torch.cuda.get_device_name())" 2>&1)"
say "$(git log --oneline -1 2>&1)"

wants() { [[ "$STEPS" == *" $1 "* ]]; }
XDIST=()
if "$PY" -c "import xdist" 2>/dev/null; then
    # On a fresh machine the GPU tests spend most of their time compiling Triton kernels, one per worker at a
    # time: 374 tests took 149 s with four workers. Eight where the machine has the cores.
    [ "$(nproc)" -ge 16 ] && XDIST=(-n 8) || XDIST=(-n 4)
fi
wants install && step "install" 150 "$PY" -m pip install -q --no-deps --no-build-isolation -e .
# About 130 s on a fresh machine (Triton compiles every kernel once), 90 s with its cache warm.
wants gpu_tests && step "pytest -m gpu" 180 "$PY" -m pytest -q -p no:cacheprovider -rfE "${XDIST[@]}" -m gpu
wants bench_net_fit && run_bench bench_net_fit.py 120 --repeats 2
wants bench_nnls && run_bench bench_nnls.py 70 --scipy-runs 1 --m 1000
# Neural NMF on the GPU against the NeuralNMF package on the CPU, when the package is carried along in
# bench/.peer (pip install --no-deps --target bench/.peer neuralnmf fnnls; the device has no internet).
if wants neural_nmf_speed; then
    if [ -d bench/.peer/NeuralNMF ]; then
        run_bench study_neural_nmf.py 90 --speed-only --peer bench/.peer --device cuda --epochs 10,50,200
    else
        SUMMARY+=("neural_nmf_speed: skipped, bench/.peer (the NeuralNMF package) not carried")
    fi
fi
# --budget-s: the script stops starting rows in time to write its table before the step's limit.
# In the fifth run the default steps took 548 s against the 470 s deadline (the GPU tests 154, bench_block 127,
# bench_spmm 84 s): bench_block now stops starting rows sooner, and the GPU tests take more workers.
wants bench_block && run_bench bench_block.py 130 --budget-s 90
wants bench_spmm && run_bench bench_spmm.py 100
# bench_solvers took 69-75 s of its 75 s in earlier runs: its budget now leaves room for the row it has started.
wants bench_solvers && run_bench bench_solvers.py 75 --budget-s 40
# SymNMF-Net's whole training step against the same network in plain torch (100k and 1M nodes; L = 10 at r = 64).
wants net_step && run_bench bench_net_step.py 150 --budget-s 110
# Where the step's time goes, kernel by kernel and by group (the SpMM, each Triton kernel, torch's own kernels).
wants net_profile && run_bench profile_net_step.py 90
# SymANLS's NNLS calls on the GPU (opt-in, about 2 minutes): r = 64 on the torch path (rows solved at their
# passive sets' size), r = 16 on the Triton kernel and on the torch path side by side.
if wants nnls_symanls; then
    run_bench bench_nnls_symanls.py 80 --n 1000000 --r 64 --iters 4 --calls 1 6 --name bench_nnls_symanls_r64
    run_bench bench_nnls_symanls.py 60 --n 1000000 --r 16 --iters 4 --calls 1 6 --name bench_nnls_symanls_r16
fi
# Whether an argument error inside the compiled extension reaches Python (it crashed the process once).
wants ext_errors && step "ext_errors" 120 "$PY" bench/ext_errors.py
# Scale runs (opt-in, about 2 minutes): planted graphs of 4M and 10M nodes drawn on the GPU, r = 64, SymHALS
# and SymNMF-Net steps, time per iteration and peak memory; at 4M also each part of a SymHALS iteration alone.
if wants scale; then
    run_bench bench_scale.py 160 --graph planted --device cuda --n 4000000 --clusters 64 --max-iter 100 \
        --net-steps 10 --hals-phases --quiet --name bench_scale_4m
    # The net's steps at 10M nodes held 112 GB on an H200: on a smaller GPU the row would only report the failure.
    if "$PY" -c "import sys, torch; sys.exit(torch.cuda.get_device_properties(0).total_memory < 120e9)"; then
        run_bench bench_scale.py 220 --graph planted --device cuda --n 10000000 --clusters 64 --max-iter 50 \
            --net-steps 5 --quiet --name bench_scale_10m
    else
        run_bench bench_scale.py 120 --graph planted --device cuda --n 10000000 --clusters 64 --max-iter 50 \
            --quiet --name bench_scale_10m
    fi
    # The whole default SymNMF-Net fit (4 restarts, plateau stop, polishes) beside SymHALS at 1M nodes.
    run_bench bench_scale.py 150 --graph planted --device cuda --n 1000000 --clusters 64 --net-fit --quiet \
        --name bench_scale_1m_fit
fi
# The exact kNN search on the GPU (opt-in, about 3 minutes): Fashion-MNIST's size and 1M points, the library's
# block of about 2^24 distances (16 rows at 1M) against blocks of 256 rows; the table is written after every row.
wants graph && run_bench bench_graph.py 200 --device cuda --sizes 200000x784 1000000x32 --searches exact \
    --exact-max-n 0 --chunk-sizes 0 256 --name bench_graph_gpu
# The two forms of the in-register inverse at every r (opt-in, about 2 minutes): spd_inverse and the block,
# the symmetric sweep against Cholesky (ops._launch.SWEEP_MIN_BLOCK_R picks the sweep from BLOCK_R = 128 only).
if wants inverse; then
    run_bench bench_block.py 60 --kernels spd_inverse symnmf_block --inverse sweep --name bench_block_sweep --budget-s 45
    run_bench bench_block.py 60 --kernels spd_inverse symnmf_block --inverse cholesky --name bench_block_cholesky \
        --budget-s 45
    # The Cholesky form in one warp at padded widths 16 and 32 (spill-free there in the sm_90 compile): its
    # reductions then stay within the warp, with no barrier.
    run_bench bench_block.py 60 --kernels spd_inverse symnmf_block --inverse-warps 1 --name bench_block_inverse_1warp \
        --budget-s 45
fi
# Renumbering a graph in random node order (opt-in, about 4 minutes): the SpMM at 1M nodes, r = 16 and 64, in
# random order, by reverse Cuthill-McKee and by degree, and a whole SymHALS fit of 30 iterations with and without
# the renumbering (whose one-off cost runs on the host): whether node_order="auto" should renumber on a GPU too.
# Then SymNMF-Net's step at the design's size on the planted graph renumbered by RCM: its 19 SpMMs were 38 of its
# 69 ms in random order (fifth run), at the gather floor.
if wants reorder; then
    run_bench bench_reorder.py 150 --fits hals --fit-iters 30
    run_bench bench_net_step.py 120 --sizes 1000000,64,10 --node-order rcm --rounds 2 --budget-s 60 \
        --name bench_net_step_rcm
fi
# (BLOCK_N, num_warps) sweep of the split-n kernels, dot-precision accuracy, block before/after.
wants tune && step "tune_tiles" 220 "$PY" bench/tune_tiles.py --warm-jobs 16 --budget-s 90 --out bench/results
if wants tune_net; then
    TUNE_NET_OUT=$(mktemp -d)
    step "tune_tiles (SymNMF-Net's step, r = 64)" 150 "$PY" bench/tune_tiles.py --warm-jobs 16 --budget-s 50 \
        --families gram,apply,apply_backward_h,sparse_terms,sparse_grad --ranks 64 --block-sizes 1000000 \
        --name tune_tiles_net --out "$TUNE_NET_OUT"
    cp "$TUNE_NET_OUT"/tune_tiles_net-* bench/results/ 2>/dev/null
    TUNED=$(ls "$TUNE_NET_OUT"/tune_tiles_net-*.json 2>/dev/null | head -1)
    if [ -n "$TUNED" ]; then
        run_bench bench_net_step.py 100 --sizes 1000000,64,10 --tiles "$TUNED" --name bench_net_step_tuned
    else
        SUMMARY+=("bench_net_step.py --tiles: skipped, the sweep wrote no tiles")
    fi
fi
wants tune_small && step "tune_tiles (small problems)" 150 "$PY" bench/tune_tiles.py --warm-jobs 16 --budget-s 60 \
    --families block_small,block_small_backward --ranks 16,32,64 --block-sizes 1000000 --name tune_tiles_small \
    --out bench/results
if wants suite; then
    [ "${#XDIST[@]}" -gt 0 ] && export OMP_NUM_THREADS=4
    step "pytest (whole suite, not gpu-marked)" 240 "$PY" -m pytest -q -p no:cacheprovider -rfE "${XDIST[@]}" -m "not gpu"
fi
collect
exit "$FAILED"
