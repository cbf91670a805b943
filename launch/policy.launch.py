"""Start the DeeR policy node with config/deer.yaml; ``sim:=true`` adds the CALVIN simulator bridge.

    ros2 launch deer_ros policy.launch.py
    ros2 launch deer_ros policy.launch.py sim:=true instruction:='open the drawer'
    ros2 launch deer_ros policy.launch.py checkpoint:=/data/deer_ckpt budget_avg_gflops:=0.07 sim:=true
    ros2 launch deer_ros policy.launch.py managed:=true   # then: ros2 lifecycle set /deer_policy configure|activate

With ``sim:=true`` the bridge plays freely: it publishes ``instruction`` (latched)
and steps the simulator with every action. Without an instruction the policy
only holds; give one here or later (docs/nodes.md):

    ros2 topic pub --once --qos-durability transient_local --qos-reliability reliable \
        /instruction std_msgs/msg/String "{data: 'open the drawer'}"

Budget and model arguments left empty keep the values of the params file, so
editing config/deer.yaml is never silently overridden by a launch default.
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare


def _as_bool(text: str) -> bool:
    return text.strip().lower() in ('true', '1', 'yes', 'on')


# launch argument -> (policy parameter, type); applied only when the argument is given.
POLICY_OVERRIDES = {
    'budget_avg_gflops': ('budget.avg_gflops', float),
    'budget_peak_gflops': ('budget.peak_gflops', float),
    'budget_max_memory_mb': ('budget.max_memory_mb', float),
    'budget_track_average': ('budget.track_average', _as_bool),
    'checkpoint': ('checkpoint', str),
    'model_config': ('model_config', str),
    'device': ('device', str),
}


def _nodes(context):
    params_file = LaunchConfiguration('params_file').perform(context)
    overrides = {name: cast(LaunchConfiguration(argument).perform(context))
                 for argument, (name, cast) in POLICY_OVERRIDES.items()
                 if LaunchConfiguration(argument).perform(context) != ''}
    instruction = LaunchConfiguration('instruction').perform(context)
    # value_type str: launch would read an instruction such as 'yes' as YAML (a boolean)
    bridge_overrides = {'instruction': ParameterValue(instruction, value_type=str)} if instruction else {}
    use_sim_time = LaunchConfiguration('use_sim_time').perform(context).lower() == 'true'
    managed = _as_bool(LaunchConfiguration('managed').perform(context))
    log_level = ['--ros-args', '--log-level', LaunchConfiguration('log_level').perform(context)]
    return [
        Node(package='deer_ros', executable='managed_policy_node' if managed else 'policy_node',
             name='deer_policy', output='screen', emulate_tty=True,
             parameters=[params_file, overrides, {'use_sim_time': use_sim_time}], arguments=log_level),
        Node(package='deer_ros', executable='calvin_bridge_node', name='calvin_bridge', output='screen',
             emulate_tty=True, parameters=[params_file, bridge_overrides], arguments=log_level,
             condition=IfCondition(LaunchConfiguration('sim'))),
    ]


def generate_launch_description() -> LaunchDescription:
    default_params = PathJoinSubstitution([FindPackageShare('deer_ros'), 'config', 'deer.yaml'])
    return LaunchDescription([
        DeclareLaunchArgument('params_file', default_value=default_params,
                              description='Parameters of deer_policy and calvin_bridge'),
        DeclareLaunchArgument('budget_avg_gflops', default_value='',
                              description='Average GFLOPs per step (0 = none); empty = params file'),
        DeclareLaunchArgument('budget_peak_gflops', default_value='',
                              description='Hard per-step GFLOPs limit (0 = none); empty = params file'),
        DeclareLaunchArgument('budget_max_memory_mb', default_value='',
                              description='Parameter memory limit in MiB (0 = none); empty = params file'),
        DeclareLaunchArgument('budget_track_average', default_value='',
                              description='Correct thresholds online so the average budget holds (true/false); '
                                          'empty = params file'),
        DeclareLaunchArgument('checkpoint', default_value='',
                              description='Checkpoint directory or shipped policy name (tiny); empty = params file'),
        DeclareLaunchArgument('model_config', default_value='',
                              description='Shipped config name or file when no checkpoint; empty = params file'),
        DeclareLaunchArgument('device', default_value='', description='Torch device; empty = params file'),
        DeclareLaunchArgument('sim', default_value='false', description='Also start the CALVIN simulator bridge'),
        DeclareLaunchArgument('instruction', default_value='',
                              description='sim:=true: the instruction free play starts with (the bridge publishes it '
                                          'latched); empty = params file (none: the policy holds until one is '
                                          'published on /instruction)'),
        DeclareLaunchArgument('managed', default_value='false',
                              description='Start deer_policy as a lifecycle node (unconfigured until '
                                          '`ros2 lifecycle set /deer_policy configure`, then activate)'),
        DeclareLaunchArgument('use_sim_time', default_value='false',
                              description='Policy node on /clock time (its watchdog stays on the steady clock)'),
        DeclareLaunchArgument('log_level', default_value='info'),
        OpaqueFunction(function=_nodes),
    ])
