"""The scripted expert (waypoint plans per task) and demonstration collection in CALVIN format.

Sits above :mod:`deer_ros.sim` and :mod:`deer_ros.benchmark`; see docs/simulation_eval.md.
"""
