"""The two chain protocols of ``deer-ros evaluate --protocol``: only what differs between them.

Both run the same loop (:func:`deer_ros.benchmark.evaluation.run_chain`: reset once per chain, at
most ``max_steps`` per subtask, no reset between subtasks, stop at the first failure). They differ in:

* chains: ``deer_ros`` generates its own list (:func:`~deer_ros.benchmark.chains.generate_chains`, over the
  tasks the backend judges, seeded); ``calvin`` takes CALVIN's official 1000 (:mod:`.calvin_sequences`).
* instruction: the project's evaluation phrase / CALVIN's validation annotation.
* start state: the simulator layout's slots with ``default_rng`` / CALVIN's own code (its scene-D poses,
  legacy RNG); both seeded by the FNV-1 hash of the start conditions.
* steps per subtask: any (default 360) / 360. Scene: A-D / D, the scene CALVIN evaluates on.
* ready pose before a subtask: the policy's choice / none.

A results file records ``setting`` (name and version): change a version when its results stop
being comparable with earlier ones. Protocols are stateless, so they pickle into evaluation workers.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Sequence

import numpy as np

from deer_ros.benchmark import calvin_sequences
from deer_ros.benchmark.chains import DEFAULT_NUM_CHAINS, Chain, generate_chains, initial_state_seed
from deer_ros.benchmark.language import calvin_instruction, evaluation_instruction
from deer_ros.calvin_layout import EP_LEN
from deer_ros.sim.initial_state import initial_state


class ChainProtocol(ABC):
    """Which chains, which words, which start states and which limits an evaluation uses."""

    name: str
    version: int
    ready_pose: bool
    """Whether a policy may take the hand back to a ready pose before each subtask."""

    @property
    def setting(self) -> str:
        """What results files record as ``protocol``."""
        return f'{self.name}/{self.version}'

    @abstractmethod
    def chains(self, tasks: Sequence[str], seed: int) -> list[Chain]:
        """The protocol's whole fixed list (evaluations take slices of it), for a backend that judges ``tasks``."""

    @abstractmethod
    def instruction(self, task: str) -> str:
        """The words the policy gets for ``task``."""

    @abstractmethod
    def start_state(self, chain: Chain, scene: str) -> tuple[np.ndarray, np.ndarray]:
        """(robot_obs, scene_obs) a chain starts from in ``scene``, the same on every run."""

    def check(self, scene: str, max_steps: int) -> None:
        """``ValueError`` for settings the protocol does not allow."""


class DeerRosProtocol(ChainProtocol):
    """The project's chains: scores compare across deer_ros runs, not with published CALVIN numbers."""

    name, version, ready_pose = 'deer_ros', 1, True

    def chains(self, tasks: Sequence[str], seed: int) -> list[Chain]:
        return generate_chains(tasks, DEFAULT_NUM_CHAINS, seed)

    def instruction(self, task: str) -> str:
        return evaluation_instruction(task)

    def start_state(self, chain: Chain, scene: str) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(initial_state_seed(chain.initial))
        return initial_state(chain.initial.conditions(), rng, scene)


class CalvinProtocol(ChainProtocol):
    """CALVIN's own evaluation, as ``evaluate_policy.py`` runs it and papers (DeeR-VLA included) report it.

    Its start states are CALVIN's scene-D poses on either backend: on the embedded simulator the blocks
    in the cabinet start 2.5 mm into its floor, which its physics resolves in the first step (the block
    settles 3 mm higher, no task is triggered).
    """

    name, version, ready_pose = 'calvin', 1, False
    scene, max_steps = 'D', EP_LEN

    def chains(self, tasks: Sequence[str], seed: int) -> list[Chain]:
        """CALVIN's list (``seed`` is CALVIN's, not ours: only the default is accepted)."""
        if seed != 0:
            raise ValueError(f'CALVIN\'s sequences have CALVIN\'s fixed seeds: a chain seed ({seed}) applies to the '
                             'deer_ros protocol only')
        chains = calvin_sequences.official_chains()
        unjudged = sorted({task for chain in chains for task in chain.tasks} - set(tasks))
        if unjudged:
            raise ValueError(f'CALVIN\'s sequences include tasks this backend\'s oracle does not judge: {unjudged}')
        return chains

    def instruction(self, task: str) -> str:
        return calvin_instruction(task)

    def start_state(self, chain: Chain, scene: str) -> tuple[np.ndarray, np.ndarray]:
        self.check(scene, self.max_steps)
        return calvin_sequences.start_state(chain.initial)

    def check(self, scene: str, max_steps: int) -> None:
        if scene != self.scene:
            raise ValueError(f'CALVIN evaluates on scene {self.scene}, and its start states are scene {self.scene}\'s '
                             f'poses: scene {scene} is for the deer_ros protocol')
        if max_steps != self.max_steps:
            raise ValueError(f'CALVIN gives every subtask {self.max_steps} steps, not {max_steps}: other step '
                             'budgets are for the deer_ros protocol')


DEER_ROS = DeerRosProtocol()
CALVIN = CalvinProtocol()
PROTOCOLS: dict[str, ChainProtocol] = {protocol.name: protocol for protocol in (DEER_ROS, CALVIN)}
