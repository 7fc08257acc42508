"""Tabular MDPs with exact dynamic programming: the delivery domain of Knox et al."""

from pbrl.tabular.delivery import (
    ACTIONS,
    DELIVERY_BOARD,
    FEATURES,
    TRUE_WEIGHTS,
    Cell,
    TabularMDP,
    delivery_mdp,
    greedy_policy,
    policy_evaluation,
    policy_iteration,
    q_from_v,
    random_delivery_board,
    sample_segment_pairs,
    scaled_return,
    segment_batch,
    value_iteration,
)

__all__ = [
    "ACTIONS",
    "DELIVERY_BOARD",
    "FEATURES",
    "TRUE_WEIGHTS",
    "Cell",
    "TabularMDP",
    "delivery_mdp",
    "greedy_policy",
    "policy_evaluation",
    "policy_iteration",
    "q_from_v",
    "random_delivery_board",
    "sample_segment_pairs",
    "scaled_return",
    "segment_batch",
    "value_iteration",
]
