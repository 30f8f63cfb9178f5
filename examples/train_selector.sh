#!/usr/bin/env bash
# Regenerate the shipped class-average selector (biocnn/weights/class_selector.pt) from
# simulation alone; see docs in biocnn/weights/MODEL_CARD.md. Seeded: the same commands
# on the same CPU give the same weights. ~18 min on 2 CPU cores.
set -euo pipefail
work=${1:-selector-work}
mkdir -p "$work"
biocnn simulate "$work/ca_train/" --config configs/sim_class_averages.toml --box 64 \
    --n-per-class 10000 --workers 2
biocnn simulate "$work/ca_heldout/" --config configs/sim_class_averages_heldout.toml --box 64 \
    --workers 2
biocnn train "$work/ca_train/" --config configs/selector_train.toml --out "$work/run" --no-progress
biocnn calibrate "$work/run/best.pt" "$work/ca_heldout/" --out biocnn/weights/class_selector.pt \
    --overwrite --no-progress
# test on a third set, never used for training, model selection or calibration
biocnn simulate "$work/ca_test/" --config configs/sim_class_averages_heldout.toml --box 64 \
    --seed 2000 --workers 2
python bench/selector_heldout.py biocnn/weights/class_selector.pt "$work/ca_test/"
