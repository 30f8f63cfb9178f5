"""The cryo-EM application commands as plain functions: one per command, taking a config.

* :func:`run_train` (:class:`CryoTrainConfig`): ``biocnn train``;
* :func:`run_predict` (:class:`PredictConfig`): ``biocnn predict``;
* :func:`run_evaluate` (:class:`EvaluateConfig`): ``biocnn evaluate``.

The CLI modules (:mod:`biocnn.cli.train`, ...) only parse options into these configs.

Example
-------
    >>> from biocnn.tasks import CryoTrainConfig, run_train  # doctest: +SKIP
    >>> run_train(CryoTrainConfig(data="maps/", out="runs/demo"))  # doctest: +SKIP
"""

from biocnn.checkpoint import Classifier, load_classifier
from biocnn.config import CryoTrainConfig
from biocnn.tasks.evaluate import EvaluateConfig, EvaluateResult, run_evaluate
from biocnn.tasks.predict import PredictConfig, PredictResult, run_predict
from biocnn.tasks.train import TrainResult, run_train

__all__ = [
    "Classifier",
    "CryoTrainConfig",
    "EvaluateConfig",
    "EvaluateResult",
    "PredictConfig",
    "PredictResult",
    "TrainResult",
    "load_classifier",
    "run_evaluate",
    "run_predict",
    "run_train",
]
