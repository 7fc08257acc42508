"""pbrl: reinforcement learning from preferences for embodied agents and control."""

__version__ = "0.1.0"
