#!/usr/bin/env bash
# Build benchmarks/.venv-imitation: a virtual environment holding `imitation` (PyPI) for
# benchmarks/bench_vs_imitation.py. imitation 1.0.1 pins gymnasium ~=0.29 and
# stable-baselines3 ~=2.2.1, older than pbrl's (gymnasium 1.x, SB3 2.9), so it cannot share
# pbrl's environment.
#
# Versions verified to install and run imitation's preference comparisons on HalfCheetah-v4
# (CPU, Python 3.11.7, 2025-11):
#   imitation 1.0.1, gymnasium 0.29.1, stable-baselines3 2.2.1, mujoco 3.17.0 (same as pbrl's),
#   torch 2.13.0+cpu, numpy 2.4.6, seals 0.2.1
# gymnasium 0.29 has no v5 MuJoCo envs; HalfCheetah-v4 is the same task as pbrl's
# HalfCheetah-v5 (same model, observation, reward; see benchmarks/RESULTS.md).
#
# Usage: bash benchmarks/setup_imitation_venv.sh [python]   (default: python3)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venv-imitation"
py="${1:-python3}"

if [ ! -x "$venv/bin/python" ]; then
    "$py" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip install --quiet)

# torch first, pinned: the local CPU wheel. An unpinned torch pulls a multi-GB CUDA build.
"${pip[@]}" "torch==2.13.0"
# Then imitation with the versions above. mujoco is pinned to pbrl's so both sides simulate
# with the same engine (unpinned, pip picks mujoco 4.x, which gymnasium 0.29 also runs).
"${pip[@]}" \
    "imitation==1.0.1" \
    "gymnasium[mujoco]==0.29.1" \
    "stable-baselines3==2.2.1" \
    "mujoco==3.17.0" \
    "seals==0.2.1"

"$venv/bin/python" - <<'EOF'
import gymnasium as gym
import imitation
import mujoco
import stable_baselines3
import torch
from imitation.algorithms import preference_comparisons  # noqa: F401

env = gym.make("HalfCheetah-v4")
env.reset(seed=0)
env.step(env.action_space.sample())
print(
    f"imitation {imitation.__version__}, gymnasium {gym.__version__}, "
    f"SB3 {stable_baselines3.__version__}, mujoco {mujoco.__version__}, torch {torch.__version__}"
)
EOF
echo "ready: $venv/bin/python"
