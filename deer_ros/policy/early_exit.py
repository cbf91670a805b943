"""Incremental early-exit inference: the DeeR policy loop for one robot.

Per control step: encode both cameras once, then run the decoder one exit
group at a time; after each group the shared head proposes an action from the
exit's feature and the step history, and the exit criterion decides whether
to stop. Only the chosen exit's feature enters the history.

The history comes in two modes, fixed by the model. Sliding window
(deer_ros's own model): the LSTM state of a step is the replay, from a zero
state, of the last ``history_window - 1`` chosen features (done once per step,
before the exits), so the head sees histories as long as the training windows
and never longer. Carried state (DeeR-VLA, as upstream evaluates it with a
window of 1): the LSTM state is kept from step to step until ``reset()``; the
tentative head calls at each exit start from it without changing it, and the
chosen exit's call gives the next one. Nothing grows with the episode length:
the carried state is a few features or one LSTM state, plus the cached
instruction tokens.

Precision: upstream DeeR-VLA evaluates under fp16/bf16 autocast on CUDA.
``precision`` runs the model's forward parts (vision, decoder exits, head
calls) under ``torch.autocast``; the poses are read back as float64 and the
carried history as float32, so the exit rule, the clamping and the
non-finite check see the same types at every precision.
"""
from __future__ import annotations

import time
from collections import deque
from contextlib import AbstractContextManager, nullcontext
from typing import Literal

import numpy as np
import torch

from deer_ros.budget.exit_criterion import ExitCriterion
from deer_ros.calvin_layout import GRIPPER_CLOSE, GRIPPER_OPEN
from deer_ros.model.cost import CostTable
from deer_ros.model.family import AnyModel, TextEncoder, instruction_encoder_for
from deer_ros.model.modeling_deer import REFERENCE, LSTMState
from deer_ros.policy.types import Action, ExitInfo, Observation

