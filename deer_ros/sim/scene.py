"""The play table as one articulated pybullet body plus three blocks: build it, set its state, read it back.

The desk is authored here with ``createMultiBody`` from boxes (a few hundred triangles in all, so
the CPU renderer stays fast). Drawer, sliding door, button and switch are prismatic joints of the
desk; the cabinet floor (``plank_link``), LED and bulb are fixed links, so contacts with them name
the same links calvin_env's oracle asks about.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from deer_ros.sim import layout as L
from deer_ros.sim.layout import SceneConfig

Vec3 = tuple[float, float, float]


@dataclass(frozen=True)
class Part:
    """A box (or sphere/cylinder: radius = ``half[0]``, cylinder half length = ``half[2]``) of one link."""

    half: Vec3
    centre: Vec3  # in the link frame
    colour: str  # palette key
    shape: str = 'box'
    collides: bool = True


@dataclass(frozen=True)
class LinkSpec:
    name: str
    origin: Vec3  # link frame in the desk (= world) frame at joint value 0
    parts: tuple[Part, ...]
    joint: str = 'fixed'  # 'fixed' or 'prismatic'
    axis: Vec3 = (0.0, 0.0, 0.0)
    limits: tuple[float, float] = (0.0, 0.0)
    friction: float = 0.0  # N of joint friction that holds the part where it was left


def _box(x: tuple[float, float], y: tuple[float, float], z: tuple[float, float], colour: str,
         collides: bool = True) -> Part:
    """A box given by its world extents, for base-link parts (base frame = world frame)."""
    return Part(((x[1] - x[0]) / 2, (y[1] - y[0]) / 2, (z[1] - z[0]) / 2),
                ((x[0] + x[1]) / 2, (y[0] + y[1]) / 2, (z[0] + z[1]) / 2), colour, collides=collides)


MAX_SHAPES_PER_LINK = 16  # pybullet's compound shape limit (more crashes the server)


def _frame_parts() -> tuple[Part, ...]:
    """Legs and the robot stand: a separate static body, as nothing on the desk ever touches them."""
    (x0, x1), (y0, y1) = L.DESK_X, L.DESK_Y
    legs = tuple(_box((x - 0.025, x + 0.025), (y - 0.025, y + 0.025), (0.0, L.TABLE_TOP - 0.04), 'dark')
                 for x in (x0 + 0.04, x1 - 0.04) for y in (y0 + 0.04, y1 - 0.04))
    return legs + (_box((-0.44, -0.24), (-0.56, -0.36), (0.0, 0.24), 'dark'),)


def _desk_parts(config: SceneConfig) -> tuple[Part, ...]:
    top = L.TABLE_TOP
    y0 = L.DESK_Y[0]
    cx0, cx1 = L.CABINET_X
    dx = L.DRAWER_X
    bx, by = config.button_xy
    sx, sy = L.SWITCH_XY0
    return (
        _box(L.DESK_X, L.DESK_Y, (top - 0.04, top), 'desk'),
        _box((cx0, cx1), (0.02, 0.03), (top, L.CABINET_WALL_TOP), 'cabinet'),  # cabinet front wall
        _box((cx0, cx1), (0.16, 0.17), (top, L.CABINET_WALL_TOP), 'cabinet'),  # back wall
        _box((cx1, cx1 + 0.02), (0.02, 0.17), (top, L.CABINET_WALL_TOP), 'cabinet'),  # right end
        _box((cx0 - 0.02, cx0), (0.02, 0.17), (top, L.CABINET_WALL_TOP), 'cabinet'),  # left end
        _box((sx - 0.03, sx + 0.03), (sy - 0.02, sy + L.SWITCH_TRAVEL + 0.02), (top, L.SWITCH_BASE_TOP), 'dark'),
        _box((sx - 0.008, sx + 0.008), (sy - 0.005, sy + L.SWITCH_TRAVEL + 0.005),
             (L.SWITCH_BASE_TOP, L.SWITCH_BASE_TOP + 0.001), 'metal', collides=False),  # switch groove
        _box((L.BULB_POSITION[0] - 0.006, L.BULB_POSITION[0] + 0.006),
             (L.BULB_POSITION[1] - 0.006, L.BULB_POSITION[1] + 0.006), (top, L.BULB_POSITION[2]), 'metal'),
        _box((dx - 0.165, dx - 0.155), (y0, -0.11), (0.28, top - 0.04), 'desk'),  # drawer housing
        _box((dx + 0.155, dx + 0.165), (y0, -0.11), (0.28, top - 0.04), 'desk'),
        _box((dx - 0.165, dx + 0.165), (y0, -0.11), (0.27, 0.28), 'desk'),
        _box((dx - 0.165, dx + 0.165), (-0.12, -0.11), (0.28, top - 0.04), 'desk'),
        _box((bx - 0.03, bx + 0.03), (by - 0.03, by + 0.03), (top, top + 0.01), 'dark'),  # button housing
    )


def _links(config: SceneConfig) -> tuple[LinkSpec, ...]:
    bx, by = config.button_xy
    lid_x, lid_y, lid_z = L.SLIDE_SIZE
    return (
        LinkSpec('plank_link', (0.0, 0.0, 0.0),
                 (_box(L.CABINET_X, L.CABINET_Y, (L.TABLE_TOP, L.PLANK_TOP), 'accent'),)),
        LinkSpec('slide_link', (L.SLIDE_X0, 0.095, L.CABINET_WALL_TOP + lid_z / 2), (
            Part((lid_x / 2, lid_y / 2, lid_z / 2), (0.0, 0.0, 0.0), 'accent'),
            Part((0.01, 0.015, 0.0175), (0.0, -0.03, 0.0225), 'metal'),  # knob
        ), 'prismatic', (-1.0, 0.0, 0.0), (0.0, L.SLIDE_TRAVEL), friction=3.0),
        LinkSpec('drawer_link', (L.DRAWER_X, L.DRAWER_Y0, L.DRAWER_FLOOR - 0.01), (
            Part((0.13, 0.10, 0.005), (0.0, 0.0, 0.005), 'cabinet'),
            Part((0.005, 0.10, 0.035), (-0.125, 0.0, 0.045), 'cabinet'),
            Part((0.005, 0.10, 0.035), (0.125, 0.0, 0.045), 'cabinet'),
            Part((0.13, 0.005, 0.035), (0.0, 0.095, 0.045), 'cabinet'),
            Part((0.15, 0.0075, 0.05), (0.0, -0.0975, 0.04), 'accent'),  # front panel
            Part((0.0075, 0.0075, 0.035), (0.0, L.DRAWER_HANDLE_Y, 0.045), 'metal'),  # vertical handle bar
            Part((0.005, 0.0215, 0.005), (0.0, -0.1265, 0.015), 'metal'),
            Part((0.005, 0.0215, 0.005), (0.0, -0.1265, 0.075), 'metal'),
        ), 'prismatic', (0.0, -1.0, 0.0), (0.0, L.DRAWER_TRAVEL), friction=5.0),
        LinkSpec('button_link', (bx, by, L.TABLE_TOP + 0.02),
                 (Part((0.02, 0.0, 0.01), (0.0, 0.0, 0.0), 'button', 'cylinder'),),
                 'prismatic', (0.0, 0.0, -1.0), (0.0, L.BUTTON_TRAVEL)),
        LinkSpec('switch_link', tuple(L.switch_handle(0.0)),
                 (Part((0.0125, 0.01, 0.02), (0.0, 0.0, 0.0), 'metal'),),
                 'prismatic', (0.0, 1.0, 0.0), (0.0, L.SWITCH_TRAVEL), friction=2.0),
        LinkSpec('led_link', (bx + 0.05, by, L.TABLE_TOP + 0.005),
                 (Part((0.01, 0.0, 0.0), (0.0, 0.0, 0.0), 'led_off', 'sphere', collides=False),)),
        LinkSpec('light_link', L.BULB_POSITION,
                 (Part((0.02, 0.0, 0.0), (0.0, 0.0, 0.0), 'bulb_off', 'sphere', collides=False),)),
    )


BUTTON_SPRING_FORCE = 4.0  # N: the robot pushes it down easily, it pops back when released


class Scene:
    """The desk with its articulations and lights, the three blocks and the floor, in one pybullet client."""

    def __init__(self, client: Any, config: SceneConfig) -> None:
        self._p = client
        self.config = config
        self._palette = config.palette
        self._specs = _links(config)
        self.link_index = {'base_link': -1, **{spec.name: i for i, spec in enumerate(self._specs)}}
        self._joint = {name: self.link_index[f'{name}_link'] for name in ('slide', 'drawer', 'button', 'switch')}
        # The floor is not drawn: cameras paint empty pixels in the floor colour instead, which spares the
        # renderer a full-screen polygon (a third of the static camera's time). Its visual is a speck
        # hidden under it, as pybullet draws the collision box of a body that has no visual at all.
        self.floor_uid = client.createMultiBody(
            0, client.createCollisionShape(client.GEOM_BOX, halfExtents=(3.0, 3.0, 0.01)),
            client.createVisualShape(client.GEOM_BOX, halfExtents=(1e-3,) * 3, visualFramePosition=(0, 0, -0.5)),
            (0, 0, -0.01))
        self._static_body(_frame_parts())
        self.uid = self._build_desk(config)
        self.block_uids = {name: self._block(colour, size)
                           for name, (colour, size) in zip(config.block_names, config.blocks)}
        self.led = 0
        self.lightbulb = 0
        self._button_was_pressed = False
        self._shown: tuple[int, int] | None = None

    def _shapes(self, parts: tuple[Part, ...]) -> tuple[int, int]:
        """Compound collision and visual shapes for ``parts`` (collision -1 when nothing collides)."""
        p = self._p
        kinds = {'box': p.GEOM_BOX, 'sphere': p.GEOM_SPHERE, 'cylinder': p.GEOM_CYLINDER}

        def args(chosen: list[Part]) -> dict[str, Any]:
            return {'shapeTypes': [kinds[part.shape] for part in chosen],
                    'halfExtents': [part.half for part in chosen],
                    'radii': [part.half[0] for part in chosen],
                    'lengths': [2 * part.half[2] for part in chosen]}

        assert len(parts) <= MAX_SHAPES_PER_LINK, f'{len(parts)} shapes in one link'
        colliding = [part for part in parts if part.collides]
        collision = (p.createCollisionShapeArray(**args(colliding),
                                                 collisionFramePositions=[part.centre for part in colliding])
                     if colliding else -1)
        visual = p.createVisualShapeArray(**args(list(parts)), visualFramePositions=[part.centre for part in parts],
                                          rgbaColors=[self._palette[part.colour] for part in parts])
        return collision, visual

    def _static_body(self, parts: tuple[Part, ...]) -> int:
        collision, visual = self._shapes(parts)
        return self._p.createMultiBody(0, collision, visual, (0, 0, 0))

    def _build_desk(self, config: SceneConfig) -> int:
        p = self._p
        base_collision, base_visual = self._shapes(_desk_parts(config))
        shapes = [self._shapes(spec.parts) for spec in self._specs]
        joint_types = {'fixed': p.JOINT_FIXED, 'prismatic': p.JOINT_PRISMATIC}
        n = len(self._specs)
        uid = p.createMultiBody(
            0, base_collision, base_visual, (0, 0, 0),
            linkMasses=[0.2] * n, linkCollisionShapeIndices=[s[0] for s in shapes],
            linkVisualShapeIndices=[s[1] for s in shapes], linkPositions=[spec.origin for spec in self._specs],
            linkOrientations=[(0, 0, 0, 1)] * n, linkInertialFramePositions=[(0, 0, 0)] * n,
            linkInertialFrameOrientations=[(0, 0, 0, 1)] * n, linkParentIndices=[0] * n,
            linkJointTypes=[joint_types[spec.joint] for spec in self._specs],
            linkJointAxis=[spec.axis for spec in self._specs])
        p.changeDynamics(uid, -1, lateralFriction=0.6)
        for index, spec in enumerate(self._specs):
            if spec.joint == 'prismatic':
                p.changeDynamics(uid, index, jointLowerLimit=spec.limits[0], jointUpperLimit=spec.limits[1],
                                 lateralFriction=0.6)
                p.setJointMotorControl2(uid, index, p.VELOCITY_CONTROL, targetVelocity=0, force=spec.friction)
        p.setJointMotorControl2(uid, self._joint['button'], p.POSITION_CONTROL, targetPosition=0.0,
                                force=BUTTON_SPRING_FORCE)
        return uid

    def _block(self, colour: str, size: str) -> int:
        half = [s / 2 for s in L.BLOCK_SIZES[size]]
        p = self._p
        uid = p.createMultiBody(L.BLOCK_MASS, p.createCollisionShape(p.GEOM_BOX, halfExtents=half),
                                p.createVisualShape(p.GEOM_BOX, halfExtents=half, rgbaColor=L.BLOCK_RGBA[colour]))
        p.changeDynamics(uid, -1, lateralFriction=0.7, spinningFriction=0.001, rollingFriction=0.0001)
        return uid

    def reset(self, scene_obs: np.ndarray) -> None:
        """Set joints, lights and block poses from a 24-D CALVIN scene_obs (the bulb follows the switch)."""
        p = self._p
        for index, name in enumerate(('slide', 'drawer', 'button', 'switch')):
            p.resetJointState(self.uid, self._joint[name], float(scene_obs[index]))
        for i, uid in enumerate(self.block_uids.values()):
            pose = scene_obs[6 + 6 * i: 12 + 6 * i]
            p.resetBasePositionAndOrientation(uid, pose[:3].tolist(), p.getQuaternionFromEuler(pose[3:].tolist()))
            p.resetBaseVelocity(uid, (0, 0, 0), (0, 0, 0))
        self.led = int(scene_obs[5] > 0.5)
        self._button_was_pressed = self._pressed()
        self._update_lights()

    def _joint_value(self, name: str) -> float:
        return self._p.getJointState(self.uid, self._joint[name])[0]

    def _pressed(self) -> bool:
        return self._joint_value('button') > L.BUTTON_TRAVEL / 2

    def step(self) -> None:
        """Light logic after physics: bulb on past the switch midpoint, LED toggles on each new button press."""
        pressed = self._pressed()
        if pressed and not self._button_was_pressed:
            self.led = 1 - self.led
        self._button_was_pressed = pressed
        self._update_lights()

    def _update_lights(self) -> None:
        self.lightbulb = int(self._joint_value('switch') > L.SWITCH_TRAVEL / 2)
        if (self.lightbulb, self.led) != self._shown:
            self._p.changeVisualShape(self.uid, self.link_index['light_link'],
                                      rgbaColor=self._palette['bulb_on' if self.lightbulb else 'bulb_off'])
            self._p.changeVisualShape(self.uid, self.link_index['led_link'],
                                      rgbaColor=self._palette['led_on' if self.led else 'led_off'])
            self._shown = (self.lightbulb, self.led)

    def get_obs(self) -> np.ndarray:
        """CALVIN scene_obs: slide, drawer, button, switch, lightbulb, led, then per block xyz + Euler xyz."""
        p = self._p
        values = [self._joint_value(name) for name in ('slide', 'drawer', 'button', 'switch')]
        values += [float(self.lightbulb), float(self.led)]
        for uid in self.block_uids.values():
            position, orientation = p.getBasePositionAndOrientation(uid)
            values += [*position, *p.getEulerFromQuaternion(orientation)]
        return np.array(values, dtype=np.float64)

    def get_info(self) -> dict[str, Any]:
        """calvin_env's ``scene_info``: contacts, poses and velocities, joint and logical states."""
        p = self._p
        movable = {}
        for name, uid in self.block_uids.items():
            position, orientation = p.getBasePositionAndOrientation(uid)
            linear, angular = p.getBaseVelocity(uid)
            movable[name] = {'uid': uid, 'current_pos': np.array(position), 'current_orn': np.array(orientation),
                             'current_lin_vel': np.array(linear), 'current_ang_vel': np.array(angular),
                             'contacts': p.getContactPoints(bodyA=uid)}

        def joint(name: str) -> dict[str, Any]:
            return {'uid': self.uid, 'joint_state': self._joint_value(name)}

        return {
            'fixed_objects': {'table': {'uid': self.uid, 'links': dict(self.link_index),
                                        'contacts': p.getContactPoints(bodyA=self.uid)}},
            'movable_objects': movable,
            'doors': {f'base__{name}': {'uid': self.uid, 'current_state': self._joint_value(name)}
                      for name in ('slide', 'drawer')},
            'buttons': {'base__button': {**joint('button'), 'logical_state': int(self._pressed())}},
            'switches': {'base__switch': {**joint('switch'), 'logical_state': self.lightbulb}},
            'lights': {'lightbulb': {'uid': self.uid, 'logical_state': self.lightbulb},
                       'led': {'uid': self.uid, 'logical_state': self.led}},
        }
