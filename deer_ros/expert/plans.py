"""Waypoint plans for every supported task, computed from one observation and the table layout.

A plan is a list of tcp waypoints (position, yaw about a vertically-down gripper, gripper command).
Everything is read from ``robot_obs``/``scene_obs`` plus :mod:`deer_ros.sim.layout`, never from the
simulator, so the same plans work whatever brought the scene into its current state.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import numpy as np
from scipy.spatial.transform import Rotation

from deer_ros.calvin_layout import wrap_angle
from deer_ros.sim import layout as L
from deer_ros.sim.layout import SceneConfig

OPEN, CLOSE = 1, -1
SAFE_Z = 0.58  # travel height: a held block clears the door knob, the switch and the bulb
GRASP_BELOW_CENTRE = 0.008  # tcp below the block centre, so the pads hold the block's middle
FINGER_HALF_THICKNESS = 0.012  # closed fingertip pads, measured along the closing axis
PUSH_CLEARANCE = 0.02  # gap between a fingertip and what it is about to push
RELEASE_GAP = 0.012  # a placed block's bottom is released this far above its support
PUSH_Z = L.TABLE_TOP + 0.015  # tcp height for pushing blocks on the desk: pads 1 cm above the top
TRAVEL, FINE = 0.8, 0.4  # fractions of the 2 cm / 0.05 rad per-step limit
# Tcp yaw of the reset pose. Plans pick yaws near it: a yaw pi away needs the wrist joint past its limit.
NEUTRAL_YAW = 1.5


@dataclass(frozen=True)
class Waypoint:
    """Where the tcp should go next; ``settle`` holds the pose afterwards (gripper motion, button press).

    ``replan`` ends a preparation stage (sliding the door away, opening the drawer fully): the
    follower then plans the task again from a fresh observation.
    """

    position: np.ndarray
    yaw: float
    gripper: int
    speed: float = TRAVEL
    settle: int = 0
    replan: bool = False


def _then_replan(stage: list[Waypoint]) -> list[Waypoint]:
    return stage[:-1] + [replace(stage[-1], replan=True)]


@dataclass(frozen=True)
class Block:
    """A block's pose and size; it may lie on any face (e.g. after tumbling into the drawer)."""

    colour: str
    position: np.ndarray
    axes: np.ndarray  # columns: the block's local x, y, z axes in the world frame
    size: tuple[float, float, float]

    @property
    def _vertical(self) -> int:
        """The local axis that points (most nearly) up."""
        return int(np.argmax(np.abs(self.axes[2])))

    @property
    def _horizontal(self) -> list[int]:
        return [axis for axis in range(3) if axis != self._vertical]

    @property
    def height(self) -> float:
        return self.size[self._vertical]

    @property
    def top(self) -> float:
        return self.position[2] + self.height / 2

    def half_extent(self, axis: int) -> float:
        """Half of the block's footprint along world x (0) or y (1)."""
        return sum(abs(self.axes[axis, local]) * self.size[local] / 2 for local in self._horizontal)

    def grip_direction(self) -> tuple[float, float]:
        """Tcp yaw that closes the fingers across the narrower horizontal side, and its period.

        The fingers close along (sin yaw, -cos yaw); the period is pi, or pi/2 for a square footprint.
        """
        sides = sorted(self._horizontal, key=lambda local: self.size[local])
        across = self.axes[:, sides[0]]
        period = np.pi / 2 if np.isclose(self.size[sides[0]], self.size[sides[1]]) else np.pi
        return float(np.arctan2(across[0], -across[1])), period


