"""Declarative ROS parameters: one table per node gives name, default, description, range and choices.

Every parameter is declared with a ``ParameterDescriptor`` built from its row,
so ``ros2 param describe`` shows the same text and limits the node enforces.
rclpy itself rejects type and range violations; choices (string enums) are
checked by :func:`check_choices` in the node's on-set callback, because a
descriptor can only state them in ``additional_constraints``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.node import Node
from rclpy.parameter import Parameter


@dataclass(frozen=True)
class ParamSpec:
    """One parameter: ``read_only`` ones are fixed at start-up (they shape the model, QoS or timers)."""

    name: str
    default: Any
    description: str
    read_only: bool = False
    limits: tuple[float, float] | None = None
    choices: tuple[str, ...] = ()

    def descriptor(self) -> ParameterDescriptor:
        descriptor = ParameterDescriptor(name=self.name, description=self.description, read_only=self.read_only)
        if self.limits is not None:
            low, high = self.limits
            if isinstance(self.default, int) and not isinstance(self.default, bool):
                descriptor.integer_range = [IntegerRange(from_value=int(low), to_value=int(high), step=0)]
            else:
                descriptor.floating_point_range = [FloatingPointRange(from_value=float(low), to_value=float(high),
                                                                      step=0.0)]
        if self.choices:
            descriptor.additional_constraints = f'one of: {", ".join(self.choices)}'
        return descriptor


def declare(node: Node, specs: Iterable[ParamSpec]) -> dict[str, Any]:
    """Declare every parameter on ``node``; returns the values in force (defaults overridden by YAML / ``-p``).

    Raises ``ValueError`` for a start-up value outside its choices, so a typo in
    the YAML stops the node instead of running with a surprise.
    """
    specs = list(specs)
    for spec in specs:
        node.declare_parameter(spec.name, spec.default, spec.descriptor())
    values = {spec.name: node.get_parameter(spec.name).value for spec in specs}
    problem = check_choices(specs, [Parameter(name, value=value) for name, value in values.items()])
    if problem:
        raise ValueError(problem)
    return values


def check_choices(specs: Sequence[ParamSpec], parameters: Iterable[Parameter]) -> str | None:
    """The first string parameter set to a value outside its choices, as a message; ``None`` when all are valid."""
    by_name = {spec.name: spec for spec in specs}
    for parameter in parameters:
        spec = by_name.get(parameter.name)
        if spec is not None and spec.choices and parameter.value not in spec.choices:
            return f'{parameter.name} must be one of {", ".join(spec.choices)}; got {parameter.value!r}'
    return None