Precision = Literal['fp32', 'bf16', 'fp16']
AUTOCAST_DTYPES: dict[str, torch.dtype | None] = {'fp32': None, 'bf16': torch.bfloat16, 'fp16': torch.float16}
PRECISIONS = tuple(AUTOCAST_DTYPES)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``precision`` on ``device`` (``None`` = fp32); raises ``ValueError`` where unsupported."""
    if precision not in PRECISIONS:
        raise ValueError(f'precision must be one of {PRECISIONS}, got {precision!r}')
    if precision == 'fp16' and device.type != 'cuda':
        raise ValueError('fp16 autocast needs CUDA; use bf16 or fp32 on CPU')
    return AUTOCAST_DTYPES[precision]


class NonFiniteActionError(RuntimeError):
    """The model produced NaN/inf: the caller must not send this action to a robot."""


class EarlyExitPolicy:
    """``reset()`` per episode/instruction, ``step(observation, instruction)`` per control tick."""

    def __init__(self, model: AnyModel, criterion: ExitCriterion, cost_table: CostTable,
                 instruction_encoder: TextEncoder | None = None, precision: Precision = 'fp32') -> None:
        self.model = model.eval()
        self.cost_table = cost_table
        self.instruction_encoder = instruction_encoder or instruction_encoder_for(model.config)
        self.device = next(model.parameters()).device
        self.precision = precision
        self._autocast_dtype = autocast_dtype(precision, self.device)
        self.set_criterion(criterion)
        self._carries_state = getattr(model, 'carries_state', False)
        self._state: LSTMState | None = None
        self._history: deque[torch.Tensor] = deque(maxlen=model.config.head.history_window - 1)
        self._instruction: str | None = None
        self._encoded: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def num_exits(self) -> int:
        return self.model.num_exits

    def set_criterion(self, criterion: ExitCriterion) -> None:
        if criterion.num_exits != self.num_exits:
            raise ValueError(f'criterion has {criterion.num_exits} thresholds but the model has {self.num_exits} exits')
        if criterion.first_exit_checked and not self.model.config.first_exit_reference:
            raise ValueError('the criterion decides the first exit, which needs a model with first_exit_reference')
        self.criterion = criterion

    def set_num_exits(self, num_exits: int, criterion: ExitCriterion) -> None:
        """Lower the cap (drops layers and frees their weights); raising it needs a reload."""
        if num_exits > self.num_exits:
            raise ValueError(f'cannot raise the cap from {self.num_exits} to {num_exits} without reloading the model')
        self.model.truncate(num_exits)
        self.cost_table = self.cost_table.truncated(num_exits)
        self.set_criterion(criterion)

    def reset(self) -> None:
        """Forget the step history (new episode or new instruction)."""
        self._history.clear()
        self._state = None

    def _history_state(self) -> LSTMState | None:
        """LSTM state the step starts from (``None`` = zero state: first step, or a window of 1)."""
        if self._carries_state:
            return self._state
        if not self._history:
            return None
        return self.model.action_head.history_state(torch.cat(list(self._history), dim=1))

    def _autocast(self) -> AbstractContextManager[object]:
        """The model's forward parts run under this: autocast at bf16/fp16, nothing at fp32."""
        if self._autocast_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self._autocast_dtype)

    def _encoded_instruction(self, instruction: str) -> tuple[torch.Tensor, torch.Tensor]:
        if instruction != self._instruction:
            text_input, mask = self.instruction_encoder([instruction])
            self._encoded = text_input.to(self.device), mask.to(self.device)
            self._instruction = instruction
        assert self._encoded is not None
        return self._encoded

    def _as_batch(self, array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(array)).unsqueeze(0).to(self.device)

    @torch.inference_mode()
    def step(self, observation: Observation, instruction: str, *,
             max_exit: int | None = None) -> tuple[Action, ExitInfo]:
        """One control step. Raises ``ValueError`` for bad input and :class:`NonFiniteActionError` for NaN output.

        ``max_exit`` ends the step at that exit at the latest without truncating
        the model: the latency measurement times a step capped at each exit on
        the live weights (:mod:`deer_ros.policy.latency_probe`).
        """
        started = time.perf_counter()
        observation.validate()
        if max_exit is not None and not 0 <= max_exit < self.num_exits:
            raise ValueError(f'max_exit must be in [0, {self.num_exits - 1}], got {max_exit}')
        text_input, mask = self._encoded_instruction(instruction)
        proprio = None if observation.proprio is None else self._as_batch(np.asarray(observation.proprio, np.float32))
        with self._autocast():  # the exit rule inside reads float64 numpy poses, which autocast leaves alone
            visual = self.model.encode_vision(self._as_batch(observation.rgb_static),
                                              self._as_batch(observation.rgb_gripper), proprio)
            state = self._history_state()
            consistency: list[float] = []
            previous_pose: np.ndarray | None = None
            options: dict[str, bool | int] = {'reference': True} if self.criterion.first_exit_checked else {}
            if max_exit is not None:
                options['num_exits'] = max_exit + 1
            for exit_index, feature in self.model.iter_exit_features(visual, text_input, mask, **options):
                output = self.model.action_head(feature.unsqueeze(1), state)
                pose = output.pose[0, 0].double().cpu().numpy()  # float64 at every precision
                if exit_index == REFERENCE:  # the first exit is compared with the layer before it
                    previous_pose = pose
                    continue
                value = float('nan') if previous_pose is None else self.criterion.consistency(pose, previous_pose)
                consistency.append(value)
                if self.criterion.should_exit(exit_index, value):
                    break
                previous_pose = pose
        gripper_logit = float(output.gripper_logit[0, 0])
        if not (np.all(np.isfinite(pose)) and np.isfinite(gripper_logit)):
            raise NonFiniteActionError(f'non-finite action at exit {exit_index}: pose={pose}, gripper={gripper_logit}')
        if self._carries_state:
            self._state = (output.state[0].float(), output.state[1].float())  # the chosen exit's call advances it
        else:
            self._history.append(feature.unsqueeze(1).float())  # maxlen 0 (a window of 1) keeps nothing
        action = Action(pose=np.clip(pose, -1.0, 1.0), gripper=GRIPPER_OPEN if gripper_logit > 0 else GRIPPER_CLOSE)
        info = ExitInfo(
            exit_index=exit_index, exit_layer=self.model.exit_layers[exit_index], num_exits=self.num_exits,
            llm_gflops=self.cost_table.llm_gflops[exit_index], total_gflops=self.cost_table.total_gflops(exit_index),
            latency_ms=(time.perf_counter() - started) * 1e3, consistency=consistency,
            thresholds=self.criterion.thresholds.tolist())
        return action, info
