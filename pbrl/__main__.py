"""``python -m pbrl [overrides]`` is ``pbrl-train [overrides]``."""

from pbrl.cli import train

if __name__ == "__main__":
    train()
