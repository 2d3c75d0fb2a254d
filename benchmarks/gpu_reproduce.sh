#!/usr/bin/env bash
# Continue the Table I schedules of DATASET for about MINUTES on a bare GPU machine (docs/reproduce.md).
#
#   benchmarks/gpu_reproduce.sh DATASET MINUTES [MODELS]     (from the project root; MODELS default: esvae,fsvae,ann-vae)
#
# Before (here, on the machine with ../shared):  ../shared/tools/device-kit DATASET fad inception16
#   (cifar10 needs the `cifar10` item; `fad` is used for mnist/fashion only), then run this script on the
#   GPU machine with .devkit carried. The state it continues is results/table1/DATASET/MODEL/ (last.pt with
#   the optimizer, log.csv, reproduce.json), committed in the repository.
# After: the new state comes back as $OUT/state-DATASET.tar.partN (pieces of at most 15 MiB) with log.txt and
#   table1.md; unpack with  cat FILES_AT/state-DATASET.tar.part* | tar -xf - -C results/table1  and commit.
# Env: OUT (required, the folder that comes back), RESERVE_MINUTES (default 2: evaluation and packing are
#   kept out of the training budget), NUM_WORKERS (default 8), SJVAE_COMMIT (the commit being run, recorded
#   in the provenance when the copy has no .git), IS_WEIGHTS (torchvision inception_v3 weights, for IS);
#   for a CPU smoke run of this script: PYTHON, DEVICE=cpu, REPRODUCE_ARGS=--quick.
set -euo pipefail
usage="usage: benchmarks/gpu_reproduce.sh DATASET MINUTES [MODELS]"
dataset=${1:?$usage}
minutes=${2:?$usage}
models=${3:-esvae,fsvae,ann-vae}
out=${OUT:?set OUT to the folder whose files come back}
reserve=${RESERVE_MINUTES:-2}
max_parts=4  # 4 x 15 MiB: the 64 MiB that may come back, with room for log.txt and table1.md
log="$out/log.txt"

# 1. what the bare machine lacks: SpikingJelly wheels, the data, the FID network (the device kit)
[ -d .devkit/wheels ] || { echo "no .devkit: run ../shared/tools/device-kit $dataset fad inception16 here first, then carry .devkit" >&2; exit 2; }
py=${PYTHON:-python3}
if ls .devkit/wheels/*.whl >/dev/null 2>&1; then
  $py -m pip install -q --no-index --no-deps --target /tmp/site .devkit/wheels/*.whl
fi
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
mkdir -p /tmp/data
for f in .devkit/data/*.tar.gz; do [ -e "$f" ] && tar -C /tmp/data -xzf "$f"; done
extra=()
if [ -f .devkit/restore_inception.py ]; then
  $py .devkit/restore_inception.py /tmp/inception.pt && extra+=(--inception-weights /tmp/inception.pt)
fi
[ -d /tmp/data/esvae_fad ] && extra+=(--fad-dir /tmp/data/esvae_fad)
[ -n "${IS_WEIGHTS:-}" ] && extra+=(--is-weights "$IS_WEIGHTS")
if [ -z "${SJVAE_COMMIT:-}" ] && git rev-parse HEAD >/dev/null 2>&1; then export SJVAE_COMMIT=$(git rev-parse HEAD); fi

# 2. train within the budget left after the setup above, then evaluate what completed
budget=$($py -c "print(max(0.5, $minutes - $reserve - $SECONDS / 60))")
echo "setup took ${SECONDS}s; training budget ${budget} min" | tee "$log"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >> "$log" 2>&1 || true
status=0
$py examples/reproduce_table1.py --dataset "$dataset" --models "$models" --out results/table1 \
  --budget-minutes "$budget" --data-root /tmp/data --device "${DEVICE:-cuda}" --num-workers "${NUM_WORKERS:-8}" \
  "${extra[@]}" ${REPRODUCE_ARGS:-} >> "$log" 2>&1 || status=$?

# 3. pack the new state (best.pt and TensorBoard files stay behind) into pieces that can come back
if [ -d "results/table1/$dataset" ]; then
  cp "results/table1/$dataset/table1.md" "$out/" 2>/dev/null || true
  tar -cf - -C results/table1 --exclude=best.pt --exclude=tb "$dataset" \
    | split -b 15M -d -a 1 - "$out/state-$dataset.tar.part"
  parts=$(ls "$out"/state-"$dataset".tar.part* | wc -l)
  if [ "$parts" -gt "$max_parts" ]; then
    echo "the state of $dataset is $parts x 15 MiB, more than can come back; run fewer models per call" | tee -a "$log"
    rm -f "$out"/state-"$dataset".tar.part*
    status=3
  fi
fi
tail -n 20 "$log"
exit $status
