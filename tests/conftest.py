import os

import pytest
import torch

SLOW_TEST_TIMEOUT = 600  # seconds; the others get pyproject's pytest timeout

# Two cores on the CI machines; keep torch from oversubscribing them.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def pytest_collection_modifyitems(config, items):
    # A hang shows in minutes: pyproject's timeout for everything, longer for the trainings.
    for item in items:
        if item.get_closest_marker("slow") and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(SLOW_TEST_TIMEOUT))


@pytest.fixture
def rng():
    return torch.Generator().manual_seed(0)
