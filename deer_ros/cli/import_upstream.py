"""``deer-ros import-upstream``: a published DeeR-VLA checkpoint as a deer_ros checkpoint directory.

Reads upstream's ``.pth`` safely (tensors and plain values only), fills the
frozen parts from the local MPT directory and CLIP file (and OpenFlamingo's
checkpoint when given), loads strictly and writes ``config.json``,
``model.safetensors`` and ``tokenizer/``; the checkpoint's cached consistency
``values`` become ``calibration.npz``, and with ``--exit-ratio`` upstream's
own thresholds are stored for the budget they realise
(docs/upstream_checkpoints.md). The result runs as
``ros2 run deer_ros policy_node --ros-args -p checkpoint:=DIR``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from deer_ros.budget.upstream_values import THRESHOLD_TYPES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--checkpoint', required=True, type=Path,
                        help="upstream DeeR checkpoint .pth (Hugging Face Yang130/DeeR-VLA)")
    parser.add_argument('--mpt', required=True, type=Path,
                        help='local MPT directory: mpt-1b-redpajama-200b-dolly (3B) or mpt-7b (9B), '
                             'with config.json, weights and tokenizer files')
    parser.add_argument('--clip', required=True, type=Path,
                        help='open_clip ViT-L-14 "openai" state dict (open_clip_pytorch_model.bin or .safetensors)')
    parser.add_argument('--openflamingo', type=Path, default=None,
                        help="OpenFlamingo's checkpoint.pt: fills what the DeeR checkpoint lacks (optional)")
    parser.add_argument('--output', required=True, type=Path, help='new checkpoint directory to write')
    parser.add_argument('--config', default=None,
                        help='DeeR-VLA config name or file the checkpoint settings apply to '
                             '(default: deer-vla-3b or deer-vla-9b by the checkpoint\'s LLM width)')
    parser.add_argument('--threshold-type', choices=sorted(THRESHOLD_TYPES), default='L2',
                        help="upstream evaluation's --threshold_type the cached values were computed with")
    parser.add_argument('--exit-ratio', type=float, default=None,
                        help="also store upstream's thresholds for this exit_ratio q (README: D 0.8, ABC 1.5, "
                             'ABCD 1.0) at the average budget they realise')


def run(args: argparse.Namespace) -> int:
    from deer_ros.model.configuration_deer import ConfigError
    from deer_ros.model.configuration_deer_vla import load_deer_vla_config
    from deer_ros.model.upstream_checkpoint import import_upstream
    from deer_ros.model.upstream_files import UpstreamImportError

    try:
        config = load_deer_vla_config(args.config) if args.config else None
        result = import_upstream(args.checkpoint, args.mpt, args.clip, args.output, openflamingo=args.openflamingo,
                                 config=config)
    except (UpstreamImportError, ConfigError) as error:
        print(f'deer-ros import-upstream: {error}', file=sys.stderr)
        return 2
    settings = ', '.join(f'{key} {value}' for key, value in sorted(result.hyperparameters.items()))
    print(f'imported {args.checkpoint} as {result.config.name}: {result.config.kept_layers} decoder layers, exits '
          f'after {list(result.config.exit_layers)}')
    print(f'  settings read: {settings or "none (a bare state dict): upstream defaults"}')
    print('\n'.join(result.report.lines()))
    _write_budget_files(args, result)
    print(f'wrote {result.output}; run it with: ros2 run deer_ros policy_node --ros-args '
          f'-p checkpoint:={result.output.resolve()}')
    return 0


def _write_budget_files(args: argparse.Namespace, result) -> None:
    """``calibration.npz`` from the cached values, and upstream's thresholds for ``--exit-ratio``."""
    from deer_ros.budget.calibration import calibration_path, checkpoint_sha256
    from deer_ros.budget.caps import from_gflops
    from deer_ros.budget.refined import refined_path, save_refined
    from deer_ros.budget.solver import BudgetError, feasible_range
    from deer_ros.budget.upstream_values import calibration_from_upstream, upstream_refined_entry
    from deer_ros.model.flops import cost_table_for

    if result.values is None:
        print('  no cached values in the checkpoint: average budgets use synthetic calibration until '
              '`deer-ros calibrate` is run on CALVIN validation data')
        return
    values = result.values.double().numpy()
    try:
        calibration = calibration_from_upstream(
            values, result.config.exit_layers, args.threshold_type,
            {'checkpoint_sha256': checkpoint_sha256(result.output), 'upstream_checkpoint': result.checkpoint_name})
    except ValueError as error:
        print(f'  warning: cached values not imported ({error}); run `deer-ros calibrate`')
        return
    calibration.save(calibration_path(result.output))
    table = cost_table_for(result.config)
    low, high = feasible_range(table.llm_gflops)
    print(f'  calibration.npz: {calibration.num_samples} samples from the cached values ({calibration.metric}); '
          f'average LLM budget range [{low:.4g}, {high:.4g}] GFLOPs = [{from_gflops(low, "gmacs"):.4g}, '
          f'{from_gflops(high, "gmacs"):.4g}] GMACs')
    if args.exit_ratio is None:
        return
    first_exit_off = result.config.name == 'deer-vla-9b' or 'mpt_9b' in result.checkpoint_name
    try:
        entry = upstream_refined_entry(values, table, calibration, args.exit_ratio, first_exit_off=first_exit_off)
    except (BudgetError, ValueError) as error:
        print(f'  warning: upstream thresholds for exit_ratio {args.exit_ratio} not stored: {error} (upstream\'s rule '
              'may stop at the first exit, deer_ros\'s budgets start at the second: try a larger --exit-ratio)')
        return
    save_refined(refined_path(result.output), entry)
    print(f'  upstream thresholds for exit_ratio {args.exit_ratio}: {", ".join(f"{t:.4g}" for t in entry.thresholds)}'
          f'; they realise {entry.average_cost:.4g} LLM GFLOPs on the values: request budget.avg_gflops '
          f'{entry.avg_gflops:g} to run exactly them (upstream\'s first-exit rule included)')
