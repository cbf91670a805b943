"""Declarative ROS parameters: one table per node gives name, default, description, range and choices.

Every parameter is declared with a ``ParameterDescriptor`` built from its row,
so ``ros2 param describe`` shows the same text and limits the node enforces.

The type of each parameter is checked here rather than by rclpy's static typing
(descriptors say ``dynamic_typing``), for two reasons: a whole number is a valid
value of a floating-point parameter (``ros2 param set /deer_policy budget.avg_gflops 0``
and ``-p budget.avg_gflops:=0`` send an integer, which static typing refuses), and
a wrong type must be answered with type names (rclpy answers ``expected '3' got '4'``).
Integers given to float parameters are stored as floats, so whoever reads a value
(``declare``'s result or ``node.get_parameter(name).value``) gets a float.
Each node's on-set callback calls :func:`check_values` (types, choices, limits).
"""
from __future__ import annotations

import array
from dataclasses import dataclass
from functools import partial
from typing import Any, Iterable, Mapping, Sequence

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.node import Node
from rclpy.parameter import Parameter

Type = Parameter.Type

_TYPE_NAMES = {
    Type.NOT_SET: 'no value', Type.BOOL: 'boolean', Type.INTEGER: 'integer', Type.DOUBLE: 'double',
    Type.STRING: 'string', Type.BYTE_ARRAY: 'byte array', Type.BOOL_ARRAY: 'boolean array',
    Type.INTEGER_ARRAY: 'integer array', Type.DOUBLE_ARRAY: 'double array', Type.STRING_ARRAY: 'string array',
}
_EXPECTED = {
    Type.BOOL: 'true or false (boolean)', Type.INTEGER: 'a whole number (integer)', Type.DOUBLE: 'a number (double)',
    Type.STRING: 'a string', Type.DOUBLE_ARRAY: 'a list of numbers (double array)',
    Type.INTEGER_ARRAY: 'a list of whole numbers (integer array)',
    Type.STRING_ARRAY: 'a list of strings (string array)', Type.BOOL_ARRAY: 'a list of booleans (boolean array)',
    Type.BYTE_ARRAY: 'a list of bytes (byte array)',
}
_WIDENED = {Type.DOUBLE: Type.INTEGER, Type.DOUBLE_ARRAY: Type.INTEGER_ARRAY}  # accepted, converted to the declared
_SHOWN_CHARS = 60  # of a rejected value in a message: a 1 MB string must not flood the answer or the log


def _shown(value: Any) -> str:
    text = repr(list(value) if isinstance(value, array.array) else value)
    return text if len(text) <= _SHOWN_CHARS else f'{text[:_SHOWN_CHARS - 3]}...'


@dataclass(frozen=True)
class ParamSpec:
    """One parameter: ``read_only`` ones are fixed at start-up (they shape the model, QoS or timers)."""

    name: str
    default: Any
    description: str
    read_only: bool = False
    limits: tuple[float, float] | None = None
    choices: tuple[str, ...] = ()

    @property
    def type(self) -> Type:
        """The declared type: the default's."""
        return Type.from_parameter_value(self.default)

    def descriptor(self) -> ParameterDescriptor:
        descriptor = ParameterDescriptor(name=self.name, description=self.description, read_only=self.read_only,
                                         dynamic_typing=True)
        if self.limits is not None:
            low, high = self.limits
            if self.type == Type.INTEGER:
                descriptor.integer_range = [IntegerRange(from_value=int(low), to_value=int(high), step=0)]
            else:
                descriptor.floating_point_range = [FloatingPointRange(from_value=float(low), to_value=float(high),
                                                                      step=0.0)]
        if self.choices:
            descriptor.additional_constraints = f'one of: {", ".join(self.choices)}'
        return descriptor

    def coerce(self, parameter: Parameter) -> Parameter:
        """``parameter`` with whole numbers for a float parameter turned into floats; otherwise unchanged."""
        if parameter.type_ == Type.INTEGER and self.type == Type.DOUBLE:
            return Parameter(parameter.name, value=float(parameter.value))
        if parameter.type_ == Type.INTEGER_ARRAY and self.type == Type.DOUBLE_ARRAY:
            return Parameter(parameter.name, value=[float(v) for v in parameter.value])
        return parameter

    def problem(self, parameter: Parameter) -> str | None:
        """Why ``parameter`` is not a valid value of this one, naming the types; ``None`` when it is."""
        if parameter.type_ == Type.NOT_SET:
            return f'{self.name} cannot be unset: it must be {_EXPECTED[self.type]}'
        if parameter.type_ not in (self.type, _WIDENED.get(self.type)):
            return (f'{self.name} must be {_EXPECTED[self.type]}, got {_TYPE_NAMES[parameter.type_]} '
                    f'{_shown(parameter.value)}')
        value = self.coerce(parameter).value
        if self.choices and value not in self.choices:
            return f'{self.name} must be one of {", ".join(self.choices)}; got {_shown(value)}'
        if self.limits is not None and self.type in (Type.INTEGER, Type.DOUBLE):
            low, high = self.limits
            if not low <= value <= high:
                return f'{self.name} must be in [{low}, {high}]; got {value}'
        return None


def declare(node: Node, specs: Iterable[ParamSpec]) -> dict[str, Any]:
    """Declare every parameter on ``node``; returns the values in force (defaults overridden by YAML / ``-p``).

    Raises ``ValueError`` naming the parameter for a start-up value of the wrong
    type, outside its choices or outside its limits, so a typo in the YAML stops
    the node instead of running with a surprise. Each start-up value is read
    with a provisional declaration (rclpy has no public read of overrides), then
    declared for good, converted to float where the parameter is one.
    """
    specs = list(specs)
    for spec in specs:
        given = node.declare_parameter(spec.name, spec.default, ParameterDescriptor(dynamic_typing=True))
        node.undeclare_parameter(spec.name)
        problem = spec.problem(given)
        if problem:
            raise ValueError(problem)
        node.declare_parameter(spec.name, spec.coerce(given).value, spec.descriptor(), ignore_override=True)
    node.add_pre_set_parameters_callback(partial(_coerce_all, {spec.name: spec for spec in specs}))
    return {spec.name: node.get_parameter(spec.name).value for spec in specs}


def _coerce_all(by_name: Mapping[str, ParamSpec], parameters: list[Parameter]) -> list[Parameter]:
    """Pre-set callback: runs before rclpy checks ranges, so a whole number set on a float parameter is range-checked
    and stored as a float."""
    return [by_name[p.name].coerce(p) if p.name in by_name else p for p in parameters]


def check_values(specs: Sequence[ParamSpec], parameters: Iterable[Parameter]) -> str | None:
    """The first parameter set to a value of the wrong type, outside its choices or limits, as a message;
    ``None`` when all are valid (parameters not in ``specs`` are not checked)."""
    by_name = {spec.name: spec for spec in specs}
    for parameter in parameters:
        spec = by_name.get(parameter.name)
        problem = spec.problem(parameter) if spec is not None else None
        if problem:
            return problem
    return None
