"""Embedded CALVIN-style physics: ``env.PlayTableEnv`` (pybullet play table, robot, cameras) behind ``interface.SimEnv``.

Physics only: what a task is, how chains are drawn and how a policy is
scored live in :mod:`deer_ros.benchmark`; the scripted expert in
:mod:`deer_ros.expert`. See docs/simulation_env.md.
"""
