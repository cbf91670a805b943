"""``deer-ros calibrate``: consistency values of a checkpoint on held-out demonstrations.

Writes ``calibration.npz`` into the checkpoint directory (the weights are not
touched) and prints the cost range the average budget can take.
``--first-exit-reference DIR`` first saves the checkpoint with
``first_exit_reference`` on (same weights) into DIR and calibrates that copy:
the rule can then stop at exit 1 on its own (docs/budgets.md, section 1).
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from deer_ros.budget.exit_criterion import METRICS

if TYPE_CHECKING:
    from deer_ros.model.family import AnyModel


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--checkpoint', required=True, type=Path,
                        help='checkpoint directory (config.json + model.safetensors)')
    parser.add_argument('--data', required=True, type=Path,
                        help='CALVIN-format split directory of held-out demos, e.g. DATA/validation')
    parser.add_argument('--window', type=int, default=12, help='frames per window (training window size)')
    parser.add_argument('--stride', type=int, default=12, help='frames between window starts')
    parser.add_argument('--max-windows', type=int, default=None, help='random subset of windows to use')
    parser.add_argument('--metric', choices=sorted(METRICS), default='rms')
    parser.add_argument('--batch-size', type=int, default=8)
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--output', type=Path, default=None, help='default: <checkpoint>/calibration.npz')
    parser.add_argument('--first-exit-reference', type=Path, default=None, metavar='DIR',
                        help='save the checkpoint with first_exit_reference on (same weights: exit 1 compared with '
                             'the decoder state one layer before it, so it can stop) into DIR, and calibrate that')


def run(args: argparse.Namespace) -> int:
    from deer_ros.benchmark.dataset import LanguageWindows
    from deer_ros.budget.calibration import calibration_path, checkpoint_sha256
    from deer_ros.budget.collect import collect_calibration
    from deer_ros.budget.solver import feasible_range
    from deer_ros.model import load_model
    from deer_ros.model.family import instruction_encoder_for
    from deer_ros.model.flops import cost_table_for

    checkpoint = args.checkpoint
    model = load_model(checkpoint, device=args.device)
    if args.first_exit_reference is not None:
        checkpoint = _save_with_reference(model, checkpoint, args.first_exit_reference)
        model = load_model(checkpoint, device=args.device)
    keys = ('rgb_static', 'rgb_gripper') + (('robot_obs',) if model.config.use_proprio else ())
    windows = LanguageWindows(args.data, window=args.window, stride=args.stride, keys=keys)
    data = collect_calibration(model, instruction_encoder_for(model.config), windows, metric=args.metric,
                               batch_size=args.batch_size, max_windows=args.max_windows, seed=args.seed,
                               metadata={'checkpoint_sha256': checkpoint_sha256(checkpoint)})
    path = data.save(args.output or calibration_path(checkpoint))
    first = 0 if data.first_exit_checked else 1
    low, high = feasible_range(np.asarray(cost_table_for(model.config).llm_gflops), data.first_exit_checked)
    medians = np.median(data.values[:, first:], axis=0)
    print(f'wrote {path}: {data.num_samples} samples x {data.num_exits} exits ({args.metric})')
    print(f'median consistency, exits {first + 1}..: ' + ' '.join(f'{m:.4g}' for m in medians))
    print(f'feasible average LLM budget: [{low:.4g}, {high:.4g}] GFLOPs')
    return 0


def _save_with_reference(model: AnyModel, checkpoint: Path, directory: Path) -> Path:
    """Save ``model`` with ``first_exit_reference`` on into ``directory``; the source checkpoint stays as it is."""
    from deer_ros.model import DeerVLA
    from deer_ros.model.builder import with_first_exit_reference

    if directory.resolve() == checkpoint.resolve():
        raise SystemExit('deer-ros calibrate --first-exit-reference: give a new directory, not the checkpoint '
                         '(its calibration and refined thresholds belong to the rule without the reference)')
    if not isinstance(model, DeerVLA):
        raise SystemExit('deer-ros calibrate --first-exit-reference: DeeR-VLA checkpoints set '
                         'first_exit_reference in their config.json (on by default)')
    with_first_exit_reference(model).save_pretrained(directory)
    print(f'wrote {directory}: {checkpoint} with first_exit_reference on')
    return directory
