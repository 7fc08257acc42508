"""GPU-vectorised simulation and on-device PrefPPO.

- :mod:`pbrl.gpu.sim`: :class:`~pbrl.gpu.sim.BatchedMujocoEnv`, ``N`` MuJoCo worlds stepped by
  MuJoCo Warp (CUDA, or Warp's CPU backend), observations/rewards/termination equal to the
  gymnasium v5 locomotion tasks, computed in torch on the same device (zero-copy views);
- :mod:`pbrl.gpu.franka`: the Franka reach/push twins of the CPU suite on the batched backend
  (end-effector IK batched in torch);
- :mod:`pbrl.gpu.ppo`: a vectorised PPO in pure torch with device rollout storage, the
  learned reward evaluated on device, and a segment pool with sim states for queries;
- :mod:`pbrl.gpu.loop`: the PrefPPO schedule (``agent=gpu_ppo``) around the two;
- :mod:`pbrl.gpu.ray_sweep`: run a list of ``pbrl-train`` override sets as Ray tasks.

Importing this package needs nothing beyond pbrl's core; the simulator needs the ``gpu``
(CUDA) or ``gpu-cpu`` extra (``warp-lang``, ``mujoco-warp``). See ``docs/gpu.md``.
"""

from __future__ import annotations

__all__ = ["WARP_EXTRA_HINT"]

WARP_EXTRA_HINT = (
    "install it with `pip install 'pbrl[gpu]'` (CUDA) or `pip install 'pbrl[gpu-cpu]'` "
    "(Warp's CPU backend, for laptops and CI)"
)
