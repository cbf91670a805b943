"""Embedded CALVIN-style simulation: ``env.PlayTableEnv``, ``tasks.TaskOracle``, ``expert.ScriptedExpert``.

Nothing is imported here, so the pybullet-free modules (dataset, sequences, language) stay light.
See docs/simulation_env.md and docs/simulation_eval.md.
"""
