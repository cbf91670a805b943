"""pip-installable view of deer_ros (the library and its console scripts).

The ROS 2 build is ament_cmake (see CMakeLists.txt): rosidl generates the
``deer_ros.msg`` interfaces and ament_cmake_python installs this package.
This file lets the library be used outside colcon (``pip install -e .``).
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
    data_files=[
        ('share/deer_ros/config', ['config/deer.yaml']),
        ('share/deer_ros/launch', ['launch/policy.launch.py', 'launch/benchmark.launch.py']),
    ],
    extras_require={'test': ['pytest']},
    entry_points={
        'console_scripts': [
            'deer-ros = deer_ros.cli:main',
            'policy_node = deer_ros.nodes.policy_node:main',
            'calvin_bridge_node = deer_ros.nodes.calvin_bridge_node:main',
        ],
    },
)
