"""The one base class every model derives from, and the output every model returns."""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

import torch
from torch import nn

from defectmap.data.synthetic import AnomalyMix


class Output(NamedTuple):
    score: torch.Tensor  # (B,) image anomaly score, higher is more anomalous
    anomaly_map: torch.Tensor  # (B, H, W) pixel anomaly scores at model resolution


class AnomalyModel(nn.Module):
    """Contract: `forward(images) -> Output` in every mode; `loss(batch) -> dict` of named losses.

    `images` are (B, 3, S, S) floats in [0, 1] (the shared pre-processing); `batch` is the dataset's dict.
    Data-dependent state is kept in registered buffers so checkpoints and `.to()` carry it.
    """

    # Set by models that learn from anomalies (PRN; a reconstruction model's denoising): the engine then trains on an
    # AnomalyMixDataset.
    anomaly_mix: AnomalyMix | None = None
    # Whether `data.anomalies` (k real anomalies, held out of the test split) applies: PRN's few-shot protocol.
    takes_real_anomalies: bool = False
    # Training settings this method needs other than TrainConfig's defaults (the user's values still win). Its
    # `min_steps`, where it states one, are the optimizer steps its results were measured with: `train` warns when a
    # run with no train.min_steps of its own can take fewer than half of them, as one given train.epochs on a few
    # dozen images can (README, "How many good images does a line need?").
    train_defaults: dict = {}

    # Config fields (sizes, counts, temperatures) whose value, or every entry of it, must be above 0.
    positive: tuple[str, ...] = ()

    @staticmethod
    def input_rule(cfg) -> tuple[int, int]:
        """(multiple, minimum) that data.image_size must meet for a model built from config `cfg` (default: any)."""
        return 1, 1

    def optimizer_groups(self) -> dict[str, list[nn.Parameter]]:
        """Loss name -> parameters it updates; the engine steps one optimizer per entry, in order."""
        return {"loss": [p for p in self.parameters() if p.requires_grad]}

    def lr_scales(self) -> dict[str, float]:
        """Loss name -> factor on train.lr for that entry's optimizer (default: none, every optimizer at train.lr)."""
        return {}

    def load_weights(self) -> None:
        """Load the pretrained weights training starts from (default: none). `train` calls it before it decodes any
        image, so a missing weights file is the first error; a checkpoint carries the weights, so loading one never
        calls it."""

    def prepare(self, batches: Iterable[torch.Tensor]) -> None:
        """Fit data-dependent state from batches of normal training images before training (default: none)."""

    def loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def validation_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The quantity early stopping minimises on normal validation images (default: the loss)."""
        return self.loss(batch)["loss"]

    def calibrate(
        self, batches: Iterable[torch.Tensor], probe: Iterable[tuple[torch.Tensor, torch.Tensor]] = ()
    ) -> dict:
        """Fit score statistics after training from batches of normal validation images (default: none).

        `probe` yields (images, labels) of the validation normals with synthetic anomalies pasted into a copy
        of each, for models that tune their score on them; it is only built when iterated. Returns the model
        config values the calibration chose, which the engine records in the checkpoint's config.
        """
        return {}

    def forward(self, images: torch.Tensor) -> Output:
        raise NotImplementedError
