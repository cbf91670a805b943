"""Camera messages <-> (H, W, 3) uint8 RGB: raw layouts, JPEG/PNG, row padding, and every refusal."""
from __future__ import annotations

import array
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image as PilImage
from rclpy.serialization import deserialize_message, serialize_message
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from deer_ros.nodes.image_conversion import (
    BYTES_PER_PIXEL,
    COMPRESSED_FORMATS,
    MAX_COMPRESSED_PIXELS,
    compressed_msg_to_rgb,
    compression_of,
    image_msg_to_rgb,
    msg_to_rgb,
    rgb_to_compressed_msg,
    rgb_to_image_msg,
    transport_topic,
)

YUV422 = ('yuv422', 'yuv422_yuy2')


@pytest.fixture
def rgb() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(5, 7, 3), dtype=np.uint8)


@pytest.fixture
def gradient() -> np.ndarray:
    """A smooth 40x50 picture: what JPEG is made for, so its error stays small."""
    y, x = np.mgrid[0:40, 0:50]
    return np.stack([x * 5, y * 6, (x + y) * 2], axis=-1).astype(np.uint8)


def frame(encoding: str) -> np.ndarray:
    """Random RGB for ``encoding``: 5x7 (an odd row length), or 5x8 with equal pixel pairs for yuv422,
    whose pairs share one U and V sample and so carry such an image up to rounding."""
    rng = np.random.default_rng(1)
    if encoding in YUV422:
        return np.repeat(rng.integers(0, 256, size=(5, 4, 3), dtype=np.uint8), 2, axis=1)
    return rng.integers(0, 256, size=(5, 7, 3), dtype=np.uint8)


def raw_msg(encoding: str, height: int, width: int, step: int, data: bytes, bigendian: int = 0) -> Image:
    msg = Image(height=height, width=width, encoding=encoding, step=step, is_bigendian=bigendian)
    msg.data = array.array('B', data)
    return msg


def compressed_msg(fmt: str, data: bytes) -> CompressedImage:
    msg = CompressedImage(format=fmt)
    msg.data = array.array('B', data)
    return msg


def pillow_bytes(image: PilImage.Image, codec: str) -> bytes:
    """Bytes from Pillow directly: JPEG/PNG variants a driver may send that our encoder never writes."""
    buffer = io.BytesIO()
    image.save(buffer, format=codec)
    return buffer.getvalue()


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack('>I', len(body)) + kind + body + struct.pack('>I', zlib.crc32(kind + body))


# ---------------------------------------------------------------- raw Image


@pytest.mark.parametrize('encoding', sorted(BYTES_PER_PIXEL))
def test_packed_rows_and_header(encoding):
    pixels = frame(encoding)
    height, width = pixels.shape[:2]
    header = Header(frame_id='static_cam')
    header.stamp.sec, header.stamp.nanosec = 12, 345
    msg = rgb_to_image_msg(pixels, header=header, encoding=encoding)
    assert (msg.height, msg.width, msg.encoding, msg.is_bigendian) == (height, width, encoding, 0)
    assert msg.step == width * BYTES_PER_PIXEL[encoding] and len(msg.data) == msg.step * height
    assert msg.header.frame_id == 'static_cam' and msg.header.stamp.nanosec == 345
    assert rgb_to_image_msg(pixels).header == Header()


@pytest.mark.parametrize('encoding', ['rgb8', 'bgr8', 'rgba8', 'bgra8'])
def test_colour_round_trip_is_exact(rgb, encoding):
    assert np.array_equal(image_msg_to_rgb(rgb_to_image_msg(rgb, encoding=encoding)), rgb)


@pytest.mark.parametrize('encoding', YUV422)
def test_yuv422_round_trip_is_within_rounding(encoding):
    pixels = frame(encoding)
    decoded = image_msg_to_rgb(rgb_to_image_msg(pixels, encoding=encoding))
    assert decoded.shape == pixels.shape and np.abs(decoded.astype(int) - pixels).max() <= 2


