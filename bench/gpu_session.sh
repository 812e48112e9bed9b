#!/usr/bin/env bash
# The GPU measurements that wait for a lent device (issue 19 items 3 and 5, issue 18's MNIST-70k
# target), as one prepared call: a session that is lent a GPU runs `prepare` here, then `run` there.
#
#   bash bench/gpu_session.sh prepare     # here: MNIST into .devdata/, kornia's wheels into .whl/
#   # device tool: run(command="bash bench/gpu_session.sh run [speed|fit]",
#   #                  carry=[".devdata", ".whl"], timeout_s=540)
#   bash bench/gpu_session.sh file DIR    # here: DIR = the call's files_at; rows into bench/results
#
# Commit first, then prepare: the rows are stamped with the commit prepare saw.
# `run` should take under 10 minutes on an H200 (an estimate from the 2026-11-27 session, where 11
# one-view MNIST-70k fits shared that GPU at about 365 s each; never run yet): throughput at 28 px
# (MNIST-70k) at batch 256 (the default; its bare step also compiled) and 1024, and at 128 px;
# then the default fit of MNIST-70k, seeds 0-2, and seed 0 at batch 1024, side by side on the one
# card. Everything lands in $OUT: the throughput and bench_methods rows, and the log.
set -uo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
prepare)
    grep -qx '/.devdata/' .git/info/exclude 2>/dev/null || echo /.devdata/ >> .git/info/exclude
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >> .git/info/exclude
    mkdir -p .devdata/mnist
    # the device gets no .git: the rows it writes are stamped with the commit prepared here
    python3 -c 'import sys; sys.path.insert(0, "bench"); import harness; print(harness.commit())' \
        > .devdata/commit
    cp "${DVCLUST_DATA:-../shared/data}"/mnist/*.gz .devdata/mnist/
    # the device's image has torch and the rest; kornia (the augmentation) travels as wheels
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl kornia==0.9.2 kornia-rs==0.2.0
    du -sh .devdata .whl
    ;;
run)
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH="$PWD/src:/tmp/site" DVCLUST_DATA="$PWD/.devdata" PYTHONUNBUFFERED=1 \
        BENCH_COMMIT="$(cat .devdata/commit)"
    out="${OUT:-bench/results/raw}"
    wc -l < bench/results/throughput.jsonl > "$out/rows_before.txt"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu.txt"
    part="${2:-all}"  # speed, fit or all: a first call may split them
    touch bench/results/gpu.jsonl
    {
        if [ "$part" != fit ]; then
            python3 bench/throughput.py --data mnist --sizes 28 --epochs 3 --compile --tag gpu
            python3 bench/throughput.py --data mnist --sizes 28 --epochs 3 --batch-size 1024 --tag gpu1024
            python3 bench/throughput.py --sizes 128 --n 20000 --epochs 2 --batch-size 1024 --tag gpu128
        fi
        if [ "$part" != speed ]; then
            python3 bench/bench_methods.py --runs mnist:dvc:0 mnist:dvc:1 mnist:dvc:2 \
                'mnist:dvc[batch_size=1024]:0' --jobs 4 --threads 4 --tag gpu
        fi
    } 2>&1 | tee "$out/gpu_session.log"
    tail -n +"$(( $(cat "$out/rows_before.txt") + 1 ))" bench/results/throughput.jsonl > "$out/throughput.jsonl"
    cp bench/results/gpu.jsonl bench/RESULTS.md "$out/"
    ;;
file)
    # the rows the device wrote (each carries its stamp), appended to this checkout's
    cat "$2/throughput.jsonl" >> bench/results/throughput.jsonl
    cat "$2/gpu.jsonl" >> bench/results/gpu.jsonl
    cp "$2/gpu_session.log" "bench/results/raw/gpu_session_$(date +%F).log"
    # the blocks the device wrote into its copy of RESULTS.md, into this one
    python3 - "$2/RESULTS.md" <<'PY'
import re, sys
sys.path.insert(0, "bench")
from results_md import write_block
text = open(sys.argv[1]).read()
for tag, body in re.findall(r"<!-- ((?:throughput:cuda|bench_methods:gpu)\S*) -->\n(.*?)\n<!-- /\1 -->",
                            text, re.S):
    write_block(tag, body)
    print("filed block", tag)
PY
    ;;
*)
    echo "usage: bash bench/gpu_session.sh prepare|run [speed|fit]|file DIR" >&2
    exit 2
    ;;
esac