class View:
    """The observation, read as positions of things."""

    def __init__(self, config: SceneConfig, robot_obs: np.ndarray, scene_obs: np.ndarray) -> None:
        self.tcp = np.asarray(robot_obs[:3], dtype=np.float64)
        self.euler = np.asarray(robot_obs[3:6], dtype=np.float64)
        self.yaw = float(robot_obs[5])
        self.gripper = OPEN if robot_obs[14] > 0 else CLOSE
        self.slide, self.drawer, _, self.switch = (float(v) for v in scene_obs[:4])
        self.blocks = [Block(colour, np.asarray(scene_obs[6 + 6 * i: 9 + 6 * i], dtype=np.float64),
                             Rotation.from_euler('xyz', scene_obs[9 + 6 * i: 12 + 6 * i]).as_matrix(),
                             L.BLOCK_SIZES[size])
                       for i, (colour, size) in enumerate(config.blocks)]
        self.config = config

    def block(self, colour: str) -> Block:
        return next(block for block in self.blocks if block.colour == colour)

    def held(self) -> Block | None:
        """The block between the fingers, if the gripper is closed on one."""
        if self.gripper == OPEN:
            return None
        for block in self.blocks:
            offset = block.position - self.tcp
            if np.linalg.norm(offset[:2]) < 0.03 and abs(offset[2]) < 0.03:
                return block
        return None

    def in_cabinet(self, block: Block) -> bool:
        return L.CABINET_Y[0] < block.position[1] < L.CABINET_Y[1]

    def on_table(self, block: Block) -> bool:
        return (abs(block.position[2] - block.height / 2 - L.TABLE_TOP) < 0.01
                and block.position[1] < L.CABINET_Y[0] - 0.01)

    def stacked(self) -> tuple[Block, Block] | None:
        """(top, bottom) of a two-block stack, if there is one."""
        for top in self.blocks:
            for bottom in self.blocks:
                if (top is not bottom and np.linalg.norm(top.position[:2] - bottom.position[:2]) < 0.05
                        and 0.02 < top.position[2] - bottom.position[2] < 0.06):
                    return top, bottom
        return None


def _nearest(angle: float, candidates: list[float]) -> float:
    return min(candidates, key=lambda c: abs(wrap_angle(c - angle)))


def grasp_yaw(block: Block, reference: float = NEUTRAL_YAW) -> float:
    """Tcp yaw that closes the fingers across the block's narrow side, nearest to ``reference``."""
    yaw, period = block.grip_direction()
    return _nearest(reference, [yaw + k * period for k in range(-4, 5)])


def _at(point: np.ndarray, z: float | None = None) -> np.ndarray:
    position = np.array(point, dtype=np.float64)
    if z is not None:
        position[2] = z
    return position


def rise(view: View) -> Waypoint:
    """Straight up to travel height, gripper unchanged: leaves whatever the last task left the hand at."""
    return Waypoint(_at(view.tcp, max(view.tcp[2], SAFE_Z)), view.yaw, view.gripper)


def _pick(block: Block, yaw: float) -> list[Waypoint]:
    grasp = _at(block.position, block.position[2] - GRASP_BELOW_CENTRE)
    above = _at(grasp, grasp[2] + 0.08)
    return [Waypoint(_at(grasp, SAFE_Z), yaw, OPEN), Waypoint(above, yaw, OPEN),
            Waypoint(grasp, yaw, OPEN, FINE), Waypoint(grasp, yaw, CLOSE, FINE, settle=8)]


def _release(xy: np.ndarray, support_z: float, offset: float, yaw: float) -> list[Waypoint]:
    """Lower a held block onto a support at height ``support_z``, let go and back off upwards."""
    release = np.array([xy[0], xy[1], support_z + L.BLOCK_HEIGHT / 2 + RELEASE_GAP - offset])
    return [Waypoint(_at(release, SAFE_Z), yaw, CLOSE), Waypoint(release, yaw, CLOSE, FINE),
            Waypoint(release, yaw, OPEN, FINE, settle=6), Waypoint(_at(release, SAFE_Z), yaw, OPEN)]


def _push_along(start: np.ndarray, end: np.ndarray, yaw: float) -> list[Waypoint]:
    """Closed fingertips down at ``start``, slide to ``end``, back up."""
    return [Waypoint(_at(start, SAFE_Z), yaw, CLOSE), Waypoint(start, yaw, CLOSE, FINE),
            Waypoint(end, yaw, CLOSE, FINE), Waypoint(_at(end, SAFE_Z), yaw, CLOSE)]


def _grasp_and_move(handle: np.ndarray, shift: np.ndarray, yaw: float) -> list[Waypoint]:
    """Grasp a handle from above, drag it by ``shift``, release and back off upwards."""
    end = handle + shift
    return [Waypoint(_at(handle, SAFE_Z), yaw, OPEN), Waypoint(_at(handle, handle[2] + 0.06), yaw, OPEN),
            Waypoint(handle, yaw, OPEN, FINE), Waypoint(handle, yaw, CLOSE, FINE, settle=6),
            Waypoint(end, yaw, CLOSE, FINE), Waypoint(end, yaw, OPEN, FINE, settle=5),
            Waypoint(_at(end, SAFE_Z), yaw, OPEN)]


# --- planners: View -> waypoints -------------------------------------------------------------


