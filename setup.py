"""pip-installable view of deer_ros: the library and its console scripts.

The ROS 2 build is ament_cmake (CMakeLists.txt): rosidl generates the
``deer_ros.msg`` interfaces, and colcon installs config/, launch/ and the
``ros2 run`` scripts into share/ and lib/. ./setup.sh installs this file
editable (``pip install -e .``) next to a venv build of the interfaces; see
docs/install.md for why the two halves meet in ``deer_ros/__init__.py``.

No ``install_requires``: the pinned dependency set is requirements/*.txt,
and resolving e.g. ``torch`` from here could pull a CUDA build. No
``data_files`` either: colcon owns share/deer_ros, and a second owner would
let a pip reinstall delete files that colcon installed.
"""
from setuptools import find_packages, setup

setup(
    name='deer_ros',
    version='0.1.0',
    description='Dynamic early-exit VLA policy for ROS 2 robot arms under live compute budgets',
    license='Apache-2.0',
    packages=find_packages(include=['deer_ros', 'deer_ros.*']),
    package_data={'deer_ros': ['assets/**/*', 'pretrained/**/*']},
    include_package_data=True,
    python_requires='>=3.10',
    # extras_require, not tests_require: setuptools>=80 drops tests_require, and colcon
    # then falls back to a unittest run that finds 0 tests.
    extras_require={'test': ['pytest']},
    entry_points={
        'console_scripts': [
            'deer-ros = deer_ros.cli:main',
            'policy_node = deer_ros.nodes.policy_node:main',
            'managed_policy_node = deer_ros.nodes.managed_policy_node:main',
            'calvin_bridge_node = deer_ros.nodes.calvin_bridge_node:main',
        ],
    },
)
