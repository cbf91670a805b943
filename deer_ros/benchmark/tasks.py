"""The task oracle: which CALVIN tasks happened between two ``get_info()`` snapshots.

Predicates and thresholds follow calvin_env's ``Tasks`` with ``new_playtable_tasks`` (calvin.md §4):
they read contacts, uids, joint and logical states and block quaternions, never ``scene_obs``, so
a task counts only when it physically happened (a block "lifted from the drawer" must have touched
the drawer link before and only the robot after). Contacts are pybullet contact tuples; index 2 is
the other body's uid and index 4 its link.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

import numpy as np
from scipy.spatial.transform import Rotation

Info = dict[str, Any]
Predicate = Callable[[Info, Info], bool]

COLOURS = ('red', 'blue', 'pink')
ROTATE_MIN_DEG = 60.0
ROTATE_MAX_TILT_DEG = 30.0
ROTATE_MAX_SHIFT = 0.1
PUSH_MIN_SHIFT = 0.1
SLIDER_MIN_SHIFT = 0.15
DRAWER_MIN_SHIFT = 0.12
LIFT_MIN_HEIGHT = {'table': 0.05, 'slider': 0.03, 'drawer': 0.05}
SURFACE_LINK = {'table': 'base_link', 'slider': 'plank_link', 'drawer': 'drawer_link'}
STACK_MAX_SPEED = 1.0


def _robot(info: Info) -> int:
    return info['robot_info']['uid']


def _table(info: Info) -> dict[str, Any]:
    return info['scene_info']['fixed_objects']['table']


def _block(info: Info, colour: str) -> dict[str, Any]:
    return info['scene_info']['movable_objects'][f'block_{colour}']


def _touching(contacts: Iterable[tuple]) -> set[tuple[int, int]]:
    """(uid, link) pairs a body touches."""
    return {(contact[2], contact[4]) for contact in contacts}


def _bodies(contacts: Iterable[tuple]) -> set[int]:
    return {contact[2] for contact in contacts}


def _surface(info: Info, name: str) -> tuple[int, int]:
    table = _table(info)
    return table['uid'], table['links'][SURFACE_LINK[name]]


def _block_uids(info: Info) -> set[int]:
    return {block['uid'] for block in info['scene_info']['movable_objects'].values()}


def _rotate(colour: str, sign: int) -> Predicate:
    def achieved(start: Info, end: Info) -> bool:
        before, after = _block(start, colour), _block(end, colour)
        relative = Rotation.from_quat(after['current_orn']) * Rotation.from_quat(before['current_orn']).inv()
        x, y, z = relative.as_euler('xyz', degrees=True)
        shift = np.linalg.norm(np.asarray(after['current_pos']) - before['current_pos'])
        resting = bool(_bodies(after['contacts']) - {_robot(end)})
        return (sign * z > ROTATE_MIN_DEG and abs(x) < ROTATE_MAX_TILT_DEG and abs(y) < ROTATE_MAX_TILT_DEG
                and shift <= ROTATE_MAX_SHIFT and resting)
    return achieved


def _push(colour: str, sign: int) -> Predicate:
    def achieved(start: Info, end: Info) -> bool:
        before, after = _block(start, colour), _block(end, colour)
        robot = _robot(start)
        surfaces_before = {pair for pair in _touching(before['contacts']) if pair[0] != robot}
        surfaces_after = {pair for pair in _touching(after['contacts']) if pair[0] != robot}
        shift = after['current_pos'][0] - before['current_pos'][0]
        return (sign * shift > PUSH_MIN_SHIFT and bool(surfaces_before) and bool(surfaces_after)
                and surfaces_before <= surfaces_after)
    return achieved


def _joint(kind: str, name: str, threshold: float, sign: int) -> Predicate:
    def achieved(start: Info, end: Info) -> bool:
        return sign * (end['scene_info'][kind][name]['current_state']
                       - start['scene_info'][kind][name]['current_state']) > threshold
    return achieved


def _light(name: str, before: int, after: int) -> Predicate:
    def achieved(start: Info, end: Info) -> bool:
        return (start['scene_info']['lights'][name]['logical_state'] == before
                and end['scene_info']['lights'][name]['logical_state'] == after)
    return achieved


def _lift(colour: str, source: str) -> Predicate:
    def achieved(start: Info, end: Info) -> bool:
        before, after = _block(start, colour), _block(end, colour)
        rise = after['current_pos'][2] - before['current_pos'][2]
        held_only = _bodies(after['contacts']) == {_robot(end)}
        return (rise > LIFT_MIN_HEIGHT[source] and held_only
                and _surface(start, source) in _touching(before['contacts']))
    return achieved


def _place(destination: str) -> Predicate:
    def achieved(start: Info, end: Info) -> bool:
        robot = _robot(start)
        for colour in COLOURS:
            before, after = _block(start, colour), _block(end, colour)
            held = (_bodies(start['robot_info']['contacts']) == {before['uid']}
                    and _bodies(before['contacts']) == {robot})
            released = before['uid'] not in _bodies(end['robot_info']['contacts'])
            if held and released and _surface(end, destination) in _touching(after['contacts']):
                return True
        return False
    return achieved


def _only_blocks(info: Info, colour: str) -> bool:
    """The block rests on other blocks and nothing else."""
    touched = _bodies(_block(info, colour)['contacts'])
    return bool(touched) and touched <= _block_uids(info) - {_block(info, colour)['uid']}


def _touches_block(info: Info, colour: str) -> bool:
    return bool(_bodies(_block(info, colour)['contacts']) & _block_uids(info))


def _stack(start: Info, end: Info) -> bool:
    for colour in COLOURS:
        after = _block(end, colour)
        still = (np.linalg.norm(after['current_lin_vel']) < STACK_MAX_SPEED
                 and np.linalg.norm(after['current_ang_vel']) < STACK_MAX_SPEED)
        if not _touches_block(start, colour) and _only_blocks(end, colour) and still:
            return True
    return False


def _unstack(start: Info, end: Info) -> bool:
    return any(_only_blocks(start, colour) and not _touches_block(end, colour) for colour in COLOURS)


def _push_into_drawer(start: Info, end: Info) -> bool:
    """A block that rested on the desk top alone now touches the drawer, and the robot let go of it.

    The robot may touch the block at the start (a chain's previous task may end touching it); a block
    that was carried has no desk contact at the start and does not count.
    """
    robot = _robot(end)
    for colour in COLOURS:
        before, after = _touching(_block(start, colour)['contacts']), _touching(_block(end, colour)['contacts'])
        surfaces = {pair for pair in before if pair[0] != robot}
        if (surfaces == {_surface(start, 'table')} and _surface(end, 'drawer') in after
                and robot not in {uid for uid, _ in after}):
            return True
    return False


def _build() -> dict[str, Predicate]:
    tasks: dict[str, Predicate] = {
        'move_slider_left': _joint('doors', 'base__slide', SLIDER_MIN_SHIFT, 1),
        'move_slider_right': _joint('doors', 'base__slide', SLIDER_MIN_SHIFT, -1),
        'open_drawer': _joint('doors', 'base__drawer', DRAWER_MIN_SHIFT, 1),
        'close_drawer': _joint('doors', 'base__drawer', DRAWER_MIN_SHIFT, -1),
        'turn_on_lightbulb': _light('lightbulb', 0, 1),
        'turn_off_lightbulb': _light('lightbulb', 1, 0),
        'turn_on_led': _light('led', 0, 1),
        'turn_off_led': _light('led', 1, 0),
    }
    for colour in COLOURS:
        for side, sign in (('left', 1), ('right', -1)):
            tasks[f'rotate_{colour}_block_{side}'] = _rotate(colour, sign)
        for side, sign in (('left', -1), ('right', 1)):
            tasks[f'push_{colour}_block_{side}'] = _push(colour, sign)
        for source in LIFT_MIN_HEIGHT:
            tasks[f'lift_{colour}_block_{source}'] = _lift(colour, source)
    tasks.update({'place_in_slider': _place('slider'), 'place_in_drawer': _place('drawer'),
                  'stack_block': _stack, 'unstack_block': _unstack, 'push_into_drawer': _push_into_drawer})
    return tasks


_TASKS = _build()
SUPPORTED_TASKS: tuple[str, ...] = tuple(_TASKS)


class TaskOracle:
    """calvin_env's ``Tasks`` interface: the set of tasks achieved between two infos."""

    def get_task_info(self, start_info: Info, end_info: Info) -> set[str]:
        return self.get_task_info_for_set(start_info, end_info, SUPPORTED_TASKS)

    def get_task_info_for_set(self, start_info: Info, end_info: Info, tasks: Iterable[str]) -> set[str]:
        """Only the named tasks are checked (cheaper inside a rollout loop); unknown names raise ``ValueError``."""
        tasks = set(tasks)
        unknown = tasks - set(_TASKS)
        if unknown:
            raise ValueError(f'unknown tasks {sorted(unknown)}; supported: {SUPPORTED_TASKS}')
        return {task for task in tasks if _TASKS[task](start_info, end_info)}
