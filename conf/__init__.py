"""Hydra's config tree (a package so that it installs beside the code)."""
