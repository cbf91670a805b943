"""Collect consistency values from a model on held-out demonstration windows.

For each window and each probed position s: the LSTM history is built from
frames < s, each frame's feature taken from a random exit (histories are
mixed-exit at run time too); then frame s's feature from every exit is fed
one step from that history, and consecutive exits' pose actions are compared
with the exit metric. That is exactly the comparison the exit rule makes at
run time, so thresholds solved on these values transfer. A model with
``first_exit_reference`` also feeds frame s's reference feature (one layer
before exit 0), so column 0 holds exit 0's difference from it, as upstream's
first row; otherwise column 0 is NaN.

Differences from upstream DeeR: history exits are drawn from the exits the rule
can choose, 1..n-1 without the reference (upstream drew from all exits, also
where exit 0 could not be chosen); the values go to a file beside the
checkpoint instead of into it.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from tqdm import tqdm

from deer_ros.benchmark.dataset import ConcatenatedWindows, LanguageWindows
from deer_ros.budget.calibration import CalibrationData
from deer_ros.budget.exit_criterion import exit_consistency
from deer_ros.model.family import AnyModel, TextEncoder
from deer_ros.model.modeling_deer import LSTMState


def default_positions(window: int) -> tuple[int, ...]:
    """Probe the second half of the window, so every probe has a history (upstream: 5..10 of 12)."""
    return tuple(range(max(1, window // 2 - 1), window - 1)) or (window - 1,)


def history_exits(rng: np.random.Generator, shape: tuple[int, ...], num_exits: int,
                  first_exit_checked: bool = False) -> np.ndarray:
    """Random exit per history frame, among the exits the rule can choose (1..n-1; 0..n-1 with
    ``first_exit_checked`` or for one exit)."""
    low = 1 if num_exits > 1 and not first_exit_checked else 0
    return rng.integers(low, num_exits, size=shape)


def _repeat_state(state: LSTMState, times: int) -> LSTMState:
    """Each batch row's state repeated ``times`` times, for one branch per exit."""
    return tuple(part.repeat_interleave(times, dim=1) for part in state)  # type: ignore[return-value]


@torch.no_grad()
def window_consistency(model: AnyModel, features: torch.Tensor, exits: np.ndarray, positions: Sequence[int],
                       metric: str, reference: torch.Tensor | None = None) -> np.ndarray:
    """Consistency rows for windows whose per-exit features are already computed.

    Args:
        features: ``(B, W, num_exits, hidden)`` exit features of every frame.
        exits: ``(B, W)`` exit whose feature enters the history at each frame.
        positions: frames s to probe; the history is frames 0..s-1.
        reference: ``(B, W, hidden)`` first-exit reference features (column 0
            is exit 0's difference from them), or ``None`` (column 0 NaN).
    Returns:
        ``(B * len(positions), num_exits)``, rows ordered window-major.
    """
    batch, _, num_exits, _ = features.shape
    rows = torch.arange(batch, device=features.device)
    chosen = features[rows[:, None], torch.arange(features.shape[1], device=features.device),
                      torch.as_tensor(exits, device=features.device)]
    # The reference goes first, as "exit -1": consecutive differences then put exit 0's in column 0.
    probed = features if reference is None else torch.cat([reference.unsqueeze(2), features], dim=2)
    branches = probed.shape[2]
    head = model.action_head
    state: LSTMState | None = None
    probes: dict[int, np.ndarray] = {}
    last = max(positions)
    for s in range(last + 1):
        if s in positions:
            branch = None if state is None else _repeat_state(state, branches)
            step = probed[:, s].reshape(batch * branches, 1, -1)
            poses = head(step, branch).pose.reshape(batch, branches, -1)
            probes[s] = exit_consistency(poses.double().cpu().numpy(), metric)[:, branches - num_exits:]
        if s < last:
            state = head(chosen[:, s:s + 1], state).state
    return np.stack([probes[s] for s in positions], axis=1).reshape(-1, num_exits)


@torch.no_grad()
def collect_calibration(model: AnyModel, instruction_encoder: TextEncoder,
                        windows: LanguageWindows | ConcatenatedWindows, *,
                        metric: str = 'rms', positions: Sequence[int] | None = None, batch_size: int = 8,
                        max_windows: int | None = None, seed: int = 0, progress: bool = True,
                        metadata: dict | None = None) -> CalibrationData:
    """Consistency matrix of ``model`` on (a random subset of) ``windows``.

    Either model family: ``instruction_encoder`` is the family's
    (:func:`~deer_ros.model.family.instruction_encoder_for`). Column 0 holds
    exit 0's difference from the first-exit reference for a model with
    ``first_exit_reference`` (either family: a DeeR-VLA model's too, as
    upstream's first row), so the solvers and the live rule decide exit 0.
    ``windows`` must load ``rgb_static``, ``rgb_gripper`` and, for models using
    proprioception, ``robot_obs``. ``metadata`` (e.g. the checkpoint hash) is
    stored with the values next to what this function knows (window size,
    positions, seed, counts).
    """
    model.eval()
    device = next(model.parameters()).device
    window = windows.window
    positions = tuple(sorted(set(positions or default_positions(window))))
    if not positions or positions[0] < 0 or positions[-1] >= window:
        raise ValueError(f'positions must lie in [0, {window - 1}], got {list(positions)}')
    if len(windows) == 0:
        raise ValueError(f'no {window}-frame language windows in {", ".join(map(str, windows.split_dirs))}')
    checked = model.config.first_exit_reference
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(windows))[:max_windows]
    chunks = []
    for start in tqdm(range(0, order.size, batch_size), desc='calibration', unit='batch', disable=not progress):
        items = [windows[int(i)] for i in order[start:start + batch_size]]
        frames = {key: torch.from_numpy(np.concatenate([item.frames[key] for item in items])).to(device)
                  for key in ('rgb_static', 'rgb_gripper')}
        proprio = None
        if model.config.use_proprio:
            proprio = torch.from_numpy(np.concatenate([item.frames['robot_obs'] for item in items])).float().to(device)
        text_input, mask = instruction_encoder([item.instruction for item in items])
        text_input = text_input.to(device).repeat_interleave(window, dim=0)
        mask = mask.to(device).repeat_interleave(window, dim=0)
        visual = model.encode_vision(frames['rgb_static'], frames['rgb_gripper'], proprio)
        features = model.exit_features(visual, text_input, mask, reference=checked).reshape(
            len(items), window, model.num_exits + int(checked), -1)
        reference, features = (features[:, :, 0], features[:, :, 1:]) if checked else (None, features)
        exits = history_exits(rng, (len(items), window), model.num_exits, checked)
        chunks.append(window_consistency(model, features, exits, positions, metric, reference))
    info = {'window_size': window, 'positions': list(positions), 'num_windows': int(order.size), 'seed': seed,
            'history_exits': f'uniform over exits {0 if checked else 1}..n-1',
            'first_exit': 'against the reference one layer before it' if checked else 'not decided',
            'split_dirs': [str(d) for d in windows.split_dirs]}
    return CalibrationData(np.concatenate(chunks), metric, model.exit_layers, {**info, **(metadata or {})})