def _plan_rotate(colour: str, sign: int) -> Callable[[View], list[Waypoint]]:
    def plan(view: View) -> list[Waypoint]:
        block = view.block(colour)
        turn = sign * np.pi / 2
        yaw = grasp_yaw(block, NEUTRAL_YAW - turn / 2)
        grasp = _at(block.position, block.position[2] - GRASP_BELOW_CENTRE)
        lifted, put_down = _at(grasp, grasp[2] + 0.03), _at(grasp, grasp[2] + 0.004)
        return (_pick(block, yaw)
                + [Waypoint(lifted, yaw, CLOSE, FINE), Waypoint(lifted, yaw + turn, CLOSE),
                   Waypoint(put_down, yaw + turn, CLOSE, FINE), Waypoint(put_down, yaw + turn, OPEN, FINE, settle=6),
                   Waypoint(_at(grasp, SAFE_Z), yaw + turn, OPEN)])
    return plan


def _plan_push(colour: str, sign: int) -> Callable[[View], list[Waypoint]]:
    def plan(view: View) -> list[Waypoint]:
        block = view.block(colour)
        start = _at(block.position, PUSH_Z)
        start[0] -= sign * (block.half_extent(0) + FINGER_HALF_THICKNESS + PUSH_CLEARANCE)
        end = start + np.array([sign * 0.17, 0.0, 0.0])
        return _push_along(start, end, NEUTRAL_YAW)
    return plan


def _plan_lift(colour: str) -> Callable[[View], list[Waypoint]]:
    def plan(view: View) -> list[Waypoint]:
        block = view.block(colour)
        yaw = grasp_yaw(block)
        prepare = _uncover(view, block) if view.in_cabinet(block) else _open_drawer_fully(view, block)
        return prepare or _pick(block, yaw) + [Waypoint(_at(block.position, SAFE_Z), yaw, CLOSE)]
    return plan


def _door_span(slide: float) -> tuple[float, float]:
    """x range the sliding door covers at slide joint value ``slide``."""
    centre = L.SLIDE_X0 - slide
    return centre - L.SLIDE_SIZE[0] / 2, centre + L.SLIDE_SIZE[0] / 2


def _move_door(view: View, goal: float) -> list[Waypoint]:
    """Grasp the door knob and slide the door to ``goal``, 2 cm into the end stop."""
    handle = L.slide_handle(view.slide)
    handle[2] = L.CABINET_WALL_TOP + 0.02  # fingertips just above the door panel
    shift = np.array([-(goal - view.slide) - np.sign(goal - view.slide) * 0.02, 0.0, 0.0])
    return _grasp_and_move(handle, shift, NEUTRAL_YAW)


def _uncover(view: View, block: Block) -> list[Waypoint]:
    """Slide the door all the way off a cabinet block the open fingers could not reach past it."""
    left, right = _door_span(view.slide)
    reach = block.half_extent(0) + 0.06  # open fingertips beside the block
    if right < block.position[0] - reach or left > block.position[0] + reach:
        return []
    return _then_replan(_move_door(view, 0.0 if block.position[0] < (left + right) / 2 else L.SLIDE_TRAVEL))


def _plan_slider(sign: int) -> Callable[[View], list[Waypoint]]:
    return lambda view: _move_door(view, L.SLIDE_TRAVEL if sign > 0 else 0.0)


def _move_drawer(view: View, goal: float) -> list[Waypoint]:
    """Grasp the drawer handle and move the drawer to ``goal``, 2 cm into the end stop."""
    shift = np.array([0.0, -(goal - view.drawer) - np.sign(goal - view.drawer) * 0.02, 0.0])
    return _grasp_and_move(L.drawer_handle(view.drawer), shift, NEUTRAL_YAW)


def _open_drawer_fully(view: View, block: Block | None = None) -> list[Waypoint]:
    """Pull a drawer left just past the 'open' threshold all the way out (a block in it comes along).

    Only when something has to go into or come out of it: ``block`` (if given) must be in the drawer.
    """
    inside = block is None or block.position[2] < L.TABLE_TOP - 0.02
    if not inside or view.drawer > L.DRAWER_TRAVEL - 0.03:
        return []
    return _then_replan(_move_drawer(view, L.DRAWER_TRAVEL))


def _plan_drawer(sign: int) -> Callable[[View], list[Waypoint]]:
    return lambda view: _move_drawer(view, L.DRAWER_TRAVEL if sign > 0 else 0.0)


