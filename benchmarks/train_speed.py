"""Training throughput: optimizer steps/s and windows/s of each stage, data loading excluded.

Times :class:`deer_ros.train.step.StageStep` (the update the training loop
runs) plus the random-shift augmentation on in-memory random batches, so the
numbers measure compute only; disk decoding is overlapped by DataLoader
workers in real runs. A config with a frozen vision trunk (``tiny-efficientnet``)
trains on cached trunk features, as ``deer-ros train`` does (``--no-cache``: the
trunk runs on the images at every step).

    .venv/bin/python benchmarks/train_speed.py --configs tiny tiny-efficientnet --batch-size 4 --window 12 \
        --steps 10 --threads 2

Prints a Markdown table (docs/training.md) and writes JSON with --output.
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from deer_ros.model import load_model
from deer_ros.model.modeling_deer import trunk_features
from deer_ros.model.modeling_deer_training import STAGES, MultiExitObjective
from deer_ros.model.tokenization import InstructionEncoder
from deer_ros.train.augment import augment_batch
from deer_ros.train.config import TrainConfig
from deer_ros.train.step import StageStep


def random_batch(objective: MultiExitObjective, windows: int, steps: int, device: torch.device,
                 cached: bool) -> dict:
    """Random camera images, or (``cached``) the frozen trunk's features of random images, as the cache holds."""
    model = objective.model
    ids, mask = InstructionEncoder(model.config.decoder)(['push the blue block to the left'] * windows)
    images = {'static': torch.randint(0, 256, (windows, steps, 200, 200, 3), dtype=torch.uint8),
              'gripper': torch.randint(0, 256, (windows, steps, 84, 84, 3), dtype=torch.uint8)}
    if cached:
        visual = {f'features_{cam}': trunk_features(model.config.vision, frames.flatten(0, 1), cam)
                  .unflatten(0, (windows, steps)) for cam, frames in images.items()}
    else:
        visual = {f'rgb_{cam}': frames for cam, frames in images.items()}
    batch = {**visual, 'pose': torch.rand(windows, steps, 6) * 2 - 1,
             'gripper': torch.randint(0, 2, (windows, steps)).float(), 'text_input': ids, 'text_mask': mask}
    if objective.model.config.use_proprio:
        batch['robot_obs'] = torch.randn(windows, steps, 15)
    return {key: value.to(device) for key, value in batch.items()}


def measure(config_name: str, batch_size: int, window: int, steps: int, warmup: int, device: torch.device,
            precision: str, cached: bool) -> list[dict]:
    torch.manual_seed(0)
    objective = MultiExitObjective(load_model(config_name, device=device)).to(device)
    cached = cached and objective.model.frozen_vision
    train_config = TrainConfig(data='-', output='-', model=config_name, batch_size=batch_size, window=window,
                               precision=precision, warmup_steps=0)
    batch = random_batch(objective, batch_size, window, device, cached)
    generator = torch.Generator().manual_seed(0)
    rows = []
    for stage in STAGES:
        objective.set_stage(stage)
        update = StageStep(objective, train_config, warmup + steps, device, generator)
        for step in range(warmup + steps):
            if step == warmup:
                if device.type == 'cuda':
                    torch.cuda.synchronize()
                started = time.perf_counter()
            update(augment_batch(batch, train_config.static_pad, train_config.gripper_pad, generator))
        if device.type == 'cuda':
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
        trainable = sum(p.numel() for p in update.parameters)
        rows.append({'config': config_name, 'stage': stage, 'device': str(device),
                     'vision_input': 'cached features' if cached else 'images',
                     'precision': precision if update.amp_dtype else 'fp32',
                     'batch_windows': batch_size, 'window': window, 'trainable_m': trainable / 1e6,
                     'steps_per_s': steps / seconds, 'windows_per_s': steps * batch_size / seconds,
                     'frames_per_s': steps * batch_size * window / seconds})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--configs', nargs='+', default=['tiny'])
    parser.add_argument('--batch-size', type=int, default=4, help='windows per step')
    parser.add_argument('--window', type=int, default=12)
    parser.add_argument('--steps', type=int, default=10)
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--precision', default='bf16', help='autocast dtype on GPU (ignored on CPU)')
    parser.add_argument('--no-cache', dest='cached', action='store_false',
                        help='frozen-trunk configs run the trunk on images every step, not from cached features')
    parser.add_argument('--output', help='write the rows as JSON here')
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows = [row for name in args.configs
            for row in measure(name, args.batch_size, args.window, args.steps, args.warmup, device, args.precision,
                               args.cached)]
    print(f'device={device} threads={args.threads} torch={torch.__version__}\n')
    print('| config | vision input | stage | batch (windows x frames) | trainable M | steps/s | windows/s | frames/s |')
    print('|---|---|---|---|---|---|---|---|')
    for r in rows:
        print(f"| {r['config']} | {r['vision_input']} | {r['stage']} | {r['batch_windows']} x {r['window']} | "
              f"{r['trainable_m']:.2f} | "
              f"{r['steps_per_s']:.3f} | {r['windows_per_s']:.2f} | {r['frames_per_s']:.1f} |")
    if args.output:
        with open(args.output, 'w') as handle:
            json.dump(rows, handle, indent=2)


if __name__ == '__main__':
    main()
