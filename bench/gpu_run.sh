#!/usr/bin/env bash
# The GPU machine's one command (the device tool): the CUDA tests, then the issue's GPU report.
#
#   run(command="bash bench/gpu_run.sh", carry=[".whl"])
#   run(command="bash bench/gpu_run.sh tests", ...)   # only the tests (or: bench), when the two
#                                                      # together would pass one call's time limit
#
# The GPU image has PyTorch (CUDA), ONNX Runtime, OpenCV, Pillow and requests but not Flask,
# gunicorn or zlib-ng (nor, perhaps, tqdm): their wheels travel in .whl (git-ignored; the issue 5 note has the download
# command). ../shared does not travel by itself, and its files are never copied into the project:
# a git-ignored link `.devshared -> ../shared` here, with its parts named in carry, travels as a
# folder of those parts, and becomes ../shared there:
#
#   ln -sfn ../shared .devshared; echo /.devshared >> .git/info/exclude
#   run(command="bash bench/gpu_run.sh", carry=[".whl", ".devshared/models/u2netp",
#       ".devshared/data/parity", ".devshared/data/photos"])
#
# Without it the real-weights tests skip and the benchmark uses a synthetic photo (it says so).
# Output goes to $OUT (the device tool's folder) or bench/out.
# PYTHON, BENCH_ARGS and WHEELS override the interpreter, the benchmark's arguments and the wheel
# folder; TESTS_TIMEOUT, BENCH_TIMEOUT, ISNET_TIMEOUT and JOBS_TIMEOUT (seconds) bound each stage, so that a hang in one still
# leaves the other's output and the logs (the device's time is short).
set -uo pipefail
cd "$(dirname "$0")/.."
STAGE="${1:-all}"
case "$STAGE" in all|tests|bench) ;; *) echo "usage: $0 [all|tests|bench]" >&2; exit 2 ;; esac
OUT="${OUT:-bench/out}"
PYTHON="${PYTHON:-python3}"
# Sized for one device call: on an H200 every server start tunes cuDNN for each batch size up to
# U2NET_MAX_BATCH (U2NET: ~5 s a size, 40 s for 8), so the report runs 4 servers at max batch 8
# and the compose file's 2 ms batch wait; --batch-wait 0,2 (two more servers) compares the waits.
BENCH_ARGS="${BENCH_ARGS:---compare-precision fp32,bf16 --quick --max-batch 8 --batch-wait 2 --clients 1,8,32}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1

WHEELS="${WHEELS:-.whl}"  # the py3.12 wheels for the GPU image (WHEELS=none: skip)
if compgen -G "$WHEELS/*.whl" >/dev/null; then
  "$PYTHON" -m pip install -q --no-index --no-deps --target /tmp/site "$WHEELS"/*.whl || exit 1
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
if [ ! -e ../shared ] && [ -d .devshared ]; then ln -s "$PWD/.devshared" ../shared; fi
# The package u2net lives in U-2-Net/ (pyproject.toml maps it); a link imports it uninstalled.
mkdir -p /tmp/u2net-pkgs && ln -sfn "$PWD/U-2-Net" /tmp/u2net-pkgs/u2net
export PYTHONPATH="/tmp/u2net-pkgs:$PWD${PYTHONPATH:+:$PYTHONPATH}"

{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 || true
  "$PYTHON" -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())'
} | tee "$OUT/gpu.txt"
tests_rc=0 bench_rc=0
if [ "$STAGE" != bench ]; then
  timeout "${TESTS_TIMEOUT:-300}" "$PYTHON" -m pytest -q -p no:cacheprovider -rA tests/test_cuda.py tests/test_batching.py \
    tests/test_engine.py 2>&1 | tee "$OUT/cuda-tests.log"
  tests_rc=${PIPESTATUS[0]}
fi
if [ "$STAGE" != tests ]; then
  # shellcheck disable=SC2086  # BENCH_ARGS is a list of arguments
  timeout "${BENCH_TIMEOUT:-480}" "$PYTHON" bench/benchmark.py $BENCH_ARGS 2>&1 | tee "$OUT/gpu-benchmark.log"
  bench_rc=${PIPESTATUS[0]}
  cp bench/out/benchmark.json "$OUT/" 2>/dev/null || true
  # IS-Net (1024x1024, random weights): the network alone in every engine and precision, warmed
  # at batch 1 only (its 8 batch sizes' tuning took over 100 s on the H200); ISNET_ARGS
  # overrides, ISNET_ARGS=skip leaves it out.
  ISNET_ARGS="${ISNET_ARGS:---model isnet-general-use --quick --engines-only --max-batch 1}"
  if [ "$ISNET_ARGS" != skip ]; then
    # shellcheck disable=SC2086
    timeout "${ISNET_TIMEOUT:-${BENCH_TIMEOUT:-480}}" "$PYTHON" bench/benchmark.py $ISNET_ARGS 2>&1 | tee "$OUT/gpu-benchmark-isnet.log"
    isnet_rc=${PIPESTATUS[0]}
    cp bench/out/benchmark.json "$OUT/benchmark-isnet.json" 2>/dev/null || true
    bench_rc=$(( bench_rc || isnet_rc ))
  fi
  # `bgremove remove --jobs N` against one at a time on the GPU (the real U2NETP on the carried
  # photos and parity images); JOBS_ARGS overrides, JOBS_ARGS=skip leaves it out.
  JOBS_ARGS="${JOBS_ARGS:---device cuda --weights ../shared/models/u2netp/u2netp.pth --jobs 4,8 --rounds 2 ../shared/data/photos ../shared/data/parity/images}"
  if [ "$JOBS_ARGS" != skip ]; then
    # shellcheck disable=SC2086
    timeout "${JOBS_TIMEOUT:-150}" "$PYTHON" bench/cli_jobs.py $JOBS_ARGS 2>&1 | tee "$OUT/gpu-cli-jobs.log"
    jobs_rc=${PIPESTATUS[0]}
    bench_rc=$(( bench_rc || jobs_rc ))
  fi
fi
echo "tests rc=$tests_rc benchmark rc=$bench_rc"
exit $(( tests_rc || bench_rc ))
