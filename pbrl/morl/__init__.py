"""Multi-objective RL: Pareto fronts of policies for a vector reward (C-MORL, PGMORL).

- :mod:`pbrl.morl.metrics`: the shared evaluator's scores (hypervolume, expected utility,
  sparsity, cardinality, crowding distance) and :class:`~pbrl.morl.metrics.EvalProtocol`.
- :mod:`pbrl.morl.envs`: vector-reward envs (MO-Gymnasium, pbrl reward factors, a toy).
- :mod:`pbrl.morl.ppo`: multi-objective PPO and the evaluator's rollouts.
- :mod:`pbrl.morl.cmorl` / :mod:`pbrl.morl.pgmorl`: the two front builders.
- :mod:`pbrl.morl.select`: pick a front policy by a teacher's clip comparisons.
- ``pbrl-front``: :mod:`pbrl.morl.cli`.
"""