@pytest.mark.parametrize('encoding', YUV422)
def test_yuv422_keeps_luma_and_averages_chroma_over_pairs(encoding):
    pixels = np.random.default_rng(2).integers(0, 256, size=(6, 10, 3), dtype=np.uint8)
    decoded = image_msg_to_rgb(rgb_to_image_msg(pixels, encoding=encoding)).astype(float)
    luma = np.array([0.299, 0.587, 0.114])
    assert np.abs(decoded @ luma - pixels @ luma).mean() < 2  # chroma loss clips a little at the gamut edges
    pair_mean = pixels.reshape(6, 5, 2, 3).mean(axis=2).astype(float)
    assert np.abs(decoded.reshape(6, 5, 2, 3).mean(axis=2) - pair_mean).mean() < 2


def test_bgr_and_bgra_put_blue_first_on_the_wire():
    pixel = np.array([[[10, 20, 30]]], dtype=np.uint8)
    assert list(rgb_to_image_msg(pixel, encoding='bgr8').data) == [30, 20, 10]
    assert list(rgb_to_image_msg(pixel, encoding='bgra8').data) == [30, 20, 10, 255]
    assert list(rgb_to_image_msg(pixel, encoding='rgba8').data) == [10, 20, 30, 255]
    assert image_msg_to_rgb(raw_msg('bgr8', 1, 1, 3, bytes([30, 20, 10]))).tolist() == [[[10, 20, 30]]]
    assert image_msg_to_rgb(raw_msg('bgra8', 1, 1, 4, bytes([30, 20, 10, 0]))).tolist() == [[[10, 20, 30]]]


def test_alpha_is_dropped_whatever_its_value():
    msg = raw_msg('rgba8', 1, 2, 8, bytes([1, 2, 3, 0, 4, 5, 6, 128]))
    assert image_msg_to_rgb(msg).tolist() == [[[1, 2, 3], [4, 5, 6]]]


def test_mono8_is_bt601_luma_and_decodes_to_grey_rgb():
    colours = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255], [0, 0, 0]]], np.uint8)
    msg = rgb_to_image_msg(colours, encoding='mono8')
    assert list(msg.data) == [76, 150, 29, 255, 0]
    decoded = image_msg_to_rgb(msg)
    assert decoded.shape == (1, 5, 3) and decoded[0, :, 0].tolist() == [76, 150, 29, 255, 0]
    assert np.array_equal(decoded[..., 0], decoded[..., 2])


@pytest.mark.parametrize(
    ('colour', 'yuv'),
    [
        ((255, 255, 255), (235, 128, 128)),
        ((0, 0, 0), (16, 128, 128)),
        ((255, 0, 0), (81, 90, 240)),
        ((0, 255, 0), (145, 54, 34)),
        ((0, 0, 255), (41, 240, 110)),
    ],
)
def test_yuv422_is_bt601_limited_range_in_ros_byte_order(colour, yuv):
    """ROS's yuv422 is UYVY, yuv422_yuy2 is YUYV; the values are the BT.601 studio-swing ones
    that cv_bridge/OpenCV (COLOR_YUV2RGB_UYVY) and V4L2 cameras use."""
    y, u, v = yuv
    pair = np.array([[colour, colour]], dtype=np.uint8)
    assert list(rgb_to_image_msg(pair, encoding='yuv422').data) == [u, y, v, y]
    assert list(rgb_to_image_msg(pair, encoding='yuv422_yuy2').data) == [y, u, y, v]
    for encoding, wire in (('yuv422', [u, y, v, y]), ('yuv422_yuy2', [y, u, y, v])):
        decoded = image_msg_to_rgb(raw_msg(encoding, 1, 2, 4, bytes(wire)))
        assert np.abs(decoded.astype(int) - pair).max() <= 2


def test_yuv422_pairs_keep_their_own_luma():
    """Two pixels of one pair: distinct Y, shared U/V (grey pair -> two greys)."""
    decoded = image_msg_to_rgb(raw_msg('yuv422', 1, 2, 4, bytes([128, 16, 128, 235])))
    assert decoded.tolist() == [[[0, 0, 0], [255, 255, 255]]]


@pytest.mark.parametrize('encoding', sorted(BYTES_PER_PIXEL))
def test_padded_rows_are_skipped(encoding):
    packed = rgb_to_image_msg(frame(encoding), encoding=encoding)
    rows = np.frombuffer(packed.data, np.uint8).reshape(5, packed.step)
    padded = np.hstack([rows, np.full((5, 4), 0xEE, np.uint8)])
    msg = raw_msg(encoding, 5, packed.width, packed.step + 4, padded.tobytes())
    assert np.array_equal(image_msg_to_rgb(msg), image_msg_to_rgb(packed))


