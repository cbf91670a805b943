"""The test helpers themselves: node subprocesses, parameter passing, domain isolation, spinning."""
from __future__ import annotations

import json
import textwrap
import threading

import pytest
import rclpy
from rclpy.context import Context
from rclpy.node import Node
from rclpy.signals import SignalHandlerOptions
from std_msgs.msg import String

from ros_helpers import BackgroundSpinner, DomainIds, NodeProcess, ros_param_arg, wait_for, write_params_file

# A node defined here, written to tmp_path and started with `python -m`: it logs every
# parameter it was given as JSON, and can be told to ignore SIGINT like a hung node.
PARAM_DUMP_NODE = textwrap.dedent('''
    import json, signal
    import rclpy
    from rclpy.executors import ExternalShutdownException
    from rclpy.node import Node

    rclpy.init()
    node = Node('param_dump', automatically_declare_parameters_from_overrides=True)
    values = {name: p.value for name, p in node.get_parameters_by_prefix('').items()}
    print('PARAMS ' + json.dumps(values, sort_keys=True), flush=True)
    if values.get('ignore_sigint'):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        print('clean exit', flush=True)
''')


@pytest.fixture
def param_dump_module(tmp_path):
    (tmp_path / 'param_dump_node.py').write_text(PARAM_DUMP_NODE)
    return tmp_path


def logged_params(node: NodeProcess) -> dict:
    assert node.wait_for_log('PARAMS '), node.log
    line = next(line for line in node.log.splitlines() if line.startswith('PARAMS '))
    return json.loads(line.removeprefix('PARAMS '))


def test_params_file_and_overrides_arrive_with_their_types(start_node, param_dump_module, tmp_path):
    params_file = write_params_file(tmp_path / 'p.yaml', {'rate_hz': 15.0, 'name': 'from_file',
                                                          'nested': {'gain': 2}})
    node = start_node('param_dump_node', pythonpath=[param_dump_module], params_file=params_file,
                      params={'name': '42', 'flag': True, 'values': [1.0, 2.5], 'count': 7})
    expected = {'rate_hz': 15.0, 'name': '42', 'flag': True, 'values': [1.0, 2.5], 'count': 7,
                'nested.gain': 2}
    params = logged_params(node)
    assert {name: params.get(name) for name in expected} == expected
    assert node.stop() == 0
    assert 'clean exit' in node.log


def test_stop_kills_a_node_that_ignores_sigint(start_node, param_dump_module):
    node = start_node('param_dump_node', pythonpath=[param_dump_module], params={'ignore_sigint': True})
    assert logged_params(node)['ignore_sigint'] is True
    assert node.stop(timeout=1.0) == -9
    assert 'clean exit' not in node.log and not node.running()


def test_a_crashing_node_is_reported_not_waited_for(start_node):
    node = start_node('no_such_module_for_deer_ros_tests')
    assert not node.wait_for_log('never printed', timeout=15)
    assert not node.running() and 'No module named' in node.log


def test_ros_param_arg_keeps_types():
    assert ros_param_arg('a', '1.5') == 'a:="1.5"'
    assert ros_param_arg('b', [1, 2]) == 'b:=[1, 2]'
    assert ros_param_arg('c', False) == 'c:=false'


def test_domain_blocks_are_exclusive_between_runs(tmp_path):
    runs = []
    with pytest.raises(RuntimeError, match='every ROS_DOMAIN_ID block is held'):
        while True:
            runs.append(DomainIds(lock_dir=tmp_path))
    bases = [run.base for run in runs]
    assert len(runs) >= 4 and len(set(bases)) == len(bases)
    ids = [runs[0].next() for _ in range(runs[0].size + 1)]
    assert ids[:-1] == list(range(runs[0].base, runs[0].base + runs[0].size)) and ids[-1] == ids[0]
    assert max(run.base + run.size - 1 for run in runs) <= 101
    runs[1].close()
    assert DomainIds(lock_dir=tmp_path).base == bases[1]
    with pytest.raises(ValueError, match='outside'):
        DomainIds(base=150)


def test_different_domains_do_not_see_each_other(rclpy_context, ros_domain_id):
    other = Context()
    rclpy.init(context=other, domain_id=ros_domain_id + 1 if ros_domain_id < 101 else ros_domain_id - 1,
               signal_handler_options=SignalHandlerOptions.NO)
    talker = Node('talker', context=rclpy_context)
    same, foreign = Node('same_domain', context=rclpy_context), Node('foreign', context=other)
    heard: dict[str, list[str]] = {'same': [], 'foreign': []}
    same.create_subscription(String, 'chatter', lambda m: heard['same'].append(m.data), 10)
    foreign.create_subscription(String, 'chatter', lambda m: heard['foreign'].append(m.data), 10)
    publisher = talker.create_publisher(String, 'chatter', 10)
    try:
        with BackgroundSpinner(talker, same, context=rclpy_context), BackgroundSpinner(foreign, context=other):
            assert wait_for(lambda: publisher.publish(String(data='hi')) or len(heard['same']) >= 3,
                            timeout=15, interval=0.05)
        assert heard['foreign'] == []
    finally:
        for node in (talker, same, foreign):
            node.destroy_node()
        other.try_shutdown()


def test_spinner_runs_callbacks_and_surfaces_their_errors(rclpy_context):
    node = Node('ticker', context=rclpy_context)
    ticks = threading.Event()

    def tick() -> None:
        ticks.set()
        raise ValueError('callback bug')

    node.create_timer(0.01, tick)
    try:
        with pytest.raises(RuntimeError, match='a callback failed') as failure:
            with BackgroundSpinner(node, context=rclpy_context):
                assert ticks.wait(5)
                wait_for(lambda: False, timeout=0.2)
        assert isinstance(failure.value.__cause__, ValueError)
    finally:
        node.destroy_node()
