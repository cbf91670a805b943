"""``deer-ros train``: two-stage multi-exit training on a CALVIN-format dataset.

Single process: ``deer-ros train --data DATA --output runs/x``. Several GPUs
or nodes: ``torchrun --nproc-per-node 8 -m deer_ros.cli train ...`` (each
process takes its share of every epoch; ``--batch-size`` is per process).
"""
from __future__ import annotations

import argparse
import dataclasses

from deer_ros.budget.exit_criterion import METRICS
from deer_ros.model.parameter_groups import GROUPS
from deer_ros.train.config import PRECISIONS, SCHEDULES, TrainConfig

_HELP = {
    'data': 'dataset roots holding training/ and validation/ (CALVIN layout); several roots are concatenated '
            '(e.g. fresh-start demos plus chained ones)',
    'output': 'run directory: policy/, last/, metrics.csv',
    'model': 'config name (tiny, smollm2), config file, or checkpoint directory to start from',
    'add_proprio': 'start from --model with proprioception added (use_proprio): every weight kept, the new '
                   'robot-state token random, its skip to the exit features zero',
    'sentence_encoder': 'start from --model with instructions read by the frozen all-MiniLM-L6-v2 sentence encoder '
                        '(decoder.tokenizer minilm): token embeddings dropped, a new projection of the encoder states, '
                        'every other weight kept',
    'exit_interval': 'start from --model with an exit every N decoder layers over the same kept layers (0: keep the '
                     "model's); every weight kept, the heads learn the new exits' features",
    'window': 'frames per training window',
    'stride': 'frames between training-window starts',
    'batch_size': 'windows per process and step',
    'joint_steps': 'optimizer steps of the joint stage (backbone + all heads)',
    'head_steps': 'optimizer steps of the heads stage (shared head only, backbone frozen)',
    'lr': 'backbone learning rate in the joint stage',
    'head_lr_scale': 'heads learning rate = lr * this, in the joint stage',
    'head_stage_lr': 'shared-head learning rate in the heads stage',
    'state_weight': 'weight of an auxiliary robot-state regression from the camera tokens in the joint stage '
                    '(not upstream; helps a vision stack trained from scratch); 0 = off',
    'task_weight': 'weight of an auxiliary task classification (CALVIN task names) from the exit features in the '
                   'joint stage (not upstream; helps a decoder trained from scratch tell instructions apart); 0 = off',
    'freeze': f'parameter groups frozen in the joint stage ({", ".join(GROUPS)}); '
              'default: a pretrained decoder and its embeddings when the model config says freeze_pretrained; '
              'a bare --freeze trains everything',
    'precision': 'autocast dtype on GPU (CPU always runs fp32)',
    'device': 'auto, cpu, cuda or cuda:N',
    'threads': 'torch CPU threads per process (0: torch default); 1 is fastest on a busy machine',
    'val_windows': 'validation windows scored every --eval-every steps (0: none)',
    'snapshot_every': 'every N global steps, a model-only copy in OUTPUT/snapshots/step_N (0: none): '
                      'validation loss does not rank checkpoints by closed-loop success, evaluate the copies instead',
    'calibration_windows': 'validation windows for the calibration file (0: skip calibration)',
    'feature_shift': 'random shift of cached vision-feature grids, in grid cells (0: none); the image shifts '
                     '--static-pad/--gripper-pad apply only without the cache',
    'cache_workers': 'processes that build missing feature caches (one dataset split each)',
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One option per :class:`TrainConfig` field (``--joint-steps`` for ``joint_steps``), plus ``--resume``."""
    for field in dataclasses.fields(TrainConfig):
        flag = '--' + field.name.replace('_', '-')
        help_text = _HELP.get(field.name)
        if field.name == 'data':
            parser.add_argument(flag, required=True, nargs='+', help=help_text)
        elif field.name == 'output':
            parser.add_argument(flag, required=True, help=help_text)
        elif field.name == 'freeze':
            parser.add_argument(flag, nargs='*', choices=sorted(GROUPS), default=None, help=help_text)
        elif field.name in ('add_proprio', 'sentence_encoder'):
            parser.add_argument(flag, action='store_true', help=help_text)
        elif field.name == 'feature_cache':
            parser.add_argument('--no-feature-cache', dest='feature_cache', action='store_false',
                                help='run a frozen vision trunk on the images at every step instead of reading '
                                     'its cached features')
        elif field.name == 'progress':
            parser.add_argument('--no-progress', dest='progress', action='store_false', help='no progress bars')
        else:
            choices = {'precision': PRECISIONS, 'schedule': SCHEDULES,
                       'calibration_metric': sorted(METRICS)}.get(field.name)
            parser.add_argument(flag, type=type(field.default), default=field.default, choices=choices,
                                help=f'{help_text + "; " if help_text else ""}default: %(default)s')
    parser.add_argument('--resume', action='store_true', help='continue from OUTPUT/last if it exists')


def run(args: argparse.Namespace) -> int:
    from deer_ros.train.trainer import train  # torch and the model load only when training runs

    options = {field.name: getattr(args, field.name) for field in dataclasses.fields(TrainConfig)}
    result = train(TrainConfig(**options), resume=args.resume)
    if result.rank != 0:
        return 0
    print(f'trained {result.steps} steps in {result.seconds / 60:.1f} min -> {result.policy_dir}')
    if result.calibration_file is not None:
        print(f'calibration: {result.calibration_file}')
    return 0
