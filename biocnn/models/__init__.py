"""Models: a registry plus the LeNet baseline and the invariant core family (shifts; shifts + D4)."""

from biocnn.models import d4, invariant, lenet  # noqa: F401  (registers the models)
from biocnn.models.d4 import D4InvariantCNN
from biocnn.models.invariant import InvariantCNN
from biocnn.models.lenet import LeNetFC
from biocnn.models.registry import create_model, list_models, model_spec, register_model

__all__ = ["create_model", "list_models", "model_spec", "register_model", "InvariantCNN", "D4InvariantCNN",
           "LeNetFC"]
