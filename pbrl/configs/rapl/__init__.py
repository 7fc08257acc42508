"""Hydra configs of pbrl-rapl (a package, so Hydra finds them from the installed console script)."""