def test_big_endian_flag_does_not_change_one_byte_channels(rgb):
    msg = rgb_to_image_msg(rgb)
    msg.is_bigendian = 1
    assert np.array_equal(image_msg_to_rgb(msg), rgb)


@pytest.mark.parametrize('encoding', sorted(BYTES_PER_PIXEL))
def test_result_owns_its_memory(encoding):
    msg = rgb_to_image_msg(frame(encoding), encoding=encoding)
    before = image_msg_to_rgb(msg)
    decoded = image_msg_to_rgb(msg)
    msg.data[0] = (msg.data[0] + 1) % 256
    decoded[0, 0, 1] = 0
    assert decoded[0, 0, 0] == before[0, 0, 0] and decoded.flags.writeable and decoded.flags.c_contiguous


def test_non_contiguous_input_is_encoded_by_value(rgb):
    view = rgb[:, ::2]
    assert not view.flags.c_contiguous
    assert np.array_equal(image_msg_to_rgb(rgb_to_image_msg(view)), view)
    assert np.array_equal(compressed_msg_to_rgb(rgb_to_compressed_msg(view, format='png')), view)


def test_survives_cdr_serialisation(rgb, gradient):
    """The bytes a subscriber gets back from the wire decode to the same pixels."""
    wire = serialize_message(rgb_to_image_msg(rgb, encoding='bgr8'))
    assert np.array_equal(image_msg_to_rgb(deserialize_message(wire, Image)), rgb)
    compressed = rgb_to_compressed_msg(gradient, format='png')
    received = deserialize_message(serialize_message(compressed), CompressedImage)
    assert received.format == compressed.format and np.array_equal(compressed_msg_to_rgb(received), gradient)


@pytest.mark.parametrize('encoding', ['16UC1', 'rgb16', 'yuv420', 'nv21', 'bayer_rggb8', 'RGB8', 'jpeg', ''])
def test_unsupported_encodings_are_refused(rgb, encoding):
    supported = 'supported: rgb8, bgr8, rgba8, bgra8, mono8, yuv422, yuv422_yuy2'
    with pytest.raises(ValueError, match=f'unsupported image encoding {encoding!r}; {supported}'):
        image_msg_to_rgb(raw_msg(encoding, 1, 1, 4, bytes(4)))
    with pytest.raises(ValueError, match='unsupported image encoding'):
        rgb_to_image_msg(rgb, encoding=encoding)


@pytest.mark.parametrize(
    ('encoding', 'height', 'width', 'step', 'size', 'error'),
    [
        # data length against step * height, step against the row's bytes, empty sizes
        ('rgb8', 2, 3, 9, 17, 'has 17 bytes, expected step \\* height = 9 \\* 2 = 18 \\(truncated\\)'),
        ('rgb8', 2, 3, 9, 19, 'has 19 bytes.*too long'),
        ('rgb8', 2, 3, 8, 16, 'step 8 is smaller than width \\* bytes per pixel = 9 for rgb8'),
        ('rgb8', 2, 3, 9, 0, 'has 0 bytes'),
        ('rgb8', 0, 3, 9, 0, 'empty image'),
        ('rgb8', 2, 0, 0, 0, 'empty image'),
        # the same checks use each layout's own bytes per pixel
        ('rgba8', 2, 3, 9, 18, 'step 9 is smaller than width \\* bytes per pixel = 12 for rgba8'),
        ('bgra8', 2, 3, 12, 18, 'has 18 bytes, expected step \\* height = 12 \\* 2 = 24 \\(truncated\\)'),
        ('yuv422', 2, 4, 6, 12, 'step 6 is smaller than width \\* bytes per pixel = 8 for yuv422'),
        ('yuv422_yuy2', 2, 4, 8, 15, 'has 15 bytes.*truncated'),
        # yuv422 pixel pairs
        ('yuv422', 2, 7, 14, 28, 'yuv422 needs an even width \\(pixel pairs share U and V\\), got width 7'),
        ('yuv422_yuy2', 1, 1, 2, 2, 'yuv422_yuy2 needs an even width.*got width 1'),
    ],
)
def test_inconsistent_messages_are_refused(encoding, height, width, step, size, error):
    with pytest.raises(ValueError, match=error):
        image_msg_to_rgb(raw_msg(encoding, height, width, step, bytes(size)))


