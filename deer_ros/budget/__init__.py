"""Compute budgets → exit cap and exit-rule thresholds.

``calibration`` (consistency values and their file), ``collect`` (gathering
them from a model), ``solver`` (average budget), ``caps`` (peak GFLOPs /
memory + the combined :func:`~deer_ros.budget.caps.solve_budget`),
``bayes_opt`` (closed-loop refinement), ``calibrate_cli`` (``deer-ros calibrate``).
"""
