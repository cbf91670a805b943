"""Evaluate the DeeR policy through ROS: the CALVIN bridge runs N chains against the policy node, then all exits.

    ros2 launch deer_ros benchmark.launch.py num_chains:=20 budget_avg_gflops:=0.07 results_file:=/tmp/eval.jsonl
    ros2 topic echo /evaluation/summary   # JSON: avg successful length, success at 1..5, avg/peak GFLOPs
    ros2 launch deer_ros benchmark.launch.py num_chains:=20 budget_avg_gflops:=0.07 results_file:=/tmp/eval.jsonl \
        resume:=true                      # after a crash: the finished chains are kept, the others run

The policy comes from policy.launch.py (same arguments); the bridge steps the
simulator in lock-step with it (see deer_ros/nodes/bridge.py), so results do
not depend on inference speed. Each chain is appended to ``results_file`` as it
ends (empty: a new file under $ROS_HOME/deer_ros/evaluations); the launch ends
when the bridge does, and the bridge's exit code is 0 only if every chain ran
to its end.
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, EmitEvent, IncludeLaunchDescription, RegisterEventHandler
from launch.event_handlers import OnProcessExit
from launch.events import Shutdown
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare

# Forwarded unchanged to policy.launch.py (empty = the params file's value).
POLICY_ARGUMENTS = ('budget_avg_gflops', 'budget_peak_gflops', 'budget_max_memory_mb', 'budget_track_average',
                    'checkpoint', 'model_config', 'device')


def generate_launch_description() -> LaunchDescription:
    share = FindPackageShare('deer_ros')
    params_file = LaunchConfiguration('params_file')
    bridge = Node(package='deer_ros', executable='calvin_bridge_node', name='calvin_bridge', output='screen',
                  parameters=[params_file, {
                      'evaluate_on_start': True, 'shutdown_after_evaluation': True, 'step_mode': 'lockstep',
                      'num_chains': ParameterValue(LaunchConfiguration('num_chains'), value_type=int),
                      'chain_offset': ParameterValue(LaunchConfiguration('chain_offset'), value_type=int),
                      'backend': LaunchConfiguration('backend'),
                      'results_file': ParameterValue(LaunchConfiguration('results_file'), value_type=str),
                      'resume': ParameterValue(LaunchConfiguration('resume'), value_type=bool)}])
    policy = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(PathJoinSubstitution([share, 'launch', 'policy.launch.py'])),
        launch_arguments={'params_file': params_file, 'sim': 'false',
                          **{name: LaunchConfiguration(name) for name in POLICY_ARGUMENTS}}.items())
    return LaunchDescription([
        DeclareLaunchArgument('params_file', default_value=PathJoinSubstitution([share, 'config', 'deer.yaml'])),
        DeclareLaunchArgument('num_chains', default_value='10', description='Chains to evaluate'),
        DeclareLaunchArgument('chain_offset', default_value='0', description='First chain of the fixed list'),
        DeclareLaunchArgument('backend', default_value='embedded', description='embedded | calvin'),
        DeclareLaunchArgument('results_file', default_value='',
                              description='JSON Lines file each chain is appended to (empty: a new one under '
                                          '$ROS_HOME/deer_ros/evaluations)'),
        DeclareLaunchArgument('resume', default_value='false',
                              description='true: continue results_file, keeping its finished chains'),
        *(DeclareLaunchArgument(name, default_value='', description='see policy.launch.py; empty = params file')
          for name in POLICY_ARGUMENTS),
        policy,
        bridge,
        RegisterEventHandler(OnProcessExit(target_action=bridge, on_exit=[
            EmitEvent(event=Shutdown(reason='evaluation finished'))])),
    ])
