#!/usr/bin/env bash
# The GPU figures of the retraining issue in one go, for a lent CUDA machine (see README "Retraining"):
#   1. bench_train_gpu.py: one training step of MIMIC on a ViT-B/32-sized CLIP, batch 128, fp32 vs bf16
#   2. bench_retrain_gpu.py: the whole `mimic retrain` job (input cache, training, full-KB evaluation)
# Writes JSON + logs into $OUT (default /tmp/gpu_out). Python packages the machine lacks (SQLAlchemy,
# alembic, Mako) can be put as wheels in .whl/ (see ../.library/device/README.md).
set -uo pipefail
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 HF_HUB_DISABLE_PROGRESS_BARS=1 TOKENIZERS_PARALLELISM=false
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/nvidia-smi.txt"
python3 -c "import torch, transformers, sqlalchemy; print('torch', torch.__version__, 'transformers', transformers.__version__, 'sqlalchemy', sqlalchemy.__version__)" | tee "$OUT/versions.txt"
timeout "${STEP_TIMEOUT:-150}" python3 benchmarks/bench_train_gpu.py --json "$OUT/train_step.json" 2>&1 | tee "$OUT/train_step.log"
timeout "${JOB_TIMEOUT:-330}" python3 benchmarks/bench_retrain_gpu.py --entities "${ENTITIES:-3000}" \
  --corrections "${CORRECTIONS:-4000}" --epochs "${EPOCHS:-3}" --json "$OUT/retrain.json" 2>&1 | tee "$OUT/retrain.log"
