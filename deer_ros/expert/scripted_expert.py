"""A scripted expert that solves every supported task, usable wherever a policy is expected.

It first lifts the hand straight up, gripper unchanged (inside a CALVIN chain a task starts wherever
the last one was judged done, often with the fingers still touching something), then plans
waypoints from the observation at that height (:mod:`deer_ros.expert.plans`) and follows them.
It integrates its own actions into a copy of the env's target pose (initialised from the observed
tcp), because the env accumulates deltas on a target rather than on the measured pose: servoing on
the measured pose would keep adding the tracking lag.

``reset(task, resume=True)`` is for taking over from another policy mid-task (DAgger-style
recovery demos, :mod:`deer_ros.expert.collect`): if the hand already lies on a segment of the plan
(e.g. half-way down towards a button), the expert carries on from there instead of rising and
starting over, so its recovery labels do not contradict its own demos on the states they share.
"""
from __future__ import annotations

import numpy as np

from deer_ros.benchmark.language import task_for_instruction
from deer_ros.calvin_layout import ORN_SCALE, POS_SCALE, wrap_angle
from deer_ros.expert.plans import NEUTRAL_YAW, PLANNERS, SAFE_Z, View, Waypoint, plan, rise
from deer_ros.sim.interface import Obs, SimEnv
from deer_ros.sim.layout import SceneConfig

TOLERANCE = 0.008  # metres between tcp and waypoint before moving on
MAX_WAIT = 12  # steps to wait for a tcp that cannot get closer (pressing, end stops)
ON_PATH = 0.02  # metres from a plan segment within which a taken-over hand counts as on the plan


def _distance_to_segment(point: np.ndarray, start: np.ndarray, end: np.ndarray) -> float:
    direction = end - start
    length_sq = float(direction @ direction)
    fraction = 0.0 if length_sq == 0.0 else float(np.clip((point - start) @ direction / length_sq, 0.0, 1.0))
    return float(np.linalg.norm(point - (start + fraction * direction)))


def resume_index(waypoints: list[Waypoint], tcp: np.ndarray) -> int:
    """First waypoint to head for from ``tcp``: the end of the first plan segment the hand lies on, else 0.

    The first, not the last: plans go down and back up the same line (press a button, grasp and lift),
    and a hand on that line has not yet done what happens at its bottom.
    """
    for index in range(1, len(waypoints)):
        if _distance_to_segment(tcp, waypoints[index - 1].position, waypoints[index].position) <= ON_PATH:
            return index
    return 0


class ScriptedExpert:
    """Waypoint follower with CALVIN-scaled relative actions: ``reset(task)`` then ``act(obs)`` each step."""

    def __init__(self, env: object) -> None:
        self._config: SceneConfig = env.config
        self._task: str | None = None
        self._resume = False
        self._stage = 'start'  # 'start' -> 'rise' -> 'task', or 'replan' -> 'task' after a preparation stage
        self._plan: list[Waypoint] = []
        self._target = np.zeros(6)
        self._waited = 0
        self._settled = 0

    def reset(self, task: str, resume: bool = False) -> None:
        """Start ``task``; with ``resume`` carry on along the plan if the hand is already on it (see module doc)."""
        if task not in PLANNERS:
            raise ValueError(f'no expert for task {task!r}')
        self._task = task
        self._resume = resume
        self._stage = 'start'
        self._plan = []
        self._waited = self._settled = 0

    @property
    def done(self) -> bool:
        """True once every waypoint has been reached (the expert then holds still)."""
        return self._stage == 'task' and not self._plan

    def act(self, obs: dict) -> np.ndarray:
        """Next 7-D relative action in [-1, 1] (gripper +1 open / -1 close)."""
        if self._task is None:
            raise RuntimeError('call reset(task) before act()')
        robot_obs = np.asarray(obs['robot_obs'], dtype=np.float64)
        if not self._plan and self._stage != 'task':
            self._plan = self._next_plan(View(self._config, robot_obs, np.asarray(obs['scene_obs'])))
        if not self._plan:
            return np.array([0, 0, 0, 0, 0, 0, robot_obs[14]], dtype=np.float64)
        waypoint = self._plan[0]
        step, arrived = self._step_towards(waypoint)
        if arrived:
            self._advance(waypoint, robot_obs[:3])
        return np.concatenate([step[:3] / POS_SCALE, step[3:] / ORN_SCALE, [waypoint.gripper]])

    def _next_plan(self, view: View) -> list[Waypoint]:
        """The rise before the task (first call), then the task's plan from the current observation."""
        if self._stage == 'start':
            self._target = np.concatenate([view.tcp, view.euler])
            self._stage = 'rise'
            if self._resume:
                waypoints = plan(self._task, view)
                start = resume_index(waypoints, view.tcp)
                if start > 0:
                    self._stage = 'task'
                    return waypoints[start:]
            if view.tcp[2] < SAFE_Z - TOLERANCE:
                return [rise(view)]
        self._stage = 'task'
        return plan(self._task, view)

    def _step_towards(self, waypoint: Waypoint) -> tuple[np.ndarray, bool]:
        """Move the integrated target straight towards the waypoint within the step limits; True once there."""
        tilt = wrap_angle(np.array([np.pi, 0.0]) - self._target[3:5])
        # Turn the way that keeps the yaw within pi of neutral, never across the wrist's joint limit.
        turn = wrap_angle(waypoint.yaw - NEUTRAL_YAW) - wrap_angle(self._target[5] - NEUTRAL_YAW)
        delta = np.concatenate([waypoint.position - self._target[:3], tilt, [turn]])
        limits = np.array([POS_SCALE] * 3 + [ORN_SCALE] * 3) * waypoint.speed
        scale = max(1.0, float(np.max(np.abs(delta) / limits)))
        step = delta / scale
        self._target = self._target + step
        return step, scale == 1.0

    def _advance(self, waypoint: Waypoint, tcp: np.ndarray) -> None:
        """Pop the waypoint once the arm has caught up with the target (or stopped trying) and settled."""
        if np.linalg.norm(tcp - waypoint.position) > TOLERANCE and self._waited < MAX_WAIT:
            self._waited += 1
        elif self._settled < waypoint.settle:
            self._settled += 1
        else:
            self._plan.pop(0)
            self._waited = self._settled = 0
            if waypoint.replan:
                self._plan, self._stage = [], 'replan'


class ExpertPolicy:
    """The scripted expert behind the policy protocol, to validate the evaluation itself.

    It recovers the task from the instruction, so the expert evaluated as a
    policy should score what it scores when told the task directly.
    """

    def __init__(self, env: SimEnv) -> None:
        self._expert = ScriptedExpert(env)
        self._task: str | None = None

    def reset(self) -> None:
        self._task = None

    def step(self, obs: Obs, instruction: str) -> np.ndarray:
        task = task_for_instruction(instruction)
        if task != self._task:
            self._expert.reset(task)
            self._task = task
        return self._expert.act(obs)