@pytest.mark.parametrize('encoding', YUV422)
def test_odd_width_cannot_be_encoded_as_yuv422(rgb, encoding):
    with pytest.raises(ValueError, match=f'{encoding} needs an even width.*got width 7'):
        rgb_to_image_msg(rgb, encoding=encoding)


BAD_ARRAYS = [
    (np.zeros((4, 4), np.uint8), 'expected an \\(H, W, 3\\) RGB array, got shape \\(4, 4\\)'),
    (np.zeros((4, 4, 4), np.uint8), 'got shape \\(4, 4, 4\\)'),
    (np.zeros((4, 4, 1), np.uint8), 'got shape \\(4, 4, 1\\)'),
    (np.zeros((4, 4, 3), np.float32), 'expected uint8 pixels, got float32'),
    (np.zeros((4, 4, 3), np.uint16), 'expected uint8 pixels, got uint16'),
    (np.zeros((0, 4, 3), np.uint8), 'empty image'),
]


@pytest.mark.parametrize(('pixels', 'error'), BAD_ARRAYS)
def test_bad_arrays_are_refused(pixels, error):
    with pytest.raises(ValueError, match=error):
        rgb_to_image_msg(pixels)
    for codec in COMPRESSED_FORMATS:
        with pytest.raises(ValueError, match=error):
            rgb_to_compressed_msg(pixels, format=codec)


# ---------------------------------------------------------------- CompressedImage


@pytest.mark.parametrize('codec', COMPRESSED_FORMATS)
def test_compressed_msg_carries_header_and_image_transport_format(gradient, codec):
    header = Header(frame_id='gripper_cam')
    header.stamp.sec = 7
    msg = rgb_to_compressed_msg(gradient, header=header, format=codec)
    assert msg.format == f'rgb8; {codec} compressed bgr8'
    assert msg.header.frame_id == 'gripper_cam' and msg.header.stamp.sec == 7
    assert bytes(msg.data).startswith(b'\xff\xd8\xff' if codec == 'jpeg' else b'\x89PNG\r\n\x1a\n')
    assert rgb_to_compressed_msg(gradient, format=codec).header == Header()


def test_png_round_trip_is_exact(rgb, gradient):
    for pixels in (rgb, gradient):
        decoded = compressed_msg_to_rgb(rgb_to_compressed_msg(pixels, format='png'))
        assert np.array_equal(decoded, pixels) and decoded.flags.writeable and decoded.flags.c_contiguous


def test_jpeg_round_trip_is_within_tolerance(gradient):
    decoded = compressed_msg_to_rgb(rgb_to_compressed_msg(gradient))
    error = np.abs(decoded.astype(int) - gradient)
    assert decoded.shape == gradient.shape and decoded.dtype == np.uint8
    assert error.mean() < 1.5 and error.max() <= 8
    assert decoded.flags.writeable and decoded.flags.c_contiguous


def test_jpeg_quality_trades_size_for_error(gradient):
    low, high = (rgb_to_compressed_msg(gradient, quality=q) for q in (20, 95))
    assert len(low.data) < len(high.data)
    errors = [np.abs(compressed_msg_to_rgb(m).astype(int) - gradient).mean() for m in (low, high)]
    assert errors[0] > errors[1]


@pytest.mark.parametrize(
    ('fmt', 'codec'),
    [
        ('jpeg', 'jpeg'), ('JPEG', 'jpeg'), ('jpg', 'jpeg'), (' jpeg ', 'jpeg'),
        ('rgb8; jpeg compressed bgr8', 'jpeg'), ('bgr8; jpeg compressed bgr8', 'jpeg'),
        ('mono8; jpeg compressed ', 'jpeg'),
        ('png', 'png'), ('rgb8; png compressed bgr8', 'png'), ('bgr8; png compressed bgr8', 'png'),
        ('rgba8; png compressed bgra8', 'png'), ('mono8; png compressed ', 'png'),
    ],
)
def test_image_transport_format_strings_name_the_codec(gradient, fmt, codec):
    assert compression_of(fmt) == codec
    data = bytes(rgb_to_compressed_msg(gradient, format=codec).data)
    assert compressed_msg_to_rgb(compressed_msg(fmt, data)).shape == gradient.shape


