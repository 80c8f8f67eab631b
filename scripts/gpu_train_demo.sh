#!/usr/bin/env bash
# Train the latent demo model in one call on a lent GPU machine (one command <= 10 min, 15 min of device time in
# all, files back from $OUT: <= 8, 16 MiB each), and pack what the study needs into a few files.
#
#   here:    make gpu-deps            # diffusers (pure Python) into .gpu/; the device image has torch, transformers
#   device:  run(command="bash scripts/gpu_train_demo.sh", carry=[".gpu"], timeout_s=600)
#   here:    scripts/gpu_train_demo.sh --unpack FILES_AT out/latent-gpu   # then check, install, study (docs/demo.md)
#
# MINUTES (8.5) is the training budget, AE_SHARE (0.3) the autoencoder's part of it, RUN the run folder there;
# PY and DEVICE (cuda) let it run elsewhere for a check.
set -euo pipefail

if [[ "${1:-}" == "--unpack" ]]; then
    src=${2:?give the folder the files came back to}
    dst=${3:?give the run folder to unpack into}
    mkdir -p "$dst"
    for f in "$src"/*.tar; do tar -xf "$f" -C "$dst"; done
    ls -R "$dst"
    exit 0
fi

OUT=${OUT:?set OUT: the folder whose files come back}
MINUTES=${MINUTES:-8.5}
AE_SHARE=${AE_SHARE:-0.3}
RUN=${RUN:-/tmp/latent-gpu}
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda}
export PYTHONPATH="$PWD/src:$PWD/.gpu${PYTHONPATH:+:$PYTHONPATH}"

pack() {  # whatever exists, even after a failed or interrupted run
    cd "$RUN" || return 0
    tar -cf "$OUT/logs.tar" --ignore-failed-read ./*.csv ./*.json train.log 2>/dev/null || true
    [[ -d weights ]] && tar -cf "$OUT/weights.tar" weights
    for d in checkpoints/step_*; do  # the 100 % milestone is the final weights: 10 % and 30 % travel
        [[ -d "$d" ]] || continue
        if ! cmp -s "$d/demo_unet.safetensors" weights/demo_unet.safetensors 2>/dev/null; then
            tar -cf "$OUT/milestone_${d##*_}.tar" "$d"
        fi
    done
    ls -l "$OUT"
}
trap pack EXIT

nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
"$PY" -c "import torch, diffusers, transformers; print('torch', torch.__version__, 'diffusers', diffusers.__version__,
'transformers', transformers.__version__, 'cuda', torch.cuda.is_available())"
mkdir -p "$RUN"
"$PY" -m pladis.cli train-demo --out "$RUN" --device "$DEVICE" --no-resume --max-minutes "$MINUTES" \
    --batch-size 512 --ae-batch-size 256 --ae-share "$AE_SHARE" --log-every 100 2>&1 | tee "$RUN/train.log"
