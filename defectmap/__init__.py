"""defectmap: learn what good parts look like, then score images and outline defects.

Public API: `fit`, `load`, `test_split`, `evaluate`, `predict`, `defect_regions`, `MODELS`.
"""

__version__ = "0.1.0"

from defectmap.engine import Detector, evaluate, load, predict, test_split  # noqa: E402
from defectmap.models import MODELS  # noqa: E402
from defectmap.regions import defect_regions  # noqa: E402
from defectmap.training import fit  # noqa: E402

__all__ = ["MODELS", "Detector", "defect_regions", "evaluate", "fit", "load", "predict", "test_split", "__version__"]