@pytest.mark.parametrize('mode', ['L', 'LA', 'P', 'RGBA', '1'])
def test_png_variants_a_driver_may_send_decode_to_rgb(gradient, mode):
    source = PilImage.fromarray(gradient).convert(mode)
    decoded = compressed_msg_to_rgb(compressed_msg('png', pillow_bytes(source, 'PNG')))
    assert np.array_equal(decoded, np.asarray(source.convert('RGB')))


@pytest.mark.parametrize('mode', ['L', 'CMYK'])
def test_grey_and_cmyk_jpeg_decode_to_rgb(gradient, mode):
    source = PilImage.fromarray(gradient).convert(mode)
    decoded = compressed_msg_to_rgb(compressed_msg('mono8; jpeg compressed ', pillow_bytes(source, 'JPEG')))
    assert decoded.shape == gradient.shape
    assert np.abs(decoded.astype(int) - np.asarray(source.convert('RGB'))).mean() < 3


def test_msg_to_rgb_takes_either_message_type(rgb):
    assert np.array_equal(msg_to_rgb(rgb_to_image_msg(rgb, encoding='bgra8')), rgb)
    assert np.array_equal(msg_to_rgb(rgb_to_compressed_msg(rgb, format='png')), rgb)


def test_transport_topics_follow_image_transport():
    assert transport_topic('camera/static/image_raw', 'raw') == 'camera/static/image_raw'
    assert transport_topic('camera/static/image_raw', 'compressed') == 'camera/static/image_raw/compressed'
    with pytest.raises(ValueError, match="unknown image transport 'theora'; supported: raw, compressed"):
        transport_topic('camera/static/image_raw', 'theora')


@pytest.mark.parametrize('cut', [-2, 0.5, 100, 10, 3, 1])
def test_truncated_jpeg_is_refused(gradient, cut):
    data = bytes(rgb_to_compressed_msg(gradient).data)
    size = len(data) + cut if cut < 0 else int(len(data) * cut) if cut < 1 else cut
    with pytest.raises(ValueError, match=f'corrupt or truncated JPEG (data|header) \\({size} bytes\\)'):
        compressed_msg_to_rgb(compressed_msg('rgb8; jpeg compressed bgr8', data[:size]))


@pytest.mark.parametrize('size', [0.5, 40, 5])
def test_truncated_png_is_refused(gradient, size):
    data = bytes(rgb_to_compressed_msg(np.random.default_rng(3).integers(0, 256, (40, 50, 3), np.uint8),
                                       format='png').data)
    size = int(len(data) * size) if size < 1 else size
    with pytest.raises(ValueError, match=f'corrupt or truncated PNG (data|header) \\({size} bytes\\)'):
        compressed_msg_to_rgb(compressed_msg('png', data[:size]))


