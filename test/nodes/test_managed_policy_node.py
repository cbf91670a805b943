"""The managed (lifecycle) deer_policy over its real lifecycle services: configure, activate, deactivate, cleanup,
shutdown, as ``ros2 lifecycle set /deer_policy ...`` drives them."""
from __future__ import annotations

import time

from lifecycle_msgs.msg import State, Transition
from lifecycle_msgs.srv import ChangeState, GetState
from policy_driver import FAST_POLICY, PolicyDriver
from ros_helpers import BackgroundSpinner, wait_for

MANAGED = 'deer_ros.nodes.managed_policy_node'
STARTUP_S = 120.0  # torch + transformers imports on 2 shared cores
RANDOM_TINY = {**FAST_POLICY, 'checkpoint': '', 'model_config': 'tiny'}  # no robot-state input needed
QUIET_S = 1.5  # 30 ticks at 20 Hz: long enough to see a node that still acts


class Lifecycle:
    """``ros2 lifecycle set/get`` for /deer_policy through its services."""

    def __init__(self, driver: PolicyDriver) -> None:
        self.change = driver.create_client(ChangeState, '/deer_policy/change_state')
        self.get = driver.create_client(GetState, '/deer_policy/get_state')

    def wait(self) -> bool:
        return self.change.wait_for_service(30.0) and self.get.wait_for_service(30.0)

    def set(self, transition: int) -> bool:
        future = self.change.call_async(ChangeState.Request(transition=Transition(id=transition)))
        assert wait_for(future.done, 60.0), f'transition {transition} got no answer'
        return future.result().success

    def state(self) -> int:
        future = self.get.call_async(GetState.Request())
        assert wait_for(future.done, 15.0)
        return future.result().current_state.id


def _quiet(driver: PolicyDriver) -> int:
    """Actions published while the driver keeps sending frames for ``QUIET_S``."""
    before, _ = driver.count()
    deadline = time.monotonic() + QUIET_S
    while time.monotonic() < deadline:
        driver.send()
        time.sleep(0.1)
    return driver.count()[0] - before


def test_lifecycle_transitions_gate_loading_and_acting(start_node, driver):
    node = start_node(MANAGED, params=RANDOM_TINY)
    lifecycle = Lifecycle(driver)
    with BackgroundSpinner(driver, context=driver.context):
        assert lifecycle.wait(), node.log
        assert lifecycle.state() == State.PRIMARY_STATE_UNCONFIGURED
        assert 'ready in' not in node.log  # no model before configure

        assert lifecycle.set(Transition.TRANSITION_CONFIGURE)
        assert lifecycle.state() == State.PRIMARY_STATE_INACTIVE
        assert 'ready in' in node.log, node.log
        assert _quiet(driver) == 0  # inactive: no subscriptions, nothing published

        assert lifecycle.set(Transition.TRANSITION_ACTIVATE)
        assert lifecycle.state() == State.PRIMARY_STATE_ACTIVE
        assert driver.wait_connected()
        driver.instruct('open the drawer')
        assert node.wait_for_log("new instruction 'open the drawer'"), node.log
        assert driver.send_until_answered() is not None, node.log  # an ExitStats: the frame got an action

        marks, _ = driver.count()
        assert lifecycle.set(Transition.TRANSITION_DEACTIVATE)
        assert lifecycle.state() == State.PRIMARY_STATE_INACTIVE
        assert wait_for(lambda: any(a.hold for a in driver.actions[marks:]), 10.0), 'no hold on deactivate'
        assert _quiet(driver) == 0  # nothing after the hold
        with driver.lock:
            after = driver.actions[marks:]
        assert after[-1].hold and sum(a.hold for a in after) == 1, [a.hold for a in after]

        assert lifecycle.set(Transition.TRANSITION_ACTIVATE)  # acts again after a deactivate
        assert driver.send_until_answered() is not None, node.log
        assert lifecycle.set(Transition.TRANSITION_DEACTIVATE)

        assert lifecycle.set(Transition.TRANSITION_CLEANUP)
        assert lifecycle.state() == State.PRIMARY_STATE_UNCONFIGURED
        assert node.wait_for_log('model freed'), node.log
        assert lifecycle.set(Transition.TRANSITION_CONFIGURE)  # loads again
        assert lifecycle.set(Transition.TRANSITION_ACTIVATE)
        marks, _ = driver.count()
        assert lifecycle.set(Transition.TRANSITION_ACTIVE_SHUTDOWN)  # shutdown straight from active
        assert lifecycle.state() == State.PRIMARY_STATE_FINALIZED
        assert wait_for(lambda: any(a.hold for a in driver.actions[marks:]), 10.0), 'no hold on shutdown'
        assert _quiet(driver) == 0
        assert node.running()  # finalized, not crashed: the process ends on Ctrl-C as before
