"""run_node: a node on one thread starts, spins and leaves cleanly (no exception left unretrieved on exit)."""
from __future__ import annotations

import subprocess
import sys

NEVER_RETRIEVED = 'The following exception was never retrieved'

_BUSY_NODE = '''
import sys, time
from rclpy.node import Node
from deer_ros.nodes.node_main import run_node

class Busy(Node):
    def __init__(self):
        super().__init__('busy')
        self.ticks = 0
        self.create_timer(0.001, self.tick)
    def tick(self):
        time.sleep(0.02)
        self.ticks += 1
        if self.ticks == 5:
            raise KeyboardInterrupt  # what SIGINT raises in the spinning thread

def stop(node):
    print(f'stopped after {node.ticks} ticks', flush=True)

sys.exit(run_node(Busy, 'busy', on_stop=stop))
'''


def test_a_busy_node_stops_cleanly_and_exits_zero(ros_env) -> None:
    done = subprocess.run([sys.executable, '-c', _BUSY_NODE], env=ros_env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert 'stopped after 5 ticks' in done.stdout
    assert NEVER_RETRIEVED not in done.stderr
