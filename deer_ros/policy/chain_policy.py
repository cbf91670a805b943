"""The DeeR policy behind the chain evaluator's policy protocol, with per-step cost statistics.

``deer_ros.benchmark.evaluation`` drives any object with ``reset()``,
``step(obs, instruction) -> (7,) action`` and optionally ``step_stats()``;
this adapter turns a simulator observation dict into an :class:`Observation`
(the robot state always in ``proprio``), steps a :class:`DeerPolicy` and
reports the exit taken and its counted cost. The per-exit indicator stats
(``exit_1`` .. ``exit_n``) average into the exit histogram, from which the
evaluation's peak cost is read.

With a :class:`ReadyPose` (the default), every instruction first returns the
hand to the ready pose; those steps report only ``ready_pose: 1`` (model
steps report 0), so the model's stats and its budget count model actions only.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from deer_ros.budget.caps import Budget
from deer_ros.policy.deer_policy import DeerPolicy
from deer_ros.policy.ready_pose import ReadyPose
from deer_ros.policy.types import ExitInfo, Observation


class ChainPolicy:
    """Adapter: CALVIN-style observation dict in, 7-D relative action out."""

    def __init__(self, policy: DeerPolicy) -> None:
        self.policy = policy
        self._last: ExitInfo | None = None

    def reset(self) -> None:
        self.policy.reset()

    def step(self, obs: dict[str, Any], instruction: str) -> np.ndarray:
        observation = Observation(obs['rgb_obs']['rgb_static'], obs['rgb_obs']['rgb_gripper'], obs.get('robot_obs'))
        action, self._last = self.policy.select_action(observation, instruction)
        return action.as_array()

    def step_stats(self) -> dict[str, float]:
        info = self._last
        if info is None or info.scripted:
            return {'ready_pose': 1.0}
        stats = {'ready_pose': 0.0, 'exit': info.exit_index + 1.0, 'llm_gflops': info.llm_gflops,
                 'total_gflops': info.total_gflops, 'latency_ms': info.latency_ms}
        stats.update({f'exit_{k + 1}': float(k == info.exit_index) for k in range(self.policy.cost_table.num_exits)})
        return stats


@dataclass(frozen=True)
class ChainPolicyFactory:
    """Picklable recipe: each evaluation worker builds its own policy from it."""

    source: str
    budget: Budget = field(default_factory=Budget)
    thresholds: tuple[float, ...] | None = None
    device: str = 'cpu'
    threads: int = 1
    track_average: bool = True  # as the node's budget.track_average (explicit thresholds turn it off)
    ready_pose: ReadyPose | None = field(default_factory=ReadyPose)

    def __call__(self, env: object = None) -> ChainPolicy:
        import torch
        torch.set_num_threads(self.threads)
        policy = DeerPolicy.from_pretrained(self.source, device=self.device, budget=self.budget,
                                            track_average=self.track_average, ready_pose=self.ready_pose)
        if self.thresholds is not None:
            policy.runtime.thresholds.use_thresholds(self.thresholds)
        return ChainPolicy(policy)


def peak_from_histogram(step_stats: dict[str, float], per_exit_cost: list[float] | tuple[float, ...]) -> float:
    """Cost of the deepest exit that any step took (peak per-step cost of an evaluation)."""
    used = [k for k in range(len(per_exit_cost)) if step_stats.get(f'exit_{k + 1}', 0.0) > 0.0]
    return float(per_exit_cost[max(used)]) if used else 0.0


def deer_policy(env: object = None, source: str = 'tiny', avg_gflops: float | None = None,
                peak_gflops: float | None = None, device: str = 'cpu', track_average: bool = True,
                ready_pose: bool = True) -> ChainPolicy:
    """Entry point for ``deer-ros evaluate --policy deer_ros.policy.chain_policy:deer_policy --policy-kwargs '{...}'``.

    ``ready_pose``: return to the simulator's home pose before every
    instruction (``false``: the learned policy alone). ``deer-ros evaluate
    --protocol calvin`` passes ``false``: CALVIN's protocol has no ready pose.
    """
    return ChainPolicyFactory(source, Budget(avg_gflops=avg_gflops, peak_gflops=peak_gflops), device=device,
                              track_average=track_average, ready_pose=ReadyPose() if ready_pose else None)(env)
