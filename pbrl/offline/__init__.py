"""Offline learning from preference datasets: CPL, SFT, OPPO (reward-free) and P-IQL.

- :mod:`pbrl.offline.dataset` builds datasets the way the papers do (``pbrl-dataset make``):
  roll out a sub-optimal policy with action noise, cut segments, label them with a scripted
  teacher, critic-regret labels (CPL) or future-return labels (OPPO), write the core's
  dataset file (``docs/dataset_format.md``).
- :mod:`pbrl.offline.data` reads such a file into tensors and samples training batches.
- :mod:`pbrl.offline.cpl` Contrastive Preference Learning (and SFT, CPL-BC, CPL-KL).
- :mod:`pbrl.offline.oppo` Offline Preference-guided Policy Optimisation.
- :mod:`pbrl.offline.piql` the P-IQL baseline: Bradley-Terry reward, relabel, then IQL.
- :mod:`pbrl.offline.cli` the ``pbrl-offline`` entry point (Hydra).
"""
