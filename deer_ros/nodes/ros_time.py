"""Header stamps as integer nanoseconds: exact to compare, which is how actions are matched to frames."""
from __future__ import annotations

from builtin_interfaces.msg import Time

NS_PER_S = 1_000_000_000


def stamp_ns(stamp: Time) -> int:
    return stamp.sec * NS_PER_S + stamp.nanosec


def stamp_msg(nanoseconds: int) -> Time:
    return Time(sec=nanoseconds // NS_PER_S, nanosec=nanoseconds % NS_PER_S)
