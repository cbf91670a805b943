"""Launch files: checked statically everywhere (ROS launch is not on PyPI), loaded where launch_ros exists."""
from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest
import yaml

from deer_ros.nodes import calvin_bridge_node, managed_policy_node, policy_node

ROOT = Path(__file__).resolve().parents[2]
LAUNCH_FILES = sorted((ROOT / 'launch').glob('*.launch.py'))
NODES = {'policy_node': ('deer_policy', policy_node.PARAMETERS),
         'managed_policy_node': ('deer_policy', managed_policy_node.PARAMETERS),
         'calvin_bridge_node': ('calvin_bridge', calvin_bridge_node.PARAMETERS)}


def _calls(tree: ast.AST, name: str) -> list[ast.Call]:
    return [node for node in ast.walk(tree) if isinstance(node, ast.Call)
            and getattr(node.func, 'id', getattr(node.func, 'attr', None)) == name]


def _keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((keyword.value for keyword in call.keywords if keyword.arg == name), None)


def _executables(call: ast.Call) -> set[str]:
    """What a ``Node(executable=...)`` may start: a constant, or both sides of ``a if cond else b``."""
    executable = _keyword(call, 'executable')
    branches = [executable.body, executable.orelse] if isinstance(executable, ast.IfExp) else [executable]
    return {branch.value for branch in branches}


def _parameter_names(call: ast.Call) -> set[str]:
    """String keys of the dict literals given to ``parameters=``."""
    parameters = _keyword(call, 'parameters')
    return {key.value for node in ast.walk(parameters) if isinstance(node, ast.Dict)
            for key in node.keys if isinstance(key, ast.Constant)} if parameters else set()


def _declared(specs) -> set[str]:
    return {spec.name for spec in specs} | {'use_sim_time'}


@pytest.mark.parametrize('path', LAUNCH_FILES, ids=lambda path: path.name)
def test_launch_file_starts_existing_executables_with_declared_parameters(path):
    tree = ast.parse(path.read_text(), str(path))
    assert any(isinstance(n, ast.FunctionDef) and n.name == 'generate_launch_description' for n in tree.body)
    scripts = {p.name for p in (ROOT / 'scripts').iterdir()}
    for call in _calls(tree, 'Node'):
        for executable in _executables(call):
            assert executable in NODES and executable in scripts, executable
            node_name, specs = NODES[executable]
            assert _keyword(call, 'name').value == node_name  # the params file is keyed by this name
            assert _parameter_names(call) <= _declared(specs)


def test_policy_launch_overrides_name_policy_parameters():
    tree = ast.parse((ROOT / 'launch' / 'policy.launch.py').read_text())
    overrides = next(node.value for node in tree.body if isinstance(node, ast.Assign)
                     and node.targets[0].id == 'POLICY_OVERRIDES')
    assert {value.elts[0].value for value in overrides.values} <= _declared(policy_node.PARAMETERS)


def _flat_values(tree: dict, prefix: str = '') -> dict[str, object]:
    """Nested YAML keys joined with dots, as ROS names the parameters."""
    values: dict[str, object] = {}
    for key, value in tree.items():
        values.update(_flat_values(value, f'{prefix}{key}.') if isinstance(value, dict) else {prefix + key: value})
    return values


def test_params_file_only_overrides_declared_parameters():
    """config/deer.yaml sets declared parameters (a typo fails here, not silently on a robot) to non-defaults."""
    config = yaml.safe_load((ROOT / 'config' / 'deer.yaml').read_text())
    nodes = dict(NODES.values())
    assert set(config) <= set(nodes)
    for node_name, section in config.items():
        defaults = {spec.name: spec.default for spec in nodes[node_name]}
        values = _flat_values(section['ros__parameters'])
        assert set(values) <= set(defaults), f'{node_name}: undeclared {set(values) - set(defaults)}'
        assert all(value != defaults[name] for name, value in values.items()), f'{node_name}: a default repeated'


@pytest.mark.parametrize('path', LAUNCH_FILES, ids=lambda path: path.name)
def test_launch_file_loads_with_ros_launch(path):
    pytest.importorskip('launch_ros', reason='ROS 2 launch is not on PyPI; needs a system ROS 2 install')
    spec = importlib.util.spec_from_file_location(path.stem.replace('.', '_'), path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    from launch import LaunchDescription
    assert isinstance(module.generate_launch_description(), LaunchDescription)


def test_every_parameter_is_documented():
    doc = (ROOT / 'docs' / 'nodes.md').read_text()
    missing = [spec.name for _, specs in NODES.values() for spec in specs if f'`{spec.name}`' not in doc]
    assert not missing


def _declared_arguments(tree: ast.AST) -> set[str]:
    return {call.args[0].value for call in _calls(tree, 'DeclareLaunchArgument')
            if isinstance(call.args[0], ast.Constant)}


def test_policy_launch_gives_free_play_an_instruction():
    """``sim:=true`` alone did nothing visible (an empty instruction): ``instruction:=`` reaches the bridge."""
    tree = ast.parse((ROOT / 'launch' / 'policy.launch.py').read_text())
    assert 'instruction' in _declared_arguments(tree)
    overrides = next(node.value for node in ast.walk(tree) if isinstance(node, ast.Assign)
                     and getattr(node.targets[0], 'id', None) == 'bridge_overrides')
    assert {key.value for key in overrides.body.keys} == {'instruction'} <= _declared(calvin_bridge_node.PARAMETERS)
    [bridge] = [call for call in _calls(tree, 'Node') if _executables(call) == {'calvin_bridge_node'}]
    assert 'bridge_overrides' in {getattr(item, 'id', None) for item in _keyword(bridge, 'parameters').elts}
    assert 'ros2 topic pub --once --qos-durability transient_local' in (ROOT / 'docs' / 'nodes.md').read_text()


def test_benchmark_launch_keeps_results_and_resumes():
    tree = ast.parse((ROOT / 'launch' / 'benchmark.launch.py').read_text())
    assert {'results_file', 'resume'} <= _declared_arguments(tree)
    [bridge] = _calls(tree, 'Node')
    assert {'results_file', 'resume', 'shutdown_after_evaluation'} <= _parameter_names(bridge)


def test_policy_launch_managed_selects_the_lifecycle_node():
    """``managed:=true`` starts the lifecycle variant under the same name; the plain node stays the default."""
    text = (ROOT / 'launch' / 'policy.launch.py').read_text()
    tree = ast.parse(text)
    assert 'managed' in _declared_arguments(tree)
    [default] = [call for call in _calls(tree, 'DeclareLaunchArgument') if call.args[0].value == 'managed']
    assert _keyword(default, 'default_value').value == 'false'
    [policy] = [call for call in _calls(tree, 'Node') if _keyword(call, 'name').value == 'deer_policy']
    choice = _keyword(policy, 'executable')
    assert isinstance(choice, ast.IfExp) and choice.orelse.value == 'policy_node'
    assert choice.body.value == 'managed_policy_node' and choice.test.id == 'managed'
    setup = (ROOT / 'setup.py').read_text()
    assert "'managed_policy_node = deer_ros.nodes.managed_policy_node:main'" in setup
    assert 'scripts/managed_policy_node' in (ROOT / 'CMakeLists.txt').read_text()
