"""The registry: a new method is one file and one line here."""

from defectmap.models.ae import Autoencoder
from defectmap.models.base import AnomalyModel, Output

MODELS: dict[str, type[AnomalyModel]] = {
    "ae": Autoencoder,
}

__all__ = ["MODELS", "AnomalyModel", "Output"]
