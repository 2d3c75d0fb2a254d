#!/usr/bin/env bash
# One GPU check for a bare GPU machine, at most 8 minutes: the GPU kernel tests, bench_esvae_step.py (every
# variant), benchmarks/bench_epoch.py on CIFAR-10 and profile_step.py, then one JSON line per figure.
#
# Prepare here (project root):  ../shared/tools/device-kit cifar10
# Run there (carry .devkit):     bash benchmarks/gpu_check.sh
# The kit's wheels (spikingjelly, loguru) go to /tmp/site, its data to /tmp/data (CIFAR-10 in
# /tmp/data/CIFAR-10-images). Results JSON go to results/ and, where $OUT is set, also to $OUT; logs to
# $OUT (or /tmp/gpu_check). Without CUDA (a check of the script itself): GPU_CHECK_DEVICE=cpu runs every
# step at toy sizes on the CPU and writes its JSON under the log folder, not results/.
set -uo pipefail
cd "$(dirname "$0")/.."
DEVICE=${GPU_CHECK_DEVICE:-cuda}
LOGS=${OUT:-/tmp/gpu_check}
RES=results
[ "$DEVICE" = cpu ] && RES=$LOGS/results  # a script check must not replace the committed CPU results
mkdir -p "$LOGS" "$RES"
export PYTHONUNBUFFERED=1
if [ -d .devkit/wheels ]; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .devkit/wheels/*.whl || exit 1
  mkdir -p /tmp/data
  for f in .devkit/data/*.tar.gz; do [ -e "$f" ] && tar -C /tmp/data -xzf "$f"; done
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
PY=${PYTHON:-python3}
DATA_ROOT=${DATA_ROOT:-/tmp/data}
if [ "$DEVICE" = cpu ]; then
  ESVAE_ARGS=(--device cpu --batch 2 --T 2 --steps 1 --warmup 0 --variants torch,adamw-fused,cuda-graph)
  PROFILE_ARGS=(--device cpu --batch 2 --T 2 --warmup 0)
  EPOCH_ARGS=(--device cpu)
else
  ESVAE_ARGS=(--device cuda --steps 10 --warmup 3)
  PROFILE_ARGS=(--device cuda --batch 256)
  EPOCH_ARGS=()
fi

# step NAME SECONDS CMD...: run CMD under a time limit, log to $LOGS/NAME.log, print one JSON status line.
step() {
  local name=$1 limit=$2 start rc
  shift 2
  start=$(date +%s)
  timeout "$limit" "$@" > "$LOGS/$name.log" 2>&1
  rc=$?
  printf '{"check": "gpu_check", "step": "%s", "rc": %d, "timed_out": %s, "seconds": %d}\n' \
    "$name" "$rc" "$([ $rc -eq 124 ] && echo true || echo false)" "$(( $(date +%s) - start ))"
  tail -n 3 "$LOGS/$name.log" | sed "s/^/  [$name] /"
}

$PY - <<'PY'
import json, torch
info = {"check": "gpu_check", "figure": "device", "torch": torch.__version__, "cuda": torch.cuda.is_available()}
if torch.cuda.is_available():
    info["gpu"] = torch.cuda.get_device_name(0)
try:
    import cupy
    info["cupy"] = cupy.__version__
except Exception as err:  # noqa: BLE001
    info["cupy"] = f"unavailable: {type(err).__name__}"
print(json.dumps(info))
PY
step pytest_gpu 120 $PY -m pytest -q -m gpu tests/
step bench_esvae_step 200 $PY benchmarks/bench_esvae_step.py "${ESVAE_ARGS[@]}" \
  --out "$RES/bench_esvae_step_$DEVICE.json"
if [ -f benchmarks/bench_epoch.py ]; then
  step bench_epoch 90 $PY benchmarks/bench_epoch.py --data-root "$DATA_ROOT" "${EPOCH_ARGS[@]}" \
    --out "$RES/bench_epoch_$DEVICE.json"
else
  echo '{"check": "gpu_check", "step": "bench_epoch", "skipped": "benchmarks/bench_epoch.py not in this tree"}'
fi
step profile_step 60 $PY benchmarks/profile_step.py "${PROFILE_ARGS[@]}" --out "$RES/profile_step_$DEVICE.json"

# One JSON line per figure, read back from the logs and result files.
$PY - "$LOGS" "$DEVICE" "$RES" <<'PY'
import json, re, sys
from pathlib import Path
logs, device, res = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])

def line(**kw):
    print(json.dumps({"check": "gpu_check", **kw}))

log = logs / "pytest_gpu.log"
if log.exists():
    counts = dict((k, int(n)) for n, k in re.findall(r"(\d+) (passed|failed|skipped|error|errors|deselected)",
                                                     log.read_text()))
    line(figure="pytest -m gpu tests/ (kernels, captured step, resident data, prior)", **counts)
for name in ("bench_esvae_step", "bench_epoch", "profile_step"):
    path = res / f"{name}_{device}.json"
    if not path.exists():
        line(figure=name, missing=str(path))
        continue
    rec = json.loads(path.read_text())
    base = {"device": rec.get("gpu", rec.get("device")), "batch": rec.get("batch")}
    if name == "bench_esvae_step":
        for row in rec.get("results", []):
            keys = ("images_per_s", "step_s_median", "cuda_peak_bytes", "error")
            line(figure=f"esvae_step/{row['variant']}", **base, **{k: row[k] for k in keys if k in row})
        for variant, why in rec.get("skipped", {}).items():
            line(figure=f"esvae_step/{variant}", skipped=why)
    elif name == "profile_step":
        line(figure="profile_step/step_wall_ms", **base, value=rec.get("step_wall_ms"))
        for cat, ms in rec.get("ms_by_category", {}).items():
            line(figure=f"profile_step/{cat}", **base, ms=ms)
    else:
        line(figure=name, **base, **{k: v for k, v in rec.items() if isinstance(v, (int, float))
                                     and not isinstance(v, bool)})
PY
if [ -n "${OUT:-}" ]; then
  for f in bench_esvae_step bench_epoch profile_step; do cp "$RES/${f}_$DEVICE.json" "$OUT"/ 2>/dev/null; done
fi
exit 0
