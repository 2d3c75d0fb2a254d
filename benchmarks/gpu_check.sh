#!/usr/bin/env bash
# One GPU check of this tree on a bare GPU machine, in about 5 minutes: every fast path run and timed once.
#
#   bash benchmarks/gpu_check.sh            (from the project root; env below)
#
# Steps, in order of priority, each under its own time limit, each logged to $LOGS/<step>.log:
#   pytest_gpu        the tests marked gpu (kernels, captured step, resident data, prior, FID), data from $DATA_ROOT
#   bench_esvae_step  CIFAR-10 ESVAE training step per variant, batch 256, fp32
#   train_default     one `sjvae train` CIFAR-10 epoch on the default CUDA path (no data/kernel options)
#   ddp_nccl          `torchrun --nproc_per_node=1` of `sjvae train` for a few steps (NCCL_DEBUG=INFO shows NCCL)
#   bench_sample      ESVAE sampling (and eval reconstruction) at batch 256, CIFAR-10 shapes
#   bench_epoch       `sjvae train` epochs, MNIST and CIFAR-10, data on the GPU and on the DataLoader path
#   profile_step      torch.profiler breakdown of one step, batch 256
#   bench_compile     the torch.compile variant (last: compiling can take minutes)
# then gpu_check.json: one record with the device, the commit, each step's status and the figures.
#
# Env: DATA_ROOT (MNIST/ and CIFAR-10-images/; default /tmp/data), SJVAE_COMMIT (the commit, for a copy without
#   .git), OUT (gpu_check.json and gpu_check_logs.tar.gz are copied there; two files), GPU_CHECK_DEVICE=cpu (a check of the script itself: toy sizes
#   on the CPU, JSON under the log folder, not results/). If a folder .devkit/ holds wheels/*.whl and
#   data/*.tar.gz (packages and datasets a bare machine lacks), they are installed and unpacked first.
set -uo pipefail
cd "$(dirname "$0")/.."
DEVICE=${GPU_CHECK_DEVICE:-cuda}
LOGS=${GPU_CHECK_LOGS:-/tmp/gpu_check}
RES=results/gpu_check_$(date -u +%Y-%m-%d)
[ "$DEVICE" = cpu ] && RES=$LOGS/results  # a script check must not replace committed results
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
export SJVAE_TEST_DATA=${SJVAE_TEST_DATA:-$DATA_ROOT}
SJ=("$PY" -m spikingjelly_vae.cli)
if [ "$DEVICE" = cpu ]; then
  ESVAE_ARGS=(--device cpu --batch 2 --T 2 --steps 1 --warmup 0 --variants torch,adamw-fused,cuda-graph)
  SAMPLE_ARGS=(--device cpu --batch 2 --T 2 --latent-dim 8 --repeats 1)
  EPOCH_ARGS=(--device cpu --epochs 2 --train-subset 64 --test-subset 32 --batch-size 16 --loader-batches 2
              --loader-epochs 1)
  TRAIN_ARGS=(--device cpu --max-steps 2 --batch-size 4 --T 2 --latent-dim 8 --test-subset 8)
  DDP_ARGS=(--device cpu --max-steps 2 --batch-size 4 --T 2 --latent-dim 8 --test-subset 8)
  PROFILE_ARGS=(--device cpu --batch 2 --T 2 --warmup 0)
  COMPILE_ARGS=(--device cpu --batch 2 --T 2 --steps 1 --warmup 0 --variants torch)
else
  ESVAE_ARGS=(--device cuda --steps 10 --warmup 3 --variants torch,cupy,adamw-foreach,adamw-fused,channels-last,fuse-bn-lif,cuda-graph)
  SAMPLE_ARGS=(--device cuda --batch 256 --repeats 20)
  EPOCH_ARGS=(--device cuda --epochs 3 --loader-epochs 1)
  TRAIN_ARGS=(--epochs 1)
  DDP_ARGS=(--max-steps 30 --test-subset 2000)
  PROFILE_ARGS=(--device cuda --batch 256)
  COMPILE_ARGS=(--device cuda --steps 10 --warmup 3 --variants compile)
fi

# step NAME SECONDS CMD...: run CMD under a time limit, log to $LOGS/NAME.log, keep one status line.
: > "$LOGS/steps.jsonl"
step() {
  local name=$1 limit=$2 start rc
  shift 2
  start=$(date +%s)
  timeout "$limit" "$@" > "$LOGS/$name.log" 2>&1
  rc=$?
  printf '{"step": "%s", "rc": %d, "timed_out": %s, "limit_s": %d, "seconds": %d}\n' "$name" "$rc" \
    "$([ $rc -eq 124 ] && echo true || echo false)" "$limit" "$(( $(date +%s) - start ))" | tee -a "$LOGS/steps.jsonl"
  tail -n 4 "$LOGS/$name.log" | cut -c1-300 | sed "s/^/  [$name] /"
}

