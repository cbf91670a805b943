"""Does the policy understand the evaluation wording? Open-loop action loss per task, demo wording vs evaluation phrase.

CALVIN's protocol (and ours, ``deer_ros.benchmark.language``) hands the policy one fixed
instruction per task that no demo used. A closed-loop failure can therefore be
language, not control. This probe replays demo windows twice through the shared
head at one exit: once with the paraphrase the demo was recorded with, once with
the task's evaluation phrase; same frames, same weights. A ratio near 1 means the
evaluation phrase is read like the training wording; a ratio of several means the
policy acts as if asked for something else.

    .venv/bin/python benchmarks/instruction_probe.py --source deer_ros/pretrained/tiny \
        --data runs/default_policy/data --split training --stride 97 --output runs/instruction_probe.json

Prints one row per task (windows, loss with the demo's wording, with the evaluation
phrase, their ratio) and writes JSON with --output.
"""
from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import torch

from deer_ros.benchmark.language import TASK_LANGUAGE
from deer_ros.model import DeerVLA, load_model
from deer_ros.model.modeling_deer_training import UNKNOWN_TASK, MultiExitObjective, action_loss
from deer_ros.model.tokenization import InstructionEncoder
from deer_ros.train.data import TASK_NAMES, WindowCollator, open_split


@torch.no_grad()
def probe(model: DeerVLA, data: str, split: str, stride: int, exit_index: int = -1,
          batch_size: int = 8) -> dict[str, dict[str, float]]:
    """Per task: ``windows``, mean loss with the demo's wording (``demo``) and the evaluation phrase (``evaluation``).

    Windows are ``head.history_window`` frames long: the history the policy acts on at run time.
    """
    objective = MultiExitObjective(model).eval()  # the model in it too
    collate = WindowCollator(InstructionEncoder(model.config.decoder))
    windows = open_split([data], split, model.config.head.history_window, stride, robot_obs=model.config.use_proprio)
    if windows is None:
        raise FileNotFoundError(f'{data} has no {split}/ split')
    sums: dict[str, dict[str, float]] = defaultdict(lambda: {'windows': 0, 'demo': 0.0, 'evaluation': 0.0})
    for start in range(0, len(windows), batch_size):
        samples = [windows[i] for i in range(start, min(start + batch_size, len(windows)))]
        tasks = [TASK_NAMES[int(s['task'])] if int(s['task']) != UNKNOWN_TASK else None for s in samples]
        for key, texts in (('demo', [s['instruction'] for s in samples]),
                           ('evaluation', [TASK_LANGUAGE[t].evaluation if t else s['instruction']
                                           for t, s in zip(tasks, samples)])):
            batch = collate([{**s, 'instruction': text} for s, text in zip(samples, texts)])
            _, features = objective.encode(batch)
            for row, task in enumerate(tasks):
                if task is None:
                    continue
                output = model.action_head(features[row:row + 1, :, exit_index])
                sums[task][key] += float(action_loss(output, batch['pose'][row:row + 1], batch['gripper'][row:row + 1],
                                                     objective.gripper_weight))
                if key == 'demo':
                    sums[task]['windows'] += 1
    return {task: {'windows': s['windows'], 'demo': s['demo'] / s['windows'],
                   'evaluation': s['evaluation'] / s['windows'], 'ratio': s['evaluation'] / s['demo']}
            for task, s in sorted(sums.items())}


def format_table(rows: dict[str, dict[str, float]]) -> str:
    lines = ['| task | windows | loss, demo wording | loss, evaluation phrase | ratio |', '|---|---|---|---|---|']
    lines += [f"| {task} | {r['windows']} | {r['demo']:.4f} | {r['evaluation']:.4f} | {r['ratio']:.2f} |"
              for task, r in rows.items()]
    return '\n'.join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--source', default='deer_ros/pretrained/tiny', help='policy directory or config name')
    parser.add_argument('--data', required=True, help='CALVIN-format dataset root')
    parser.add_argument('--split', default='validation', choices=('training', 'validation'))
    parser.add_argument('--stride', type=int, default=12, help='frames between window starts')
    parser.add_argument('--exit', type=int, default=0, help='exit (1-based) whose features the head reads; 0: last')
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--output', type=Path, default=None, help='write the rows as JSON here')
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = probe(load_model(args.source), args.data, args.split, args.stride, args.exit - 1 if args.exit else -1)
    print(format_table(rows))
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps({'settings': {k: str(v) for k, v in vars(args).items()}, 'rows': rows},
                                          indent=1))


if __name__ == '__main__':
    main()