def _plan_switch(sign: int) -> Callable[[View], list[Waypoint]]:
    def plan(view: View) -> list[Waypoint]:
        goal = L.SWITCH_TRAVEL if sign > 0 else 0.0
        knob = L.switch_handle(view.switch)
        contact = 0.01 + FINGER_HALF_THICKNESS  # knob half depth + pad: tcp offset when touching
        start = knob - np.array([0.0, sign * (contact + PUSH_CLEARANCE), 0.0])
        end = L.switch_handle(goal) - np.array([0.0, sign * (contact - 0.01), 0.0])  # 1 cm into the end stop
        return _push_along(start, end, NEUTRAL_YAW)
    return plan


def _plan_button(view: View) -> list[Waypoint]:
    top = view.config.button_top()
    press = view.config.button_top(depth=0.8 * L.BUTTON_TRAVEL) + np.array([0.0, 0.0, 0.005])
    yaw = NEUTRAL_YAW
    return [Waypoint(_at(top, SAFE_Z), yaw, CLOSE), Waypoint(_at(top, top[2] + 0.03), yaw, CLOSE),
            Waypoint(press, yaw, CLOSE, FINE, settle=3), Waypoint(_at(top, SAFE_Z), yaw, CLOSE)]


class Infeasible(Exception):
    """The scene does not allow the task (e.g. nothing to stack); the expert then holds still."""


def _held_or_pick(view: View, candidates: list[Block]) -> tuple[list[Waypoint], Block, float, float]:
    """Waypoints that end with a block in hand, the block, its height above the tcp and the tcp yaw."""
    held = view.held()
    if held:
        return [], held, held.position[2] - view.tcp[2], view.yaw
    if not candidates:
        raise Infeasible('no block in hand and none to pick up')
    block = candidates[0]
    yaw = grasp_yaw(block)
    return _pick(block, yaw), block, GRASP_BELOW_CENTRE, yaw


def _table_blocks(view: View) -> list[Block]:
    return [block for block in view.blocks if view.on_table(block)]


def _plan_place_in_slider(view: View) -> list[Waypoint]:
    """Into the middle of the uncovered part of the cabinet (a door moved just past the task threshold
    leaves less room than CALVIN's slot position assumes)."""
    start, _, offset, yaw = _held_or_pick(view, _table_blocks(view))
    left, right = _door_span(view.slide)
    x = (right + L.CABINET_X[1]) / 2 if view.slide > L.SLIDE_TRAVEL / 2 else (L.CABINET_X[0] + left) / 2
    return start + _release(np.array([x, np.mean(L.CABINET_Y)]), L.PLANK_TOP, offset, yaw)


def _plan_place_in_drawer(view: View) -> list[Waypoint]:
    """Into the part of the drawer that sticks out from under the desk (all of it once fully open)."""
    prepare = [] if view.held() else _open_drawer_fully(view)
    if prepare:
        return prepare
    start, _, offset, yaw = _held_or_pick(view, _table_blocks(view))
    centre = L.drawer_centre(view.drawer)
    exposed_middle = (centre[1] - L.DRAWER_INNER_HALF[1] + L.DESK_Y[0]) / 2
    return start + _release(np.array([centre[0], min(centre[1], exposed_middle)]), L.DRAWER_FLOOR, offset, yaw)


def _plan_stack(view: View) -> list[Waypoint]:
    table = sorted(_table_blocks(view), key=lambda b: b.size[0])  # small on top of big
    start, held, offset, yaw = _held_or_pick(view, table)
    bases = [block for block in table if block.colour != held.colour]
    if not bases:
        raise Infeasible('no block on the table to stack onto')
    return start + _release(bases[-1].position[:2], bases[-1].top, offset, yaw)


# Where an unstacked block goes: the slot lane, from which later pushes (±0.17 m) and rotations stay
# clear of the button, the switch and the desk edges.
FREE_SPOTS = ((-0.02, -0.12), (0.05, -0.12), (0.14, -0.12), (0.23, -0.12))


def _free_spot(view: View, moving: Block) -> np.ndarray:
    """The free spot farthest from the other blocks."""
    others = [b.position[:2] for b in view.blocks if b is not moving]
    return np.array(max(FREE_SPOTS, key=lambda s: min(np.linalg.norm(np.subtract(s, o)) for o in others)))


def _plan_unstack(view: View) -> list[Waypoint]:
    stack = view.stacked()
    if stack is None:
        raise Infeasible('no stack')
    top, _ = stack
    yaw = grasp_yaw(top)
    return _pick(top, yaw) + _release(_free_spot(view, top), L.TABLE_TOP, GRASP_BELOW_CENTRE, yaw)


