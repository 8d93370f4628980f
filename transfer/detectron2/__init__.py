"""Detectron2 glue: weight files, the ExtraNorm ROI head, configs and datasets of the detection protocols.

One job per module:

- :mod:`.names`: torchvision ↔ Detectron2 ResNet names, the ``.pkl`` writer;
- :mod:`.head`: the ExtraNorm C4 ROI head, registered with Detectron2 on import;
- :mod:`.config`: shipped config names or yaml paths, the BN choice, one seed's cfg, its hyperparameters;
- :mod:`.datasets`: datasets as the user gives them, their registration and checks;
- :mod:`.install`: whether Detectron2 is installed, and how to install it.

Importing this package does not import Detectron2: only :mod:`.head` needs it on import, and the
functions that use it (:func:`load_config`, :func:`build_config`, :func:`register_dataset`,
:func:`check_dataset`) import it when called.
"""

from .config import NORM_CHOICES, NORM_KEYS, build_config, choose_norm, hyperparameters, resolve_config
from .datasets import DatasetSpec, check_dataset, parse_dataset, register_dataset
from .install import INSTALL_HINT, require_detectron2
from .names import (
    CAFFE2_HINT,
    d2_to_tv_name,
    detectron2_payload,
    from_detectron2,
    to_detectron2,
    tv_to_d2_name,
    write_detectron2_pkl,
)

__all__ = [
    "CAFFE2_HINT",
    "INSTALL_HINT",
    "NORM_CHOICES",
    "NORM_KEYS",
    "DatasetSpec",
    "build_config",
    "check_dataset",
    "choose_norm",
    "d2_to_tv_name",
    "detectron2_payload",
    "from_detectron2",
    "hyperparameters",
    "parse_dataset",
    "register_dataset",
    "require_detectron2",
    "resolve_config",
    "to_detectron2",
    "tv_to_d2_name",
    "write_detectron2_pkl",
]