XDIST=()
$PY -c "import xdist" 2>/dev/null && [ "$DEVICE" != cpu ] && XDIST=(-n 8)
step pytest_gpu 100 $PY -m pytest -q -m gpu -p no:cacheprovider "${XDIST[@]}" tests/
step bench_esvae_step 120 $PY benchmarks/bench_esvae_step.py "${ESVAE_ARGS[@]}" --out "$RES/bench_esvae_step.json"
step train_default 60 "${SJ[@]}" train --dataset cifar10 --data-root "$DATA_ROOT" --out /tmp/gpu_check_train \
  --force --no-progress --no-tensorboard "${TRAIN_ARGS[@]}"
cp /tmp/gpu_check_train/log.csv "$LOGS/train_default_log.csv" 2>/dev/null
cp /tmp/gpu_check_train/train_config.json "$LOGS/train_default_config.json" 2>/dev/null
step ddp_nccl 60 env NCCL_DEBUG=INFO $PY -m torch.distributed.run --standalone --nproc_per_node=1 \
  -m spikingjelly_vae.cli train --dataset mnist --data-root "$DATA_ROOT" --out /tmp/gpu_check_ddp --force \
  --no-progress --no-tensorboard "${DDP_ARGS[@]}"
step bench_sample 45 $PY benchmarks/bench_models.py --models esvae --channels 3 "${SAMPLE_ARGS[@]}" \
  --out "$RES/bench_sample.json"
step bench_epoch 150 $PY benchmarks/bench_epoch.py --data-root "$DATA_ROOT" "${EPOCH_ARGS[@]}" \
  --out "$RES/bench_epoch.json"
step profile_step 50 $PY benchmarks/profile_step.py "${PROFILE_ARGS[@]}" --out "$RES/profile_step.json"
step bench_compile 70 $PY benchmarks/bench_esvae_step.py "${COMPILE_ARGS[@]}" --out "$RES/bench_compile.json"

# One record: device, commit, steps, GPU test counts, NCCL evidence, and each benchmark's JSON.
$PY - "$LOGS" "$RES" <<'PY'
import json, os, re, sys
from pathlib import Path
logs, res = Path(sys.argv[1]), Path(sys.argv[2])
sys.path.insert(0, "benchmarks")
import torch
from bench_lif import commit
rec = {"check": "gpu_check", **commit(), "torch": torch.__version__, "cuda": torch.cuda.is_available(),
       "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
       "steps": [json.loads(l) for l in (logs / "steps.jsonl").read_text().splitlines() if l.strip()]}
try:
    import cupy
    rec["cupy"] = cupy.__version__
except Exception as err:  # noqa: BLE001
    rec["cupy"] = f"unavailable: {type(err).__name__}"
text = (logs / "pytest_gpu.log").read_text(errors="replace") if (logs / "pytest_gpu.log").exists() else ""
tail = text.strip().splitlines()[-1:] or [""]
rec["pytest_gpu"] = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", tail[0])}
rec["pytest_gpu_failures"] = re.findall(r"^(?:FAILED|ERROR) .*$", text, re.M)[:20]
ddp = (logs / "ddp_nccl.log").read_text(errors="replace") if (logs / "ddp_nccl.log").exists() else ""
ddp_rc = next((s["rc"] for s in rec["steps"] if s["step"] == "ddp_nccl"), None)
rec["ddp_nccl"] = {"rc": ddp_rc, "nccl_init_lines": len(re.findall(r"NCCL INFO", ddp)),
                   "passed": ddp_rc == 0 and "NCCL INFO" in ddp}
log = logs / "train_default_log.csv"
rec["train_default_log"] = log.read_text() if log.exists() else None
for name in ("bench_esvae_step", "bench_sample", "bench_epoch", "profile_step", "bench_compile"):
    path = res / f"{name}.json"
    rec[name] = json.loads(path.read_text()) if path.exists() else {"missing": str(path)}
out = res / "gpu_check.json"
out.write_text(json.dumps(rec, indent=1))
short = {k: rec[k] for k in ("gpu", "commit", "pytest_gpu", "ddp_nccl")}
print(json.dumps(short))
for row in rec["bench_esvae_step"].get("results", []):
    print(f"{row['variant']:>14}: {row.get('images_per_s', row.get('error'))} img/s,"
          f" peak {row.get('cuda_peak_bytes', 0) / 2**20:.0f} MiB")
for row in rec["bench_epoch"].get("epoch", []) if isinstance(rec["bench_epoch"].get("epoch"), list) else []:
    print(f"epoch {row.get('dataset')} gpu={row.get('data_on_gpu')}: {row.get('seconds_per_epoch')} s")
m = rec["bench_sample"].get("models", {}).get("esvae", {})
if m:
    b = rec["bench_sample"]["batch"]
    print(f"sample: {b / m['sample']['median_s']:.0f} img/s at batch {b}")
PY
if [ -n "${OUT:-}" ]; then
  mkdir -p "$OUT"
  tar -czf "$OUT/gpu_check_logs.tar.gz" -C "$LOGS" $(cd "$LOGS" && ls *.log *.csv *.json *.jsonl 2>/dev/null)
  cp "$RES/gpu_check.json" "$OUT"/
fi
exit 0
