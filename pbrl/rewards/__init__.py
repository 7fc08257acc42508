"""Reward learners: models of the teacher's preferences that give the agent a reward."""

from pbrl.rewards.bradley_terry import (
    BTRewardLearner,
    NonFiniteLossError,
    RewardEnsemble,
    bt_loss,
)

__all__ = ["BTRewardLearner", "NonFiniteLossError", "RewardEnsemble", "bt_loss"]
