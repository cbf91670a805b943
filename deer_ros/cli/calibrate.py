"""``deer-ros calibrate``: consistency values of a checkpoint on held-out demonstrations.

Writes ``calibration.npz`` into the checkpoint directory (the weights are not
touched) and prints the cost range the average budget can take.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from deer_ros.budget.exit_criterion import METRICS


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


def run(args: argparse.Namespace) -> int:
    from deer_ros.benchmark.dataset import LanguageWindows
    from deer_ros.budget.calibration import calibration_path, checkpoint_sha256
    from deer_ros.budget.collect import collect_calibration
    from deer_ros.budget.solver import feasible_range
    from deer_ros.model import load_model
    from deer_ros.model.family import instruction_encoder_for
    from deer_ros.model.flops import cost_table_for

    model = load_model(args.checkpoint, device=args.device)
    keys = ('rgb_static', 'rgb_gripper') + (('robot_obs',) if model.config.use_proprio else ())
    windows = LanguageWindows(args.data, window=args.window, stride=args.stride, keys=keys)
    data = collect_calibration(model, instruction_encoder_for(model.config), windows, metric=args.metric,
                               batch_size=args.batch_size, max_windows=args.max_windows, seed=args.seed,
                               metadata={'checkpoint_sha256': checkpoint_sha256(args.checkpoint)})
    path = data.save(args.output or calibration_path(args.checkpoint))
    low, high = feasible_range(np.asarray(cost_table_for(model.config).llm_gflops))
    medians = np.median(data.values[:, 1:], axis=0)
    print(f'wrote {path}: {data.num_samples} samples x {data.num_exits} exits ({args.metric})')
    print('median consistency, exits 1..: ' + ' '.join(f'{m:.4g}' for m in medians))
    print(f'feasible average LLM budget: [{low:.4g}, {high:.4g}] GFLOPs')
    return 0
