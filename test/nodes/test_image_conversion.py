"""sensor_msgs/Image <-> (H, W, 3) uint8 RGB: layouts, row padding, and every refusal."""
from __future__ import annotations

import array

import numpy as np
import pytest
from rclpy.serialization import deserialize_message, serialize_message
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from deer_ros.nodes.image_conversion import CHANNELS, image_msg_to_rgb, rgb_to_image_msg


@pytest.fixture
def rgb() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(5, 7, 3), dtype=np.uint8)


def raw_msg(encoding: str, height: int, width: int, step: int, data: bytes, bigendian: int = 0) -> Image:
    msg = Image(height=height, width=width, encoding=encoding, step=step, is_bigendian=bigendian)
    msg.data = array.array('B', data)
    return msg


@pytest.mark.parametrize('encoding', sorted(CHANNELS))
def test_packed_rows_and_header(rgb, encoding):
    header = Header(frame_id='static_cam')
    header.stamp.sec, header.stamp.nanosec = 12, 345
    msg = rgb_to_image_msg(rgb, header=header, encoding=encoding)
    assert (msg.height, msg.width, msg.encoding, msg.is_bigendian) == (5, 7, encoding, 0)
    assert msg.step == 7 * CHANNELS[encoding] and len(msg.data) == msg.step * 5
    assert msg.header.frame_id == 'static_cam' and msg.header.stamp.nanosec == 345
    assert rgb_to_image_msg(rgb).header == Header()


@pytest.mark.parametrize('encoding', ['rgb8', 'bgr8'])
def test_colour_round_trip_is_exact(rgb, encoding):
    assert np.array_equal(image_msg_to_rgb(rgb_to_image_msg(rgb, encoding=encoding)), rgb)


def test_bgr8_puts_blue_first_on_the_wire():
    pixel = np.array([[[10, 20, 30]]], dtype=np.uint8)
    assert list(rgb_to_image_msg(pixel, encoding='bgr8').data) == [30, 20, 10]
    assert image_msg_to_rgb(raw_msg('bgr8', 1, 1, 3, bytes([30, 20, 10]))).tolist() == [[[10, 20, 30]]]


def test_mono8_is_bt601_luma_and_decodes_to_grey_rgb():
    colours = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255], [0, 0, 0]]], np.uint8)
    msg = rgb_to_image_msg(colours, encoding='mono8')
    assert list(msg.data) == [76, 150, 29, 255, 0]
    decoded = image_msg_to_rgb(msg)
    assert decoded.shape == (1, 5, 3) and decoded[0, :, 0].tolist() == [76, 150, 29, 255, 0]
    assert np.array_equal(decoded[..., 0], decoded[..., 2])


@pytest.mark.parametrize('encoding', sorted(CHANNELS))
def test_padded_rows_are_skipped(rgb, encoding):
    packed = rgb_to_image_msg(rgb, encoding=encoding)
    rows = np.frombuffer(packed.data, np.uint8).reshape(5, packed.step)
    padded = np.hstack([rows, np.full((5, 4), 0xEE, np.uint8)])
    msg = raw_msg(encoding, 5, 7, packed.step + 4, padded.tobytes())
    assert np.array_equal(image_msg_to_rgb(msg), image_msg_to_rgb(packed))


def test_big_endian_flag_does_not_change_one_byte_channels(rgb):
    msg = rgb_to_image_msg(rgb)
    msg.is_bigendian = 1
    assert np.array_equal(image_msg_to_rgb(msg), rgb)


def test_result_owns_its_memory(rgb):
    msg = rgb_to_image_msg(rgb)
    decoded = image_msg_to_rgb(msg)
    msg.data[0] = (msg.data[0] + 1) % 256
    decoded[0, 0, 1] = 0
    assert decoded[0, 0, 0] == rgb[0, 0, 0] and decoded.flags.writeable and decoded.flags.c_contiguous


def test_non_contiguous_input_is_encoded_by_value(rgb):
    view = rgb[:, ::2]
    assert not view.flags.c_contiguous
    assert np.array_equal(image_msg_to_rgb(rgb_to_image_msg(view)), view)


def test_survives_cdr_serialisation(rgb):
    """The bytes a subscriber gets back from the wire decode to the same pixels."""
    wire = serialize_message(rgb_to_image_msg(rgb, encoding='bgr8'))
    assert np.array_equal(image_msg_to_rgb(deserialize_message(wire, Image)), rgb)


@pytest.mark.parametrize('encoding', ['rgba8', '16UC1', 'yuv422', 'RGB8', ''])
def test_unsupported_encodings_are_refused(rgb, encoding):
    with pytest.raises(ValueError, match='unsupported image encoding.*supported: rgb8, bgr8, mono8'):
        image_msg_to_rgb(raw_msg(encoding, 1, 1, 4, bytes(4)))
    with pytest.raises(ValueError, match='unsupported image encoding'):
        rgb_to_image_msg(rgb, encoding=encoding)


@pytest.mark.parametrize(
    ('height', 'width', 'step', 'size', 'error'),
    [
        (2, 3, 9, 17, 'has 17 bytes, expected step \\* height = 9 \\* 2 = 18 \\(truncated\\)'),
        (2, 3, 9, 19, 'has 19 bytes.*too long'),
        (2, 3, 8, 16, 'step 8 is smaller than width \\* channels = 9'),
        (2, 3, 9, 0, 'has 0 bytes'),
        (0, 3, 9, 0, 'empty image'),
        (2, 0, 0, 0, 'empty image'),
    ],
)
def test_inconsistent_messages_are_refused(height, width, step, size, error):
    with pytest.raises(ValueError, match=error):
        image_msg_to_rgb(raw_msg('rgb8', height, width, step, bytes(size)))


@pytest.mark.parametrize(
    ('pixels', 'error'),
    [
        (np.zeros((4, 4), np.uint8), 'expected an \\(H, W, 3\\) RGB array, got shape \\(4, 4\\)'),
        (np.zeros((4, 4, 4), np.uint8), 'got shape \\(4, 4, 4\\)'),
        (np.zeros((4, 4, 1), np.uint8), 'got shape \\(4, 4, 1\\)'),
        (np.zeros((4, 4, 3), np.float32), 'expected uint8 pixels, got float32'),
        (np.zeros((4, 4, 3), np.uint16), 'expected uint8 pixels, got uint16'),
        (np.zeros((0, 4, 3), np.uint8), 'empty image'),
    ],
)
def test_bad_arrays_are_refused(pixels, error):
    with pytest.raises(ValueError, match=error):
        rgb_to_image_msg(pixels)
