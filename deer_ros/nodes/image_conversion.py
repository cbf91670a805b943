"""Convert between ``sensor_msgs/Image`` and numpy ``(H, W, 3)`` uint8 RGB arrays.

Why not cv_bridge: the only cv_bridge on PyPI (``cv-bridge``) is the ROS 1
package; with numpy >= 2.3 and OpenCV 5 its conversions raise, and it must not
be installed. A ROS 2 cv_bridge exists only in a system ROS install. Using it
when importable would give two code paths, one of them never tested here, and
pull OpenCV into a node that needs none. The three encodings cameras and the
simulator use are plain byte layouts, so numpy handles them directly, the same
way on every install.

Decoding honours ``step`` (rows may be padded past ``width * channels``) and
checks that ``data`` holds exactly ``step * height`` bytes. ``is_bigendian``
is accepted either way: every supported encoding has one-byte channels, which
have no byte order. Anything else raises ``ValueError`` naming the problem, so a
misconfigured camera fails loudly at the first frame instead of feeding the
policy a garbled image.
"""
from __future__ import annotations

import array as pyarray

import numpy as np
from sensor_msgs.msg import Image
from std_msgs.msg import Header

CHANNELS: dict[str, int] = {'rgb8': 3, 'bgr8': 3, 'mono8': 1}
"""Supported encodings and their number of one-byte channels."""

# ITU-R BT.601 luma weights (also OpenCV's RGB2GRAY), in thousandths for integer maths.
_LUMA_WEIGHTS = np.array([299, 587, 114], dtype=np.uint32)


def _channels(encoding: str) -> int:
    try:
        return CHANNELS[encoding]
    except KeyError:
        raise ValueError(
            f'unsupported image encoding {encoding!r}; supported: {", ".join(CHANNELS)}') from None


def _pixels(msg: Image) -> np.ndarray:
    """View ``msg.data`` as (H, W, C) uint8 after validating size, step and length."""
    channels = _channels(msg.encoding)
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height == 0 or width == 0:
        raise ValueError(f'empty image ({width}x{height})')
    row_bytes = width * channels
    if step < row_bytes:
        raise ValueError(
            f'step {step} is smaller than width * channels = {row_bytes} for {msg.encoding}')
    data = np.frombuffer(msg.data, dtype=np.uint8)
    if data.size != step * height:
        raise ValueError(
            f'image data has {data.size} bytes, expected step * height = {step} * {height} = '
            f'{step * height} ({"truncated" if data.size < step * height else "too long"})')
    return data.reshape(height, step)[:, :row_bytes].reshape(height, width, channels)


def image_msg_to_rgb(msg: Image) -> np.ndarray:
    """Decode an rgb8, bgr8 or mono8 ``Image`` into a new (H, W, 3) uint8 RGB array.

    The result owns its memory (never a view of ``msg.data``), so it stays valid
    and writable after the message is reused or released.
    """
    pixels = _pixels(msg)
    if msg.encoding == 'bgr8':
        pixels = pixels[..., ::-1]
    elif msg.encoding == 'mono8':
        pixels = np.broadcast_to(pixels, pixels.shape[:2] + (3,))
    return np.array(pixels, dtype=np.uint8, order='C', copy=True)


def rgb_to_image_msg(
    array: np.ndarray, header: Header | None = None, encoding: str = 'rgb8'
) -> Image:
    """Encode an (H, W, 3) uint8 RGB array as an ``Image`` with packed rows.

    ``encoding`` picks the wire layout: rgb8 as is, bgr8 with channels reversed,
    mono8 as BT.601 luma. Non-uint8 input is refused rather than cast, since a
    float image in [0, 1] would silently become black.
    """
    channels = _channels(encoding)
    pixels = np.asarray(array)
    if pixels.dtype != np.uint8:
        raise ValueError(f'expected uint8 pixels, got {pixels.dtype}')
    if pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError(f'expected an (H, W, 3) RGB array, got shape {pixels.shape}')
    height, width = pixels.shape[:2]
    if height == 0 or width == 0:
        raise ValueError(f'empty image ({width}x{height})')
    if encoding == 'bgr8':
        pixels = pixels[..., ::-1]
    elif encoding == 'mono8':
        pixels = ((pixels @ _LUMA_WEIGHTS + 500) // 1000).astype(np.uint8)
    msg = Image(
        header=header if header is not None else Header(),
        height=height,
        width=width,
        encoding=encoding,
        is_bigendian=0,
        step=width * channels,
    )
    msg.data = pyarray.array('B', np.ascontiguousarray(pixels).tobytes())
    return msg
