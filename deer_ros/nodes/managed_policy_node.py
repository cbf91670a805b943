"""``deer_policy`` as a managed (lifecycle) node: a system manager decides when the model loads and when it acts.

    python -m deer_ros.nodes.managed_policy_node      (or policy.launch.py managed:=true)
    ros2 lifecycle set /deer_policy configure         # load the model, solve the budget: inactive
    ros2 lifecycle set /deer_policy activate          # subscribe, publish, control timer: acting
    ros2 lifecycle set /deer_policy deactivate        # one explicit hold, then nothing
    ros2 lifecycle set /deer_policy cleanup           # free the model: unconfigured

The same code as the plain node (:class:`~deer_ros.nodes.policy_node.PolicyWiring`'s
phases), same name, parameters and topics; only the phases run on transitions.
Parameters are declared at construction, so they can be set before configure
(a budget set while unconfigured is checked when configure solves it). A
configure that fails (bad checkpoint, infeasible budget) logs why and leaves the
node unconfigured.
"""
from __future__ import annotations

import sys
from typing import Any

from rclpy.lifecycle import Node as LifecycleNode
from rclpy.lifecycle import State, TransitionCallbackReturn

from deer_ros.nodes.node_main import STARTUP_ERRORS, run_node
from deer_ros.nodes.parameters import declare
from deer_ros.nodes.policy_node import NODE_NAME, PARAMETERS, PolicyWiring

SUCCESS, FAILURE = TransitionCallbackReturn.SUCCESS, TransitionCallbackReturn.FAILURE


class ManagedPolicyNode(PolicyWiring, LifecycleNode):
    """The policy node whose model and I/O follow the lifecycle state machine (lifecycle publishers for outputs)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(NODE_NAME, **kwargs)
        declare(self, PARAMETERS)
        self._loaded = False
        self.get_logger().info('unconfigured: ros2 lifecycle set /deer_policy configure, then activate')

    def _create_output(self, msg_type: type, topic: str, qos: Any) -> Any:
        return self.create_lifecycle_publisher(msg_type, topic, qos)

    def _destroy_output(self, publisher: Any) -> None:
        self.destroy_lifecycle_publisher(publisher)

    def on_configure(self, state: State) -> TransitionCallbackReturn:
        try:
            self.load(self.parameter_values())
        except STARTUP_ERRORS as error:
            self.get_logger().error(f'configure failed: {error}')
            return FAILURE
        self._loaded = True
        return SUCCESS

    def on_activate(self, state: State) -> TransitionCallbackReturn:
        self.start_io(self.parameter_values())
        self.get_logger().info('active: acting on inputs')
        return super().on_activate(state)  # activates the lifecycle publishers

    def on_deactivate(self, state: State) -> TransitionCallbackReturn:
        self.stop('node deactivated')  # one explicit hold while the publishers are still active
        result = super().on_deactivate(state)
        self.stop_io()
        self.get_logger().info('inactive: one hold published, no more actions')
        return result

    def on_cleanup(self, state: State) -> TransitionCallbackReturn:
        self._unload()
        self.get_logger().info('unconfigured: model freed')
        return SUCCESS

    def on_shutdown(self, state: State) -> TransitionCallbackReturn:
        self.halt()
        return SUCCESS

    def on_error(self, state: State) -> TransitionCallbackReturn:
        self.halt()
        return SUCCESS  # back to unconfigured, ready for another configure

    def halt(self) -> None:
        """From any state: a final hold if acting, then no I/O and no model (shutdown, errors, Ctrl-C)."""
        if not self._stopped:
            self.stop()
            self.stop_io()
        self._unload()

    def _unload(self) -> None:
        if self._loaded:
            self.unload()
            self._loaded = False


def main(args: list[str] | None = None) -> None:
    sys.exit(run_node(ManagedPolicyNode, NODE_NAME, on_stop=ManagedPolicyNode.halt, args=args))


if __name__ == '__main__':
    main()
