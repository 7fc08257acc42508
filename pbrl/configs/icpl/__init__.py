"""Hydra configs of pbrl-icpl (a package, so Hydra finds them from the installed console script)."""
