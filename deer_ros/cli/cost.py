"""``deer-ros cost``: per-exit compute and memory of a model config or checkpoint, in GFLOPs or the paper's GMACs.

Per exit: the cumulative decoder (LLM) cost of a step that stops there, the
vision cost (both cameras, paid every step), the head cost (every checked
exit's head pass plus the per-step history work), their total, and the
parameter memory resident when the model is capped at that exit (LLM only,
and everything). ``--units gmacs`` counts one multiply-add as one MAC, the
unit of the DeeR paper and its code; deer_ros's GFLOPs are twice that.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from deer_ros.budget.caps import COST_UNITS, from_gflops

MIB = 2 ** 20


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('source', metavar='CONFIG_OR_CHECKPOINT',
                        help='shipped config name (deer-vla-3b, deer-vla-9b, tiny, ...), config file, or checkpoint '
                             'directory')
    parser.add_argument('--units', choices=COST_UNITS, default='gflops',
                        help='gflops: 2 per multiply-add (deer_ros\'s budgets); gmacs: 1 per multiply-add (the paper)')
    parser.add_argument('--prompt-tokens', type=int, default=None,
                        help='text tokens the decoder reads (default: the most it reads, decoder.max_length: the '
                             'bound budgets are solved with; the paper\'s 1.3 GMACs per layer is a 13-token prompt)')
    parser.add_argument('--num-exits', type=int, default=None,
                        help='count with this many exits, e.g. 12 for all 24 layers of deer-vla-3b')


def run(args: argparse.Namespace) -> int:
    from deer_ros.model.configuration_deer import ConfigError
    from deer_ros.model.cost_report import cost_report
    from deer_ros.model.family import checkpoint_config, load_config
    from deer_ros.model.modeling_deer import CheckpointError

    if args.prompt_tokens is not None and args.prompt_tokens < 1:
        print('deer-ros cost: --prompt-tokens must be >= 1', file=sys.stderr)
        return 2
    try:
        config = checkpoint_config(args.source) if Path(args.source).is_dir() else load_config(args.source)
        if args.num_exits is not None:
            config = dataclasses.replace(config, num_exits=args.num_exits)
        report = cost_report(config, args.prompt_tokens)
    except (ConfigError, CheckpointError) as error:
        print(f'deer-ros cost: {error}', file=sys.stderr)
        return 2
    unit = 'GMACs' if args.units == 'gmacs' else 'GFLOPs'

    def cost(gflops: float) -> float:
        return from_gflops(gflops, args.units)

    print(f'{report.name}: cost of one control step (batch 1) in {unit} (1 multiply-add = 1 MAC = 2 FLOPs), '
          f'{report.text_tokens} prompt tokens')
    print(f'LLM per decoder layer: {cost(report.llm_gflops_per_layer):.4g} {unit} (mean of {report.rows[-1].layers})')
    print(f'{"exit":>4} {"layers":>6} {"LLM cum":>10} {"vision":>10} {"heads":>8} {"total":>10} {"LLM MiB":>9} '
          f'{"resident MiB":>12}')
    for row in report.rows:
        print(f'{row.exit_index + 1:>4} {row.layers:>6} {cost(row.llm_gflops):>10.4g} {cost(row.vision_gflops):>10.4g} '
              f'{cost(row.head_gflops):>8.3g} {cost(row.total_gflops):>10.4g} {row.llm_bytes / MIB:>9.1f} '
              f'{row.resident_bytes / MIB:>12.1f}')
    print('exit: 1-based as in ExitStats; LLM cum: decoder up to that exit; heads: every checked exit\'s head pass '
          'and the per-step history work; MiB: fp32 parameters resident with the model capped at that exit')
    return 0
