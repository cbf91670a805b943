"""Convert camera messages (``sensor_msgs/Image``, ``sensor_msgs/CompressedImage``) to and from (H, W, 3) uint8 RGB.

Why not cv_bridge: the only cv_bridge on PyPI (``cv-bridge``) is the ROS 1
package; with numpy >= 2.3 and OpenCV 5 its conversions raise, and it must not
be installed. A ROS 2 cv_bridge exists only in a system ROS install. Using it
when importable would give two code paths, one of them never tested here, and
pull OpenCV into a node that needs none. The raw encodings cameras and the
simulator use are plain byte layouts, so numpy handles them directly, the same
way on every install.

Raw ``Image``: rgb8, bgr8, rgba8, bgra8 (alpha dropped), mono8 (grey RGB) and
yuv422. ROS's ``yuv422`` is UYVY (U Y0 V Y1 per pixel pair), ``yuv422_yuy2`` is
YUYV (Y0 U Y1 V), what V4L2 webcams deliver; both are BT.601 limited range, as
cv_bridge/OpenCV read them. Decoding honours ``step`` (rows may be padded past
``width * bytes per pixel``) and checks that ``data`` holds exactly ``step *
height`` bytes. ``is_bigendian`` is accepted either way: every supported
encoding has one-byte samples, which have no byte order.

``CompressedImage`` (image_transport's ``compressed`` transport, topic
``<base>/compressed``): JPEG and PNG, decoded with Pillow. Why Pillow: it is
the best-kept Python imaging library (libjpeg-turbo and zlib inside its
wheels, fuzzed by OSS-Fuzz), it is already in the venv as matplotlib's
dependency, so it adds no second numpy stack and no OpenCV, and it reads the
CMYK, grey, palette and alpha variants a driver may emit. simplejpeg would
cover JPEG only; imagecodecs is a large native bundle for two codecs.
The ``format`` field is read as image_transport writes it (``"rgb8; jpeg
compressed bgr8"``, ``"bgr8; png compressed bgr8"``) or bare (``"jpeg"``,
``"png"``), and the bytes must really be that codec. A JPEG carries no
checksum, so damage inside its entropy-coded data can decode to a wrong but
complete picture; truncation and broken structure are detected.

Every refusal is a ``ValueError`` naming the problem (never a decoder's own
exception), so the node can turn any bad frame into a hold with a clear
diagnostic instead of feeding the policy a garbled image.
"""
from __future__ import annotations

import array as pyarray
import io
import struct

import numpy as np
from PIL import Image as PilImage
from PIL import ImageMode, UnidentifiedImageError
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

BYTES_PER_PIXEL: dict[str, int] = {
    'rgb8': 3, 'bgr8': 3, 'rgba8': 4, 'bgra8': 4, 'mono8': 1, 'yuv422': 2, 'yuv422_yuy2': 2}
"""Supported raw encodings and their bytes per pixel (all samples are one byte)."""

COMPRESSED_FORMATS = ('jpeg', 'png')
"""Codecs of the ``compressed`` transport that decode and encode here."""

TRANSPORTS: dict[str, type] = {'raw': Image, 'compressed': CompressedImage}
"""image_transport name -> message type on its topic (see ``transport_topic``)."""

MAX_COMPRESSED_PIXELS = 1 << 25
"""Largest declared JPEG/PNG size decoded (32 Mpx, above 8K): a corrupt header cannot make a node allocate GBs."""

_CODEC_ALIASES = {'jpeg': 'jpeg', 'jpg': 'jpeg', 'png': 'png'}
_MAGIC = {'jpeg': b'\xff\xd8\xff', 'png': b'\x89PNG\r\n\x1a\n'}
# image_transport's own default png_level: fast, and PNG is lossless at every level.
_PNG_LEVEL = 3
# What Pillow raises on bad JPEG/PNG bytes (PNG chunk errors are SyntaxError, short reads struct.error).
_DECODER_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error)

