"""Hydra configs of pbrl-qd (a package, so Hydra finds them from the installed console script)."""
