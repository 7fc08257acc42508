"""Hydra configs of ``pbrl-front`` (a package so Hydra can find them)."""
