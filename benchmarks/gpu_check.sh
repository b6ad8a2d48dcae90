#!/usr/bin/env bash
# The GPU checks, as one prepared script for a device machine (see the device tool's README).
# Large-image CNTK inpainting timings, then DIP curves (published configuration) on the four dev
# images, then the astronaut table with DIP. Everything lands in benchmarks/out/ and, packed,
# in $OUT/gpu_check.tar.gz.
#
# Here, once (the dev images do not travel by themselves):
#   mkdir -p .devdata && cp -r ../shared/data/images .devdata/ && echo /.devdata/ >> .git/info/exclude
# On the device tool:  run(command="bash benchmarks/gpu_check.sh", carry=[".devdata"], timeout_s=580)
# Knobs (environment): STAGES ("large curves astronaut"), LARGE ("512 1024 2048"),
# DIP_ITERATIONS (3000), DEVICE (cuda). CPU smoke test:
#   DEVICE=cpu STAGES="curves" DIP_ITERATIONS=2 bash benchmarks/gpu_check.sh
set -uo pipefail
export NTK_SHARED_DATA=${NTK_SHARED_DATA:-$PWD/.devdata} PYTHONPATH=$PWD PYTHONUNBUFFERED=1
STAGES=${STAGES:-"large curves astronaut"}
LARGE=${LARGE:-"512 1024 2048"}
ITERATIONS=${DIP_ITERATIONS:-3000}
DEVICE=${DEVICE:-cuda}
PY=${PYTHON:-python3}
mkdir -p benchmarks/out
{
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv
  for stage in $STAGES; do
    echo "=== $stage $(date -u +%H:%M:%S)"
    case $stage in
      large) $PY benchmarks/bench_inpaint.py --only-large --large $LARGE ;;
      curves) for image in cameraman house peppers montage; do
                $PY benchmarks/bench_compare.py curve --image $image --seed 0 \
                    --iterations "$ITERATIONS" --device "$DEVICE" --log-every 50
              done ;;
      astronaut) $PY benchmarks/bench_compare.py table --methods cntk,dip,biharmonic,telea \
                     --seeds --astronaut text box --dip-iterations "$ITERATIONS" \
                     --device "$DEVICE" --csv compare_table_astronaut_gpu.csv ;;
      *) echo "unknown stage $stage" ;;
    esac
  done
  echo "=== done $(date -u +%H:%M:%S)"
} 2>&1 | tee benchmarks/out/gpu_check.log
[ -n "${OUT:-}" ] && tar czf "$OUT/gpu_check.tar.gz" benchmarks/out
exit 0
