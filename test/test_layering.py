"""The package's layers, checked on the source: no package imports one above it, no import cycles between packages.

CONTRIBUTING.md's architecture section states these rules; this test is what
keeps them true. Imports are read with ``ast`` (module level and inside
functions alike), so a lazy import cannot hide a cycle.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / 'deer_ros'

# Which deer_ros packages each package may import (besides itself). Top-level modules
# (calvin_layout, resources) and the generated msg package are open to everyone.
ALLOWED: dict[str, set[str]] = {
    'sim': set(),
    'benchmark': {'sim'},
    'expert': {'sim', 'benchmark'},
    'model': set(),
    'budget': {'model', 'benchmark'},
    'policy': {'model', 'budget', 'benchmark'},
    'train': {'model', 'budget', 'benchmark'},
    'nodes': {'model', 'budget', 'policy', 'benchmark', 'sim', 'msg'},
    'cli': {'sim', 'benchmark', 'expert', 'model', 'budget', 'policy', 'train', 'nodes', 'msg'},
}
SHARED_MODULES = {'calvin_layout', 'resources'}


def _package_of(module: str) -> str | None:
    parts = module.split('.')
    return parts[1] if parts[0] == 'deer_ros' and len(parts) > 1 else None


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f'{node.module}.{alias.name}' for alias in node.names if node.module == 'deer_ros')
    return found


def _package_imports() -> dict[str, dict[str, set[str]]]:
    """package -> imported package -> the files that import it."""
    graph: dict[str, dict[str, set[str]]] = {name: {} for name in ALLOWED}
    for name in ALLOWED:
        for path in (PACKAGE / name).rglob('*.py'):
            for module in _imports(path):
                target = _package_of(module)
                if target is None or target == name or target in SHARED_MODULES:
                    continue
                graph[name].setdefault(target, set()).add(str(path.relative_to(PACKAGE.parent)))
    return graph


@pytest.mark.parametrize('package', sorted(ALLOWED))
def test_a_package_imports_only_the_layers_below_it(package: str) -> None:
    forbidden = {target: sorted(files) for target, files in _package_imports()[package].items()
                 if target not in ALLOWED[package]}
    assert not forbidden, f'deer_ros.{package} may not import {sorted(forbidden)}: {forbidden}'


def test_the_allowed_imports_have_no_cycle() -> None:
    visiting: list[str] = []

    def visit(name: str) -> None:
        assert name not in visiting, f'import cycle: {" -> ".join(visiting + [name])}'
        visiting.append(name)
        for target in ALLOWED.get(name, ()):
            visit(target)
        visiting.pop()

    for name in ALLOWED:
        visit(name)


def test_only_the_command_layer_parses_arguments() -> None:
    users = sorted(str(path.relative_to(PACKAGE.parent)) for path in PACKAGE.rglob('*.py')
                   if 'argparse' in _imports(path) and path.parent.name != 'cli')
    assert not users, f'argparse outside deer_ros/cli: {users}'


def test_the_layout_constants_are_defined_once() -> None:
    """CALVIN's layout lives in deer_ros/calvin_layout.py; a second definition would drift."""
    names = {'STATIC_CAMERA_SHAPE', 'GRIPPER_CAMERA_SHAPE', 'ROBOT_OBS_DIM', 'POSE_DIM', 'POS_SCALE', 'ORN_SCALE',
             'GRIPPER_OPEN', 'GRIPPER_CLOSE', 'EP_LEN', 'HOME_ROBOT_OBS', 'HOME_TCP_POSE', 'CONTROL_HZ'}
    redefined = []
    for path in PACKAGE.rglob('*.py'):
        if path.name == 'calvin_layout.py':
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Assign):
                redefined += [f'{path.name}: {t.id}' for t in node.targets if isinstance(t, ast.Name) and t.id in names]
    assert not redefined, redefined