# ITU-R BT.601 luma weights (also OpenCV's RGB2GRAY), in thousandths for integer maths.
_LUMA_WEIGHTS = np.array([299, 587, 114], dtype=np.uint32)
# BT.601 R'G'B' [0, 1] -> Y'PbPr, then limited-range Y'CbCr: Y' in 16..235, Cb/Cr in 16..240.
_KR, _KB = 0.299, 0.114
_RGB_TO_YPBPR = np.array([
    [_KR, 1 - _KR - _KB, _KB],
    [-_KR / (2 - 2 * _KB), -(1 - _KR - _KB) / (2 - 2 * _KB), 0.5],
    [0.5, -(1 - _KR - _KB) / (2 - 2 * _KR), -_KB / (2 - 2 * _KR)],
])
_RGB_TO_YCBCR = (_RGB_TO_YPBPR * (np.array([219.0, 224.0, 224.0]) / 255.0)[:, None]).T.astype(np.float32)
_YCBCR_TO_RGB = np.linalg.inv(_RGB_TO_YCBCR).astype(np.float32)
_YCBCR_OFFSET = np.array([16.0, 128.0, 128.0], dtype=np.float32)
# Byte positions of (Y0, U, Y1, V) inside one 4-byte pixel pair on the wire.
_YUV422_ORDER = {'yuv422': (1, 0, 3, 2), 'yuv422_yuy2': (0, 1, 2, 3)}


def transport_topic(base: str, transport: str) -> str:
    """The topic image_transport uses for ``transport`` of the camera topic ``base``."""
    if transport not in TRANSPORTS:
        raise ValueError(f'unknown image transport {transport!r}; supported: {", ".join(TRANSPORTS)}')
    return base if transport == 'raw' else f'{base}/{transport}'


def msg_to_rgb(msg: Image | CompressedImage) -> np.ndarray:
    """Decode either camera message type into a new (H, W, 3) uint8 RGB array."""
    return compressed_msg_to_rgb(msg) if isinstance(msg, CompressedImage) else image_msg_to_rgb(msg)


def _bytes_per_pixel(encoding: str) -> int:
    try:
        return BYTES_PER_PIXEL[encoding]
    except KeyError:
        raise ValueError(
            f'unsupported image encoding {encoding!r}; supported: {", ".join(BYTES_PER_PIXEL)}') from None


def _check_even_width(encoding: str, width: int) -> None:
    if encoding in _YUV422_ORDER and width % 2:
        raise ValueError(f'{encoding} needs an even width (pixel pairs share U and V), got width {width}')


def _pixels(msg: Image) -> np.ndarray:
    """View ``msg.data`` as (H, W, bytes per pixel) uint8 after validating size, step and length."""
    per_pixel = _bytes_per_pixel(msg.encoding)
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height == 0 or width == 0:
        raise ValueError(f'empty image ({width}x{height})')
    _check_even_width(msg.encoding, width)
    row_bytes = width * per_pixel
    if step < row_bytes:
        raise ValueError(
            f'step {step} is smaller than width * bytes per pixel = {row_bytes} for {msg.encoding}')
    data = np.frombuffer(msg.data, dtype=np.uint8)
    if data.size != step * height:
        raise ValueError(
            f'image data has {data.size} bytes, expected step * height = {step} * {height} = '
            f'{step * height} ({"truncated" if data.size < step * height else "too long"})')
    return data.reshape(height, step)[:, :row_bytes].reshape(height, width, per_pixel)


