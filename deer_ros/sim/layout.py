"""Where things are on the play table, as plain numbers: shared by the builder, initial states and the expert.

World frame as in CALVIN: x to the robot's right, y away from the robot, z up; the robot stands
at (-0.34, -0.46, 0.24) in front of the desk. Block slots are CALVIN's (calvin.md §5). Every
articulated part is described by the world position of its handle as a function of its joint
value, so the expert can reach it without knowing how the scene was built.

Scene variants share this geometry except the button position; they differ in colours, block
order (the order blocks appear in ``scene_obs``) and block sizes, like CALVIN's A-D.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping

import numpy as np

Rgba = tuple[float, float, float, float]

TABLE_TOP = 0.44
PLANK_TOP = 0.444  # cabinet floor, a separate link so "block in the slider" is a contact fact
DRAWER_FLOOR = 0.31  # top of the drawer floor
BLOCK_HEIGHT = 0.04
# Blocks are placed this far into their support, as they rest after settling: pybullet reports no
# contact at exactly zero distance, and the oracle needs the start contacts right after a reset.
REST_DEPTH = 0.0005
BLOCK_MASS = 0.15
BLOCK_SIZES = {'small': (0.04, 0.04, 0.04), 'middle': (0.056, 0.04, 0.04), 'big': (0.08, 0.04, 0.04)}
BLOCK_RGBA: Mapping[str, Rgba] = MappingProxyType({
    'red': (0.85, 0.12, 0.12, 1.0), 'blue': (0.12, 0.25, 0.85, 1.0), 'pink': (0.95, 0.45, 0.72, 1.0)})

# Joint ranges, in scene_obs units (metres): CALVIN's for slide, drawer and switch.
SLIDE_TRAVEL = 0.28  # 0: door on the right, 0.28: door on the left
DRAWER_TRAVEL = 0.22  # 0: closed, 0.22: open
SWITCH_TRAVEL = 0.088  # lightbulb on past the midpoint
BUTTON_TRAVEL = 0.015  # press depth; a new press past the midpoint toggles the LED

TABLE_SLOTS = ((0.05, -0.12), (0.23, -0.12))
SLIDER_SLOTS = {'slider_left': (-0.2409, 0.0924), 'slider_right': (0.0703, 0.0924)}

# Cabinet (sliding door over a two-slot trough) behind the work area.
CABINET_X = (-0.40, 0.23)
CABINET_Y = (0.03, 0.16)  # inside the front and back walls
CABINET_WALL_TOP = 0.49
SLIDE_X0 = 0.055  # door centre x when the slide joint is 0
SLIDE_SIZE = (0.32, 0.15, 0.01)
# Switch (a knob sliding away from the robot) and bulb at the front right, where the static camera sees them.
SWITCH_XY0 = (0.33, -0.30)  # knob centre when the switch joint is 0
SWITCH_BASE_TOP = TABLE_TOP + 0.015
BULB_POSITION = (0.40, -0.22, 0.50)

# Drawer under the desk top, opening towards the robot (-y); both table slots lie above it.
DRAWER_X = 0.14
DRAWER_Y0 = -0.23  # drawer frame y when closed
DRAWER_INNER_HALF = (0.12, 0.09)  # usable floor, x and y half extents
DRAWER_HANDLE_Y = -0.155  # handle bar, relative to the drawer frame
DRAWER_HANDLE_Z = 0.345
DESK_X = (-0.52, 0.44)
DESK_Y = (-0.33, 0.20)


@dataclass(frozen=True)
class SceneConfig:
    """One scene variant: colours, the block order in ``scene_obs`` with their sizes, and the button spot."""

    name: str
    palette: Mapping[str, Rgba]
    blocks: tuple[tuple[str, str], ...]  # (colour, size key), in scene_obs order
    button_xy: tuple[float, float]

    @property
    def block_names(self) -> tuple[str, ...]:
        """calvin_env's movable object names, in scene_obs order."""
        return tuple(f'block_{colour}' for colour, _ in self.blocks)

    def block_size(self, colour: str) -> tuple[float, float, float]:
        return BLOCK_SIZES[dict(self.blocks)[colour]]

    def button_top(self, depth: float = 0.0) -> np.ndarray:
        return np.array([*self.button_xy, TABLE_TOP + 0.03 - depth])


