"""The ``deer-ros`` command: one entry point, one module per subcommand (the only place argparse is used).

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and
``run(args) -> int``; modules are imported only when their subcommand runs, so
``deer-ros --help`` stays fast and a broken optional dependency of one
subcommand cannot break the others.
"""
from __future__ import annotations

import argparse
import importlib
import signal
import sys
import threading

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    'demo': ('deer_ros.cli.demo', 'Run the early-exit policy and report exits, GFLOPs and latency.'),
    'collect': ('deer_ros.cli.collect', 'Record scripted-expert demonstrations in CALVIN format.'),
    'evaluate': ('deer_ros.cli.evaluate', 'Run CALVIN-style 5-instruction chain evaluation.'),
    'train': ('deer_ros.cli.train', 'Multi-exit training on CALVIN-format data.'),
    'calibrate': ('deer_ros.cli.calibrate', 'Collect consistency values for budget solving.'),
    'refine': ('deer_ros.cli.refine', 'Refine a budget\'s thresholds by Bayesian optimisation on simulator chains.'),
    'import-upstream': ('deer_ros.cli.import_upstream', 'Import a published DeeR-VLA checkpoint (.pth) as a '
                        'deer_ros checkpoint directory.'),
    'cost': ('deer_ros.cli.cost', 'Per-exit compute (GFLOPs or GMACs) and memory of a model config or checkpoint.'),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='deer-ros', description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest='command', required=True, metavar='COMMAND')
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def _terminate(signum: int, frame: object) -> None:
    """SIGTERM ends a command as Ctrl-C does: collections write their index files, evaluations and trainings keep
    what they finished. A job started in the background of a script ignores SIGINT, so ``kill`` (SIGTERM) is
    the only way to stop it, and without this it would lose a collection's whole index."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the process at once
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    if threading.current_thread() is threading.main_thread():  # signal handlers can only be set there
        signal.signal(signal.SIGTERM, _terminate)
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in SUBCOMMANDS:
        build_parser().parse_args(argv or ['--help'])
        return 2
    name, rest = argv[0], argv[1:]
    module_name, help_text = SUBCOMMANDS[name]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f'deer-ros {name}', description=help_text)
    module.add_arguments(parser)
    return int(module.run(parser.parse_args(rest)) or 0)