def _yuv422_to_rgb(pixels: np.ndarray, encoding: str) -> np.ndarray:
    """(H, W, 2) yuv422 bytes -> (H, W, 3) RGB; each pixel pair shares its U and V."""
    height, width = pixels.shape[:2]
    y0, u, y1, v = _YUV422_ORDER[encoding]
    pairs = pixels.reshape(height, width // 2, 4)
    ycbcr = np.empty((height, width // 2, 2, 3), np.float32)
    ycbcr[..., 0] = pairs[..., [y0, y1]]
    ycbcr[..., 1:] = pairs[..., None, [u, v]]
    rgb = (ycbcr.reshape(-1, 3) - _YCBCR_OFFSET) @ _YCBCR_TO_RGB
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8).reshape(height, width, 3)


def _rgb_to_yuv422(pixels: np.ndarray, encoding: str) -> np.ndarray:
    """(H, W, 3) RGB -> (H, W, 2) yuv422 bytes; U and V are averaged over each pixel pair."""
    height, width = pixels.shape[:2]
    ycbcr = pixels.reshape(-1, 3).astype(np.float32) @ _RGB_TO_YCBCR + _YCBCR_OFFSET
    ycbcr = ycbcr.reshape(height, width // 2, 2, 3)
    y0, u, y1, v = _YUV422_ORDER[encoding]
    wire = np.empty((height, width // 2, 4), np.float32)
    wire[..., [y0, y1]] = ycbcr[..., 0]
    wire[..., [u, v]] = ycbcr[..., 1:].mean(axis=2)
    return np.clip(np.rint(wire), 0, 255).astype(np.uint8).reshape(height, width, 2)


def image_msg_to_rgb(msg: Image) -> np.ndarray:
    """Decode a raw ``Image`` (any of ``BYTES_PER_PIXEL``) into a new (H, W, 3) uint8 RGB array.

    The result owns its memory (never a view of ``msg.data``), so it stays valid
    and writable after the message is reused or released.
    """
    pixels = _pixels(msg)
    if msg.encoding in ('rgb8', 'rgba8'):
        pixels = pixels[..., :3]
    elif msg.encoding in ('bgr8', 'bgra8'):
        pixels = pixels[..., 2::-1]
    elif msg.encoding == 'mono8':
        pixels = np.broadcast_to(pixels, pixels.shape[:2] + (3,))
    else:
        pixels = _yuv422_to_rgb(pixels, msg.encoding)
    return np.array(pixels, dtype=np.uint8, order='C', copy=True)


def _check_rgb(array: np.ndarray) -> np.ndarray:
    """``array`` as (H, W, 3) uint8; non-uint8 is refused, not cast, since floats in [0, 1] would turn black."""
    pixels = np.asarray(array)
    if pixels.dtype != np.uint8:
        raise ValueError(f'expected uint8 pixels, got {pixels.dtype}')
    if pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError(f'expected an (H, W, 3) RGB array, got shape {pixels.shape}')
    if pixels.shape[0] == 0 or pixels.shape[1] == 0:
        raise ValueError(f'empty image ({pixels.shape[1]}x{pixels.shape[0]})')
    return pixels


def rgb_to_image_msg(
    array: np.ndarray, header: Header | None = None, encoding: str = 'rgb8'
) -> Image:
    """Encode an (H, W, 3) uint8 RGB array as a raw ``Image`` with packed rows.

    ``encoding`` picks the wire layout: rgb8 as is, bgr8 with channels reversed,
    rgba8/bgra8 with opaque alpha, mono8 as BT.601 luma, yuv422/yuv422_yuy2 as
    BT.601 limited-range pixel pairs (even width only).
    """
    per_pixel = _bytes_per_pixel(encoding)
    pixels = _check_rgb(array)
    height, width = pixels.shape[:2]
    _check_even_width(encoding, width)
    if encoding in ('bgr8', 'bgra8'):
        pixels = pixels[..., ::-1]
    if encoding in ('rgba8', 'bgra8'):
        pixels = np.concatenate([pixels, np.full((height, width, 1), 255, np.uint8)], axis=-1)
    elif encoding == 'mono8':
        pixels = ((pixels @ _LUMA_WEIGHTS + 500) // 1000).astype(np.uint8)
    elif encoding in _YUV422_ORDER:
        pixels = _rgb_to_yuv422(pixels, encoding)
    msg = Image(
        header=header if header is not None else Header(),
        height=height,
        width=width,
        encoding=encoding,
        is_bigendian=0,
        step=width * per_pixel,
    )
    msg.data = pyarray.array('B', np.ascontiguousarray(pixels).tobytes())
    return msg


def compression_of(format: str) -> str:
    """The codec ('jpeg' or 'png') named by a ``CompressedImage.format``.

    image_transport writes ``"<source encoding>; <codec> compressed <target>"``;
    the target (bgr8) is how OpenCV fed the encoder, and the file itself stores
    true colours, so only the codec matters. Bare ``"jpeg"``/``"png"`` (and
    ``"jpg"``) come from drivers that publish camera JPEGs directly.
    """
    words = format.lower().rpartition(';')[2].split()
    codec = _CODEC_ALIASES.get(words[0] if words else '')
    if codec is None:
        raise ValueError(f'unsupported compressed image format {format!r}; supported: jpeg, png '
                         "(e.g. 'jpeg', 'png', 'rgb8; jpeg compressed bgr8', 'bgr8; png compressed bgr8')")
    return codec


def _looks_like(data: bytes) -> str:
    """What the first bytes of ``data`` suggest, for error messages."""
    for codec, magic in _MAGIC.items():
        if data.startswith(magic):
            return f'the data starts like a {codec.upper()}'
    return f'the data starts with bytes {data[:8].hex(" ")}'


def compressed_msg_to_rgb(msg: CompressedImage) -> np.ndarray:
    """Decode a JPEG or PNG ``CompressedImage`` into a new (H, W, 3) uint8 RGB array."""
    codec = compression_of(msg.format)
    data = bytes(msg.data)
    name = codec.upper()
    if not data:
        raise ValueError(f'empty {name} image (0 bytes)')
    try:
        image = PilImage.open(io.BytesIO(data), formats=[name])
    except UnidentifiedImageError:
        if data.startswith(_MAGIC[codec]) or _MAGIC[codec].startswith(data):
            raise ValueError(f'corrupt or truncated {name} header ({len(data)} bytes)') from None
        raise ValueError(f'not a {name} image ({len(data)} bytes; {_looks_like(data)})') from None
    except PilImage.DecompressionBombError as error:
        raise ValueError(f'{name} image declares too many pixels (corrupt header?): {error}') from None
    except _DECODER_ERRORS as error:
        raise ValueError(f'corrupt or truncated {name} header ({len(data)} bytes): {error}') from None
    with image:
        width, height = image.size
        if width * height > MAX_COMPRESSED_PIXELS:
            raise ValueError(f'{name} image declares {width}x{height} pixels, more than the '
                             f'{MAX_COMPRESSED_PIXELS} decoded at most (corrupt header?)')
        if ImageMode.getmode(image.mode).typestr not in ('|u1', '|b1'):
            raise ValueError(f'{name} image has {image.mode!r} samples; a camera image needs 8-bit samples')
        try:
            image.load()
            rgb = np.array(image.convert('RGB'), dtype=np.uint8)
        except _DECODER_ERRORS as error:
            raise ValueError(f'corrupt or truncated {name} data ({len(data)} bytes): {error}') from None
    return rgb


def rgb_to_compressed_msg(
    array: np.ndarray, header: Header | None = None, format: str = 'jpeg', quality: int = 95
) -> CompressedImage:
    """Encode an (H, W, 3) uint8 RGB array as image_transport's ``compressed`` transport does.

    ``format`` is 'jpeg' or 'png'; ``quality`` (1-100, image_transport's
    ``jpeg_quality`` default 95) applies to JPEG only, PNG being lossless. The
    message's ``format`` reads ``"rgb8; <codec> compressed bgr8"``, exactly what
    image_transport writes for an rgb8 source, so its subscribers (rqt,
    image_view, republish) restore rgb8.
    """
    if format not in COMPRESSED_FORMATS:
        raise ValueError(
            f'unsupported compressed image format {format!r}; supported: {", ".join(COMPRESSED_FORMATS)}')
    if format == 'jpeg' and not 1 <= quality <= 100:
        raise ValueError(f'JPEG quality must be within 1..100, got {quality}')
    pixels = _check_rgb(array)
    buffer = io.BytesIO()
    options = {'quality': quality} if format == 'jpeg' else {'compress_level': _PNG_LEVEL}
    PilImage.fromarray(np.ascontiguousarray(pixels)).save(buffer, format=format.upper(), **options)
    msg = CompressedImage(header=header if header is not None else Header(), format=f'rgb8; {format} compressed bgr8')
    msg.data = pyarray.array('B', buffer.getvalue())
    return msg