PUT_DOWN_AREA = ((-0.1, 0.3), (-0.25, -0.05))  # x and y ranges of desk spots clear of button and switch
PUT_DOWN_OFFSETS = (0.0, 0.07, -0.07, 0.1, -0.1)


def _put_down(view: View, held: Block) -> list[Waypoint]:
    """Set a held block down on the desk, as close below it as there is room.

    A chain judges lift and unstack done while the block is still in the air, and the next task (a
    rotation, say) is measured from there, so the block should land near where it was held.
    """
    others = [b.position[:2] for b in view.blocks if b is not held]
    candidates = [held.position[:2] + (dx, 0.0) for dx in PUT_DOWN_OFFSETS] + [np.array(s) for s in FREE_SPOTS]
    (x0, x1), (y0, y1) = PUT_DOWN_AREA
    free = [c for c in candidates if x0 <= c[0] <= x1 and y0 <= c[1] <= y1
            and all(np.linalg.norm(c - o) >= 0.075 for o in others)]
    spot = min(free, key=lambda c: np.linalg.norm(c - held.position[:2])) if free else _free_spot(view, held)
    return _then_replan(_release(spot, L.TABLE_TOP, held.position[2] - view.tcp[2], view.yaw))


DRAWER_PUSH_X = (L.DRAWER_X - 0.1, L.DRAWER_X + 0.1)  # a block pushed off the edge here lands inside


def _plan_push_into_drawer(view: View) -> list[Waypoint]:
    """Open the drawer fully, slide the block over it if needed, then push it off the desk edge."""
    table = _table_blocks(view)
    if not table:
        raise Infeasible('no block on the table')
    block = min(table, key=lambda b: abs(b.position[0] - L.DRAWER_X))
    prepare = _open_drawer_fully(view)
    if prepare:
        return prepare
    x = block.position[0]
    if not DRAWER_PUSH_X[0] <= x <= DRAWER_PUSH_X[1]:
        sign = 1 if x < DRAWER_PUSH_X[0] else -1
        side = _at(block.position, PUSH_Z)
        side[0] -= sign * (block.half_extent(0) + FINGER_HALF_THICKNESS + PUSH_CLEARANCE)
        end = _at(side)
        end[0] = L.DRAWER_X - sign * (block.half_extent(0) + FINGER_HALF_THICKNESS)
        return _then_replan(_push_along(side, end, NEUTRAL_YAW))
    start = _at(block.position, PUSH_Z)
    start[1] += block.half_extent(1) + FINGER_HALF_THICKNESS + PUSH_CLEARANCE
    end = _at(start)
    end[1] = L.DESK_Y[0] - 0.03
    # A long block can turn on the narrow pusher and stay on the desk: look again and push again.
    return _then_replan(_push_along(start, end, NEUTRAL_YAW))


def _planners() -> dict[str, Callable[[View], list[Waypoint]]]:
    planners: dict[str, Callable[[View], list[Waypoint]]] = {
        'move_slider_left': _plan_slider(1), 'move_slider_right': _plan_slider(-1),
        'open_drawer': _plan_drawer(1), 'close_drawer': _plan_drawer(-1),
        'turn_on_lightbulb': _plan_switch(1), 'turn_off_lightbulb': _plan_switch(-1),
        'turn_on_led': _plan_button, 'turn_off_led': _plan_button,
        'place_in_slider': _plan_place_in_slider, 'place_in_drawer': _plan_place_in_drawer,
        'stack_block': _plan_stack, 'unstack_block': _plan_unstack, 'push_into_drawer': _plan_push_into_drawer,
    }
    for colour in L.BLOCK_RGBA:
        for side, sign in (('left', 1), ('right', -1)):
            planners[f'rotate_{colour}_block_{side}'] = _plan_rotate(colour, sign)
            planners[f'push_{colour}_block_{side}'] = _plan_push(colour, -sign)
        for source in ('table', 'slider', 'drawer'):
            planners[f'lift_{colour}_block_{source}'] = _plan_lift(colour)
    return planners


PLANNERS = _planners()


HELD_BLOCK_TASKS = frozenset({'place_in_slider', 'place_in_drawer', 'stack_block'})


def plan(task: str, view: View) -> list[Waypoint]:
    """Waypoints that achieve ``task`` from the state in ``view``; none when the scene does not allow it.

    Every task but placing and stacking starts with an empty hand, so a held block is put down first.
    """
    held = view.held()
    if held and task not in HELD_BLOCK_TASKS:
        return _put_down(view, held)
    try:
        return PLANNERS[task](view)
    except Infeasible:
        return []
