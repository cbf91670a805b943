"""The DeeR policy as its users drive it: ``reset()`` per task, ``select_action()`` per control step.

In the style of LeRobot's policies, one object is what the ROS node's
controller and the chain evaluation both step, so the two cannot drift apart:
the optional scripted return to the ready pose comes first after every
reset, then the early-exit model acts under the budget in force.

Loading has one entry point, :meth:`DeerPolicy.from_pretrained`, from a
checkpoint directory or a model config::

    policy = DeerPolicy.from_pretrained(resolve_checkpoint('tiny'), budget=Budget(avg_gflops=0.03),
                                        ready_pose=ReadyPose())
    policy.reset()
    action, info = policy.select_action(Observation(rgb_static, rgb_gripper, robot_obs), 'open the drawer')

Robot state: :attr:`Observation.proprio` carries CALVIN's ``robot_obs`` (15)
whenever the caller has it, whatever the model. The ready-pose return reads
it; the model sees it only when its config has ``use_proprio``, otherwise it
is dropped before the model step. So callers never branch on the model, and
:attr:`DeerPolicy.needs_robot_state` says when they must supply it.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import replace
from pathlib import Path
from typing import Callable

from deer_ros.budget.caps import Budget, CostKind, CostUnit
from deer_ros.model import DeerConfig
from deer_ros.model.cost import CostTable
from deer_ros.policy.early_exit import Precision
from deer_ros.policy.ready_pose import ReadyPose, ReadyPoseReturn
from deer_ros.policy.runtime import PolicyRuntime
from deer_ros.policy.types import Action, ExitInfo, Observation

_LOG = logging.getLogger(__name__)


class DeerPolicy:
    """The early-exit policy, optionally preceded by a scripted return to the ready pose after every reset.

    Args:
        runtime: the model under its budget (loading, live caps, thresholds, steps).
        ready_pose: where the hand returns before the model acts on a new
            task; ``None``: the model acts from the first step.

    Thread safety: :meth:`reset` may come from another thread than
    :meth:`select_action` (the node resets on a new instruction while the
    control loop steps); one lock makes each call whole, so a reset lands
    between two steps.
    """

    def __init__(self, runtime: PolicyRuntime, ready_pose: ReadyPose | None = None) -> None:
        self.runtime = runtime
        self.ready_pose = ready_pose
        self._return = ReadyPoseReturn(ready_pose) if ready_pose is not None else None
        self._lock = threading.Lock()

    @classmethod
    def from_pretrained(cls, source: str | Path, *, device: str = 'cpu', budget: Budget = Budget(),
                        ready_pose: ReadyPose | None = None, track_average: bool = False, metric: str = 'rms',
                        cost_kind: CostKind = 'llm', cost_unit: CostUnit = 'gflops', seed: int = 0,
                        measure_latency: bool = False, precision: Precision = 'fp32',
                        warn: Callable[[str], None] = _LOG.warning) -> 'DeerPolicy':
        """A runnable policy: the one way to load DeeR for acting.

        Args:
            source: a checkpoint directory (``config.json`` + ``model.safetensors``,
                with ``calibration.npz`` beside them for budgets solved on real
                data), or a model config name or file (a fresh model, seeded
                random init: for tests and cost checks). A policy shipped with
                the package is the directory ``deer_ros.resources.resolve_checkpoint(name)``
                gives (the node's ``checkpoint`` parameter resolves names that way).
            device: torch device of the model.
            budget: the budget in force from the start (raises ``BudgetError`` when infeasible).
            ready_pose: the scripted return before each task; ``None``: none.
            track_average: meet ``budget.avg_gflops`` in closed loop on the realised step costs.
            metric: exit-rule metric; must match the calibration file's.
            cost_kind: what the GFLOPs budgets count: ``llm`` (decoder only) or ``total``.
            cost_unit: the unit budgets are given in: ``gflops`` or ``gmacs`` (the paper's).
            seed: random-init seed for config sources and for synthetic calibration.
            measure_latency: have a per-exit latency table (cached, else measured) even without an ms budget.
            precision: ``fp32``, or ``bf16`` / ``fp16`` autocast of the model's forward parts, as upstream
                evaluates on CUDA (fp16 needs CUDA; bf16 also runs on CPU).
            warn: where start-up warnings go (the node passes its logger).
        """
        runtime = PolicyRuntime(source, device=device, metric=metric, cost_kind=cost_kind, budget=budget,
                                track_average=track_average, seed=seed, warn=warn, cost_unit=cost_unit,
                                measure_latency=measure_latency, precision=precision)
        return cls(runtime, ready_pose)

    @property
    def config(self) -> DeerConfig:
        return self.runtime.config

    @property
    def cost_table(self) -> CostTable:
        """Per-exit costs of the full model (the budget's cap does not shorten it)."""
        return self.runtime.cost_table

    @property
    def needs_robot_state(self) -> bool:
        """Whether :attr:`Observation.proprio` must be given: the model reads it, or the ready pose does."""
        return self.config.use_proprio or self.ready_pose is not None

    def reset(self) -> None:
        """New task: forget the step history and, with a ready pose, go there first."""
        with self._lock:
            self.runtime.reset()
            if self._return is not None:
                self._return.start()

    def select_action(self, observation: Observation, instruction: str) -> tuple[Action, ExitInfo]:
        """The next action and what it cost; a scripted ready-pose step says so (:meth:`ExitInfo.scripted_step`).

        Raises:
            ValueError: bad input, including a missing ``proprio`` while the
                ready pose or the model needs it.
            NonFiniteActionError: the model produced NaN/inf.
        """
        with self._lock:
            if self._return is not None:
                if observation.proprio is None:
                    raise ValueError('the ready pose needs the robot state (observation.proprio = robot_obs)')
                scripted = self._return.next_action(observation.proprio)
                if scripted is not None:
                    return scripted, ExitInfo.scripted_step()
            if not self.config.use_proprio:
                observation = replace(observation, proprio=None)
            return self.runtime.step(observation, instruction)
