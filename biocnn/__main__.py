"""``python -m biocnn`` (also what ``torchrun -m biocnn`` runs)."""

from biocnn.cli import main

main()
