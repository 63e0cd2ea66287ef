"""The registry: a new method is one file and one line here."""

from defectmap.models.ae import Autoencoder
from defectmap.models.base import AnomalyModel, Output
from defectmap.models.daad import DAAD

MODELS: dict[str, type[AnomalyModel]] = {
    "ae": Autoencoder,
    "daad": DAAD,
}

__all__ = ["MODELS", "AnomalyModel", "Output"]
