"""`gpu`-marked tests run wherever CUDA is visible and are skipped (with the reason) elsewhere."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    gpu = [item for item in items if "gpu" in item.keywords]
    if not gpu:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (none visible); runs where there is one")
    for item in gpu:
        item.add_marker(skip)
