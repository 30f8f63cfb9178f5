"""Models: a registry plus the LeNet baseline and the invariant core family."""

from biocnn.models import invariant, lenet  # noqa: F401  (registers the models)
from biocnn.models.invariant import InvariantCNN
from biocnn.models.lenet import LeNetFC
from biocnn.models.registry import create_model, list_models, model_spec, register_model

__all__ = ["create_model", "list_models", "model_spec", "register_model", "InvariantCNN", "LeNetFC"]
