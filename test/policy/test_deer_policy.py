"""DeerPolicy with the real tiny policy: reset/select_action, the ready-pose wrap, and its two users agreeing."""
from __future__ import annotations

import numpy as np
import pytest
from small_models import random_frame
from std_msgs.msg import Header

from deer_ros.calvin_layout import GRIPPER_CAMERA_SHAPE, HOME_ARM_JOINTS, HOME_ROBOT_OBS, STATIC_CAMERA_SHAPE
from deer_ros.nodes.control import GRIPPER_CAMERA, JOINT_STATES, STATIC_CAMERA, TCP_POSE, PolicyController
from deer_ros.nodes.messages import tcp_pose_array, tcp_pose_msg
from deer_ros.nodes.robot_state import robot_obs_from_ros
from deer_ros.policy.chain_policy import ChainPolicyFactory
from deer_ros.policy.deer_policy import DeerPolicy
from deer_ros.policy.ready_pose import ReadyPose
from deer_ros.policy.types import Observation

INSTRUCTION_TEXT = 'open the drawer'
FINGERS = (0.04, 0.04)  # each finger at half the open width


def _observations(count: int, robot_obs: np.ndarray | None = None, seed: int = 1) -> list[Observation]:
    rng = np.random.default_rng(seed)
    return [Observation(random_frame(rng, STATIC_CAMERA_SHAPE), random_frame(rng, GRIPPER_CAMERA_SHAPE), robot_obs)
            for _ in range(count)]


def _away_from_home(drop_m: float) -> np.ndarray:
    robot_obs = HOME_ROBOT_OBS.copy()
    robot_obs[2] -= drop_m
    return robot_obs


@pytest.fixture(scope='module')
def policy(tiny_checkpoint) -> DeerPolicy:
    return DeerPolicy.from_pretrained(tiny_checkpoint)


def test_select_action_steps_the_model_and_reset_forgets_the_history(policy):
    assert not policy.needs_robot_state and policy.cost_table.num_exits == policy.config.num_exits == 6
    policy.reset()
    first = [policy.select_action(observation, INSTRUCTION_TEXT) for observation in _observations(3)]
    assert all(not info.scripted and info.exit_index == 5 and info.llm_gflops > 0 for _, info in first)
    policy.reset()
    # The robot state rides along in proprio; a model without use_proprio never sees it.
    again = [policy.select_action(observation, INSTRUCTION_TEXT)
             for observation in _observations(3, robot_obs=_away_from_home(0.1))]
    np.testing.assert_allclose([a.pose for a, _ in again], [a.pose for a, _ in first], atol=1e-6)
    assert [a.gripper for a, _ in again] == [a.gripper for a, _ in first]


def test_the_ready_pose_comes_first_after_every_reset_then_the_model_acts(policy):
    wrapped = DeerPolicy(policy.runtime, ReadyPose())
    assert wrapped.needs_robot_state
    wrapped.reset()
    with pytest.raises(ValueError, match='ready pose needs the robot state'):
        wrapped.select_action(_observations(1)[0], INSTRUCTION_TEXT)

    for _ in range(2):  # the return starts again at every reset
        wrapped.reset()
        scripted = [wrapped.select_action(observation, INSTRUCTION_TEXT)
                    for observation in _observations(2, robot_obs=_away_from_home(0.1))]
        assert all(info.scripted and info.exit_index == -1 and info.llm_gflops == info.total_gflops == 0.0
                   for _, info in scripted), 'scripted steps: no model step, zero cost'
        assert all(action.pose[2] > 0 for action, _ in scripted)  # up, towards the ready height
        model = [wrapped.select_action(observation, INSTRUCTION_TEXT)
                 for observation in _observations(3, robot_obs=HOME_ROBOT_OBS)]
        assert all(not info.scripted and info.exit_index == 5 for _, info in model)
        # Once there, the model acts until the next reset, even away from the ready pose.
        assert not wrapped.select_action(_observations(1, robot_obs=_away_from_home(0.1))[0],
                                         INSTRUCTION_TEXT)[1].scripted

    # The scripted steps left no trace in the model's history: it acts as the unwrapped policy would.
    policy.reset()
    alone = [policy.select_action(observation, INSTRUCTION_TEXT) for observation in _observations(3)]
    np.testing.assert_allclose([a.pose for a, _ in model], [a.pose for a, _ in alone], atol=1e-6)


def test_node_controller_and_chain_policy_act_alike(proprio_checkpoint):
    """The node's controller and the chain evaluation step the same DeerPolicy: same inputs, same actions."""
    controller = PolicyController(DeerPolicy.from_pretrained(proprio_checkpoint, ready_pose=ReadyPose()),
                                  max_input_age_s=10.0)
    chain = ChainPolicyFactory(str(proprio_checkpoint))()  # the evaluator's default: with the ready pose
    chain.reset()
    controller.set_instruction(INSTRUCTION_TEXT, 0.0)
    joints = np.array([*HOME_ARM_JOINTS, *FINGERS])
    rng = np.random.default_rng(3)
    chain_gripper = controller.gripper
    kinds = []
    for step, drop_m in enumerate((0.1, 0.05, 0.0, 0.0, 0.0, 0.02)):
        tcp = tcp_pose_array(tcp_pose_msg(_away_from_home(drop_m), Header()))  # as the bridge sends it
        static, gripper_image = random_frame(rng, STATIC_CAMERA_SHAPE), random_frame(rng, GRIPPER_CAMERA_SHAPE)
        now = 0.1 * (step + 1)
        for name, value in ((STATIC_CAMERA, static), (GRIPPER_CAMERA, gripper_image), (JOINT_STATES, joints),
                            (TCP_POSE, tcp)):
            controller.inputs.put(name, value, now, stamp_ns=step + 1)
        decision = controller.tick(now)
        action = chain.step({'rgb_obs': {'rgb_static': static, 'rgb_gripper': gripper_image},
                             'robot_obs': robot_obs_from_ros(tcp, joints, chain_gripper)}, INSTRUCTION_TEXT)
        chain_gripper = int(action[6])
        np.testing.assert_allclose(decision.action.as_array(), action, atol=1e-6)
        stats = chain.step_stats()
        if decision.kind == 'ready_pose':
            assert decision.info is None and stats == {'ready_pose': 1.0}
        else:
            assert decision.kind == 'action' and stats['exit'] == decision.info.exit_index + 1
        kinds.append(decision.kind)
    assert kinds == ['ready_pose'] * 2 + ['action'] * 4
