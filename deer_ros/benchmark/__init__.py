"""The CALVIN benchmark protocol: task oracle, language, 5-instruction chains, chain evaluation, statistics,
CALVIN-format datasets and the simulator backends (embedded play table, calvin_env).

Imports physics from :mod:`deer_ros.sim`; never the policy, the budget or the nodes. See docs/simulation_eval.md.
"""
