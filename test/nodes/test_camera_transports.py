"""deer_policy on the ``compressed`` image transport and on every raw encoding, over real DDS."""
from __future__ import annotations

from typing import Any

from diagnostic_msgs.msg import DiagnosticStatus
from policy_driver import FAST_POLICY, PolicyDriver
from ros_helpers import BackgroundSpinner, wait_for
from sensor_msgs.msg import CompressedImage, JointState
from small_models import random_frame
from std_msgs.msg import Header

from deer_ros.calvin_layout import GRIPPER_CAMERA_SHAPE, STATIC_CAMERA_SHAPE
from deer_ros.nodes.image_conversion import rgb_to_compressed_msg, rgb_to_image_msg
from deer_ros.nodes.messages import stamp_ns

POLICY = 'deer_ros.nodes.policy_node'
STARTUP_S = 120.0  # torch + transformers imports on 2 shared cores
RANDOM_TINY = {**FAST_POLICY, 'checkpoint': '', 'model_config': 'tiny'}  # no robot-state input needed
COMPRESSED = {'camera.static.transport': 'compressed', 'camera.gripper.transport': 'compressed'}


def _send(driver: PolicyDriver, static_pub: Any, gripper_pub: Any, encode: Any) -> int:
    """One frame of both cameras through ``encode(rgb, header)`` plus joint states; returns its stamp."""
    header = Header(stamp=driver.get_clock().now().to_msg())
    static_pub.publish(encode(random_frame(driver.rng, STATIC_CAMERA_SHAPE), header))
    gripper_pub.publish(encode(random_frame(driver.rng, GRIPPER_CAMERA_SHAPE), header))
    driver.joint_pub.publish(JointState(header=header, name=[f'j{i}' for i in range(7)], position=[0.1] * 7))
    return stamp_ns(header.stamp)


def _text(status: DiagnosticStatus) -> str:
    return ' '.join([status.message] + [value.value for value in status.values])


def test_compressed_jpeg_and_png_get_actions_and_a_truncated_jpeg_a_hold(start_node, driver):
    node = start_node(POLICY, params={**RANDOM_TINY, **COMPRESSED})
    assert node.wait_for_log('ready in', STARTUP_S), node.log
    static_pub = driver.create_publisher(CompressedImage, 'camera/static/image_raw/compressed', 10)
    gripper_pub = driver.create_publisher(CompressedImage, 'camera/gripper/image_raw/compressed', 10)
    with driver_spinning(driver):
        assert wait_for(lambda: static_pub.get_subscription_count() > 0 and gripper_pub.get_subscription_count() > 0
                        and driver.joint_pub.get_subscription_count() > 0
                        and all(s.get_publisher_count() > 0 for s in driver.outputs), 20.0)
        driver.instruct('open the drawer')
        assert node.wait_for_log("new instruction 'open the drawer'")
        for codec in ('jpeg', 'png'):
            stamp = _send(driver, static_pub, gripper_pub, lambda rgb, h, c=codec: rgb_to_compressed_msg(rgb, h, c))
            action = driver.action_for(stamp)
            assert action is not None and not action.hold, f'{codec}: no action'

        def truncated(rgb: Any, header: Header) -> CompressedImage:
            msg = rgb_to_compressed_msg(rgb, header, 'jpeg')
            msg.data = bytes(msg.data)[:len(msg.data) // 2]
            return msg
        marks, _ = driver.count()
        _send(driver, static_pub, gripper_pub, truncated)
        assert wait_for(lambda: any(a.hold for a in driver.actions[marks:]), 20.0), 'no hold for a truncated JPEG'
        # the hold lasts until a good frame: its (2 s throttled) log line and the diagnostics ERROR give the reason
        assert node.wait_for_log('static camera: corrupt or truncated JPEG data', 20.0), node.log
        assert wait_for(lambda: any(status.level == DiagnosticStatus.ERROR and 'truncated JPEG' in _text(status)
                                    for status in list(driver.diagnostics)), 20.0)

        stamp = _send(driver, static_pub, gripper_pub, lambda rgb, h: rgb_to_compressed_msg(rgb, h, 'jpeg'))
        action = driver.action_for(stamp)
        assert action is not None and not action.hold, 'the node did not act again after a bad frame'
        assert node.running()


def test_raw_rgba8_bgra8_and_yuv422_get_actions(start_node, driver):
    node = start_node(POLICY, params=RANDOM_TINY)
    assert node.wait_for_log('ready in', STARTUP_S), node.log
    with driver_spinning(driver):
        assert driver.wait_connected()
        driver.instruct('open the drawer')
        assert node.wait_for_log("new instruction 'open the drawer'")
        for encoding in ('rgba8', 'bgra8', 'yuv422'):
            stamp = _send(driver, driver.static_pub, driver.gripper_pub,
                          lambda rgb, h, e=encoding: rgb_to_image_msg(rgb, h, e))
            action = driver.action_for(stamp)
            assert action is not None and not action.hold, f'{encoding}: no action'


def driver_spinning(driver: PolicyDriver) -> BackgroundSpinner:
    return BackgroundSpinner(driver, context=driver.context)