def test_corrupt_png_data_is_refused(gradient):
    """PNG checksums its data (zlib's adler32, chunk CRCs), so a flipped byte is caught."""
    data = bytearray(rgb_to_compressed_msg(gradient, format='png').data)
    data[len(data) // 2] ^= 0xFF
    with pytest.raises(ValueError, match='corrupt or truncated PNG data'):
        compressed_msg_to_rgb(compressed_msg('png', bytes(data)))


@pytest.mark.parametrize('fmt', ['jpeg', 'png'])
def test_garbage_bytes_are_refused(fmt):
    with pytest.raises(ValueError, match=f'not a {fmt.upper()} image \\(110 bytes; the data starts with bytes '
                                         '68 65 6c 6c 6f 20 77 6f\\)'):
        compressed_msg_to_rgb(compressed_msg(fmt, b'hello world' * 10))


def test_codec_must_match_the_format_field(gradient):
    png = bytes(rgb_to_compressed_msg(gradient, format='png').data)
    jpeg = bytes(rgb_to_compressed_msg(gradient, format='jpeg').data)
    with pytest.raises(ValueError, match='not a JPEG image .*the data starts like a PNG'):
        compressed_msg_to_rgb(compressed_msg('rgb8; jpeg compressed bgr8', png))
    with pytest.raises(ValueError, match='not a PNG image .*the data starts like a JPEG'):
        compressed_msg_to_rgb(compressed_msg('png', jpeg))


@pytest.mark.parametrize('fmt', ['jpeg', 'png'])
def test_empty_compressed_data_is_refused(fmt):
    with pytest.raises(ValueError, match=f'empty {fmt.upper()} image \\(0 bytes\\)'):
        compressed_msg_to_rgb(compressed_msg(fmt, b''))


@pytest.mark.parametrize(
    'fmt', ['', ';', 'tiff', 'bmp', 'jpeg2000', 'rgb8; tiff compressed bgr8', '16UC1; compressedDepth png',
            '32FC1; compressedDepth', 'rgb8', 'h264', 'zstd'])
def test_unknown_compressed_formats_are_refused(gradient, fmt):
    data = bytes(rgb_to_compressed_msg(gradient).data)
    with pytest.raises(ValueError, match=f'unsupported compressed image format {fmt!r}; supported: jpeg, png'):
        compressed_msg_to_rgb(compressed_msg(fmt, data))


def test_sixteen_bit_png_is_refused(gradient):
    """A mono16/depth PNG is no colour camera image; scaling it to 8 bits would be a guess."""
    deep = PilImage.fromarray(gradient[..., 0].astype(np.uint16) * 200)
    with pytest.raises(ValueError, match="PNG image has 'I;16' samples; a camera image needs 8-bit samples"):
        compressed_msg_to_rgb(compressed_msg('mono16; png compressed ', pillow_bytes(deep, 'PNG')))


@pytest.mark.parametrize('side', [6000, 100_000])
def test_huge_declared_size_is_refused_before_decoding(side):
    """A corrupt header must not make the node allocate gigabytes: only the 8-byte IHDR sizes are huge."""
    assert side * side > MAX_COMPRESSED_PIXELS
    ihdr = png_chunk(b'IHDR', struct.pack('>IIBBBBB', side, side, 8, 2, 0, 0, 0))
    data = b'\x89PNG\r\n\x1a\n' + ihdr + png_chunk(b'IDAT', zlib.compress(b'\x00' * 64)) + png_chunk(b'IEND', b'')
    with pytest.raises(ValueError, match='PNG image declares .*pixels.*corrupt header'):
        compressed_msg_to_rgb(compressed_msg('png', data))


@pytest.mark.parametrize('codec', COMPRESSED_FORMATS)
def test_mangled_bytes_only_ever_raise_value_error(gradient, codec):
    """Random byte damage and cuts: the decoder either yields an RGB image or a ValueError, nothing else."""
    rng = np.random.default_rng(4)
    data = bytes(rgb_to_compressed_msg(gradient, format=codec).data)
    outcomes = {'decoded': 0, 'refused': 0}
    for _ in range(300):
        mangled = bytearray(data)
        for _ in range(rng.integers(1, 6)):
            mangled[rng.integers(len(mangled))] = rng.integers(256)
        if rng.random() < 0.3:
            mangled = mangled[:rng.integers(len(mangled))]
        try:
            decoded = compressed_msg_to_rgb(compressed_msg(codec, bytes(mangled)))
        except ValueError:
            outcomes['refused'] += 1
        else:
            assert decoded.dtype == np.uint8 and decoded.ndim == 3 and decoded.shape[2] == 3
            outcomes['decoded'] += 1
    assert outcomes['refused'] > 100


@pytest.mark.parametrize(
    ('kwargs', 'error'),
    [
        ({'format': 'gif'}, "unsupported compressed image format 'gif'; supported: jpeg, png"),
        ({'format': 'JPEG'}, "unsupported compressed image format 'JPEG'"),
        ({'quality': 0}, 'JPEG quality must be within 1..100, got 0'),
        ({'quality': 101}, 'JPEG quality must be within 1..100, got 101'),
    ],
)
def test_bad_compression_arguments_are_refused(gradient, kwargs, error):
    with pytest.raises(ValueError, match=error):
        rgb_to_compressed_msg(gradient, **kwargs)