def _palette(desk: Rgba, cabinet: Rgba, accent: Rgba, floor: Rgba) -> Mapping[str, Rgba]:
    return MappingProxyType({
        'desk': desk, 'cabinet': cabinet, 'accent': accent, 'floor': floor,
        'metal': (0.55, 0.55, 0.58, 1.0), 'dark': (0.15, 0.15, 0.17, 1.0),
        'button': (0.85, 0.85, 0.2, 1.0), 'led_off': (0.1, 0.3, 0.1, 1.0), 'led_on': (0.1, 1.0, 0.2, 1.0),
        'bulb_off': (0.85, 0.85, 0.8, 1.0), 'bulb_on': (1.0, 0.85, 0.1, 1.0)})


# palette: desk, cabinet (and drawer), accent (door, cabinet floor, drawer front), floor
SCENES: Mapping[str, SceneConfig] = MappingProxyType({
    'A': SceneConfig('A', _palette((0.45, 0.3, 0.2, 1), (0.9, 0.9, 0.85, 1), (0.2, 0.45, 0.3, 1),
                                   (0.35, 0.35, 0.4, 1)),
                     (('pink', 'small'), ('blue', 'middle'), ('red', 'big')), (-0.25, -0.05)),
    'B': SceneConfig('B', _palette((0.85, 0.85, 0.82, 1), (0.35, 0.25, 0.2, 1), (0.7, 0.3, 0.15, 1),
                                   (0.5, 0.45, 0.4, 1)),
                     (('red', 'big'), ('blue', 'small'), ('pink', 'middle')), (-0.12, -0.27)),
    'C': SceneConfig('C', _palette((0.3, 0.3, 0.33, 1), (0.65, 0.5, 0.35, 1), (0.15, 0.3, 0.6, 1),
                                   (0.6, 0.6, 0.55, 1)),
                     (('blue', 'big'), ('red', 'small'), ('pink', 'middle')), (-0.25, -0.05)),
    'D': SceneConfig('D', _palette((0.72, 0.55, 0.36, 1), (0.55, 0.38, 0.25, 1), (0.25, 0.25, 0.3, 1),
                                   (0.45, 0.45, 0.45, 1)),
                     (('red', 'middle'), ('blue', 'small'), ('pink', 'big')), (-0.12, -0.27)),
})


def get_scene(name: str) -> SceneConfig:
    """The variant called ``name`` ('A'..'D'); ``ValueError`` lists the choices otherwise."""
    if name not in SCENES:
        raise ValueError(f'unknown scene {name!r}; choose one of {sorted(SCENES)}')
    return SCENES[name]


def resting_z(support_top: float) -> float:
    """Block centre height for a block resting on a support whose top is at ``support_top``."""
    return support_top + BLOCK_HEIGHT / 2 - REST_DEPTH


def slide_handle(q: float) -> np.ndarray:
    """Door knob centre for slide joint value ``q``."""
    return np.array([SLIDE_X0 - q, 0.065, CABINET_WALL_TOP + 0.01 + 0.0175])


def drawer_handle(q: float) -> np.ndarray:
    """Middle of the vertical drawer handle bar for drawer joint value ``q``."""
    return np.array([DRAWER_X, DRAWER_Y0 + DRAWER_HANDLE_Y - q, DRAWER_HANDLE_Z])


def drawer_centre(q: float) -> np.ndarray:
    """Centre of the drawer floor's top face for drawer joint value ``q``."""
    return np.array([DRAWER_X, DRAWER_Y0 - q, DRAWER_FLOOR])


def switch_handle(q: float) -> np.ndarray:
    """Switch knob centre for switch joint value ``q``."""
    return np.array([SWITCH_XY0[0], SWITCH_XY0[1] + q, SWITCH_BASE_TOP + 0.02])
