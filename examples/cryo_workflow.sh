#!/usr/bin/env bash
# End-to-end cryo-EM workflow on simulated data (no download needed):
# simulate labelled particles from the bundled PDB models, train the invariant core,
# evaluate its shift robustness, and classify a stack into a RELION STAR file.
set -euo pipefail
out=${1:-runs/example}
biocnn simulate --demo "$out/maps" --preview "$out/preview.png"
biocnn train "$out/maps" --out "$out/train"
biocnn evaluate "$out/maps" --model "$out/train/best.pt" --out "$out/eval"
first_stack=$(find "$out/maps" -name '*.mrcs' | sort | head -n 1)
biocnn predict "$first_stack" --model "$out/train/best.pt" --star "$out/predicted.star"
