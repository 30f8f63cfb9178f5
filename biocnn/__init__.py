"""biocnn: translation-invariant CNNs for 2D images of biological structure."""

from __future__ import annotations

__version__ = "0.2.0"

from biocnn.errors import BiocnnError  # noqa: E402
from biocnn.models import create_model, list_models, register_model  # noqa: E402

__all__ = ["__version__", "BiocnnError", "create_model", "list_models", "register_model"]
