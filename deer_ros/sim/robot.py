"""The Franka Panda arm: low-poly model, target-pose control with IK, and its CALVIN robot_obs.

The model is pybullet_data's Panda with two changes made at load time: visuals reuse the
convex collision meshes (≈ 3k instead of ≈ 100k triangles, which is what makes CPU rendering
fast) and the hand gains fingertip pads, a ``tcp`` link 0.14 m along the hand axis (where
calvin_env's longer-finger Panda has its tcp, so CALVIN's reset ``robot_obs`` holds here too)
and a ``gripper_cam`` link for the wrist camera.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import pybullet_data

from deer_ros.calvin_layout import HOME_ARM_JOINTS
from deer_ros.sim.actions import PoseCommand

ARM_JOINTS = 7
FINGER_OPEN = 0.04  # metres per finger
BASE_POSITION = (-0.34, -0.46, 0.24)
TCP_OFFSET = 0.14  # along the hand z axis
# Keeps an accumulating target from running away while the arm is blocked or out of reach.
WORKSPACE_LOW = np.array([-0.75, -0.75, 0.25])
WORKSPACE_HIGH = np.array([0.55, 0.35, 0.85])
MAX_JOINT_FORCE = 200.0
MAX_JOINT_VELOCITY = 2.0
# Open gently as calvin_env does; close with 50 N rather than its 200 N, which makes these stiff
# pads squeeze a block until it rolls out of the grasp (50 N still holds a block with a 20x margin).
GRIPPER_FORCE = {1: 2.0, -1: 50.0}
ARM_RGBA = (0.92, 0.92, 0.92, 1.0)
HAND_RGBA = (0.25, 0.25, 0.27, 1.0)

_FINGERTIP = {'size': '0.021 0.012 0.0416', 'z': 0.0658, 'y': 0.006}  # pads end 0.145 m below the hand


def _link(robot: ET.Element, name: str, parent: str, xyz: str, rpy: str = '0 0 0',
          box: str | None = None) -> None:
    link = ET.SubElement(robot, 'link', name=name)
    inertial = ET.SubElement(link, 'inertial')
    ET.SubElement(inertial, 'mass', value='0.01' if box else '0')
    ET.SubElement(inertial, 'inertia', ixx='1e-5', ixy='0', ixz='0', iyy='1e-5', iyz='0', izz='1e-5')
    if box:
        for tag in ('visual', 'collision'):
            geometry = ET.SubElement(ET.SubElement(link, tag), 'geometry')
            ET.SubElement(geometry, 'box', size=box)
    joint = ET.SubElement(robot, 'joint', name=f'{name}_joint', type='fixed')
    ET.SubElement(joint, 'parent', link=parent)
    ET.SubElement(joint, 'child', link=name)
    ET.SubElement(joint, 'origin', xyz=xyz, rpy=rpy)


def write_panda_urdf(path: Path) -> Path:
    """Write the low-poly Panda with tcp, fingertips and wrist camera to ``path``; return it."""
    source = Path(pybullet_data.getDataPath()) / 'franka_panda'
    tree = ET.parse(source / 'panda.urdf')
    robot = tree.getroot()
    for mesh in robot.iter('mesh'):
        name = Path(mesh.get('filename')).name
        mesh.set('filename', str(source / 'meshes' / 'collision' / name))
    for side, sign in (('left', 1), ('right', -1)):
        _link(robot, f'panda_{side}finger_tip', f'panda_{side}finger',
              f"0 {sign * _FINGERTIP['y']} {_FINGERTIP['z']}", box=_FINGERTIP['size'])
    _link(robot, 'tcp', 'panda_hand', f'0 0 {TCP_OFFSET}')
    # Wrist camera in front of the hand, tilted so the fingertips sit at the bottom of the image.
    _link(robot, 'gripper_cam', 'panda_hand', '0.065 0 0.03', rpy='0 -0.42 0')
    tree.write(path)
    return path


class Robot:
    """Panda driven like calvin_env with ``use_target_pose``: deltas accumulate on a target, IK tracks it."""

    def __init__(self, client: Any, urdf: Path) -> None:
        self._p = client
        self.uid = client.loadURDF(str(urdf), BASE_POSITION, useFixedBase=True)
        links = {client.getJointInfo(self.uid, j)[12].decode(): j for j in range(client.getNumJoints(self.uid))}
        self.tcp_link = links['tcp']
        self.camera_link = links['gripper_cam']
        self.finger_joints = (links['panda_leftfinger'], links['panda_rightfinger'])
        self._dofs = [j for j in range(client.getNumJoints(self.uid))
                      if client.getJointInfo(self.uid, j)[2] != client.JOINT_FIXED]
        limits = np.array([client.getJointInfo(self.uid, j)[8:10] for j in self._dofs])
        self._lower, self._upper = limits[:, 0], limits[:, 1]
        self._rest = list(HOME_ARM_JOINTS) + [FINGER_OPEN] * (len(self._dofs) - ARM_JOINTS)
        for link in range(-1, client.getNumJoints(self.uid)):
            hand = link >= links['panda_hand'] and link != self.tcp_link
            client.changeVisualShape(self.uid, link, rgbaColor=HAND_RGBA if hand else ARM_RGBA)
        for link in (links['panda_leftfinger_tip'], links['panda_rightfinger_tip']):
            client.changeDynamics(self.uid, link, lateralFriction=1.5, spinningFriction=0.01)
        self.target_position = np.zeros(3)
        self.target_euler = np.zeros(3)
        self.gripper_action = 1

    def reset(self, robot_obs: np.ndarray) -> None:
        """Teleport to ``robot_obs`` joints and re-centre the target on the resulting tcp pose."""
        for joint, angle in enumerate(robot_obs[7:14]):
            self._p.resetJointState(self.uid, joint, angle)
        for joint in self.finger_joints:
            self._p.resetJointState(self.uid, joint, robot_obs[6] / 2)
        self.gripper_action = 1 if robot_obs[14] > 0 else -1
        position, orientation = self.tcp_pose()
        self.target_position = position
        self.target_euler = np.array(self._p.getEulerFromQuaternion(orientation))
        self._command_joints(np.asarray(robot_obs[7:14], dtype=np.float64))
        self._command_gripper()

    def apply(self, command: PoseCommand) -> None:
        """Move the target (relative or absolute) and send IK joint targets and the gripper command."""
        if command.relative:
            self.target_position = self.target_position + command.position
            self.target_euler = self.target_euler + command.euler
        else:
            self.target_position, self.target_euler = command.position.copy(), command.euler.copy()
        self.target_position = np.clip(self.target_position, WORKSPACE_LOW, WORKSPACE_HIGH)
        self.gripper_action = command.gripper
        self._command_joints(self._inverse_kinematics())
        self._command_gripper()

    def _inverse_kinematics(self) -> np.ndarray:
        solution = self._p.calculateInverseKinematics(
            self.uid, self.tcp_link, self.target_position.tolist(),
            self._p.getQuaternionFromEuler(self.target_euler.tolist()),
            lowerLimits=self._lower.tolist(), upperLimits=self._upper.tolist(),
            jointRanges=(self._upper - self._lower).tolist(), restPoses=self._rest,
            maxNumIterations=50, residualThreshold=1e-5)
        return np.clip(solution[:ARM_JOINTS], self._lower[:ARM_JOINTS], self._upper[:ARM_JOINTS])

    def _command_joints(self, angles: np.ndarray) -> None:
        for joint, angle in enumerate(angles):
            self._p.setJointMotorControl2(self.uid, joint, self._p.POSITION_CONTROL, targetPosition=float(angle),
                                          force=MAX_JOINT_FORCE, maxVelocity=MAX_JOINT_VELOCITY)

    def _command_gripper(self) -> None:
        width = FINGER_OPEN if self.gripper_action > 0 else 0.0
        self._p.setJointMotorControlArray(self.uid, list(self.finger_joints), self._p.POSITION_CONTROL,
                                          targetPositions=[width, width],
                                          forces=[GRIPPER_FORCE[self.gripper_action]] * 2)

    def tcp_pose(self) -> tuple[np.ndarray, tuple[float, float, float, float]]:
        """World tcp position and quaternion (xyzw)."""
        state = self._p.getLinkState(self.uid, self.tcp_link, computeForwardKinematics=True)
        return np.array(state[4]), state[5]

    def camera_pose(self) -> tuple[np.ndarray, np.ndarray]:
        """Wrist camera position and rotation matrix (columns: x, y, z axes of the camera link)."""
        state = self._p.getLinkState(self.uid, self.camera_link, computeForwardKinematics=True)
        return np.array(state[4]), np.array(self._p.getMatrixFromQuaternion(state[5])).reshape(3, 3)

    def _joint_positions(self) -> np.ndarray:
        states = self._p.getJointStates(self.uid, list(range(ARM_JOINTS)) + list(self.finger_joints))
        return np.array([s[0] for s in states])

    def get_obs(self) -> np.ndarray:
        """CALVIN robot_obs: tcp xyz, tcp Euler, gripper width, 7 arm joints, last gripper action."""
        position, orientation = self.tcp_pose()
        joints = self._joint_positions()
        return np.concatenate([position, self._p.getEulerFromQuaternion(orientation),
                               [joints[ARM_JOINTS:].sum()], joints[:ARM_JOINTS], [float(self.gripper_action)]])

    def get_info(self) -> dict[str, Any]:
        """calvin_env's ``robot_info`` (contacts are raw pybullet contact tuples)."""
        position, orientation = self.tcp_pose()
        joints = self._joint_positions()
        return {'tcp_pos': position, 'tcp_orn': np.array(orientation),
                'gripper_opening_width': float(joints[ARM_JOINTS:].sum()),
                'arm_joint_states': joints[:ARM_JOINTS], 'gripper_action': self.gripper_action,
                'uid': self.uid, 'contacts': self._p.getContactPoints(bodyA=self.uid)}
