"""The registry: a new method is one file and one line here."""

from defectmap.models.ae import Autoencoder
from defectmap.models.base import AnomalyModel, Output
from defectmap.models.daad import DAAD
from defectmap.models.pmb import PMB
from defectmap.models.prn import PRN

MODELS: dict[str, type[AnomalyModel]] = {
    "ae": Autoencoder,
    "daad": DAAD,
    "pmb": PMB,
    "prn": PRN,
}

__all__ = ["MODELS", "AnomalyModel", "Output"]
