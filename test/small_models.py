"""Small test inputs importable by name from any test: a model config for ~0.1 s training steps, random frames."""
from __future__ import annotations

import numpy as np

from deer_ros.model import DeerConfig, load_config


def small_config() -> DeerConfig:
    """The tiny config shrunk further (3 exits, short text, small images) so a training step takes ~0.1 s."""
    data = load_config('tiny').to_dict()
    data['num_exits'] = 3
    data['vision'].update(image_size=32, hidden_size=32, num_layers=2)
    data['resampler'].update(num_latents=4, hidden_size=32)
    data['decoder'].update(hidden_size=64, num_hidden_layers=6, intermediate_size=128, text_length=24)
    data['head'].update(lstm_hidden_size=64, mlp_hidden_sizes=[64])
    return DeerConfig.from_dict(data)


def random_frame(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """A uniformly random uint8 image (a camera frame with no structure)."""
    return rng.integers(0, 256, shape, dtype=np.uint8)
