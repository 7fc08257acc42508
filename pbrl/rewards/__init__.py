"""Reward learners: models of the teacher's preferences that give the agent a reward."""

from collections.abc import Mapping
from typing import Any

from pbrl.rewards.bradley_terry import (
    BTRewardLearner,
    NonFiniteLossError,
    RewardEnsemble,
    bt_loss,
)
from pbrl.rewards.heron import HeronRewardLearner
from pbrl.rewards.regret import AdvantageRewardLearner, TabularPreferenceLearner

__all__ = [
    "AdvantageRewardLearner",
    "BTRewardLearner",
    "HeronRewardLearner",
    "NonFiniteLossError",
    "RewardEnsemble",
    "TabularPreferenceLearner",
    "bt_loss",
    "make_reward_learner",
]

# reward/ config name -> learner class (all share BTRewardLearner's interface)
LEARNERS: dict[str, type[BTRewardLearner]] = {
    "bradley_terry": BTRewardLearner,
    "regret": AdvantageRewardLearner,
    "heron": HeronRewardLearner,
}


def make_reward_learner(
    cfg: Mapping[str, Any], obs_dim: int, act_dim: int, **kwargs: Any
) -> BTRewardLearner:
    """Build the learner a ``reward/`` config names (``name`` plus constructor arguments).

    ``kwargs`` (``device``, ``seed``) override the config's values.
    """
    args = dict(cfg)
    name = str(args.pop("name", ""))
    if name not in LEARNERS:
        raise KeyError(f"unknown reward learner {name!r}; valid: {sorted(LEARNERS)}")
    return LEARNERS[name](obs_dim, act_dim, **{**args, **kwargs})
