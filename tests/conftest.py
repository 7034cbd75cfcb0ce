import os
from pathlib import Path

import pytest
import torch

CIFAR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def require_cifar() -> Path:
    """The shared CIFAR-10 ImageFolder tree; skips the test when absent,
    except under CI=true, where it fails."""
    if not (CIFAR / "train").is_dir():
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but {CIFAR} is missing")
        pytest.skip(f"{CIFAR} not present")
    return CIFAR


@pytest.fixture
def cifar_root() -> Path:
    """The shared CIFAR-10 ImageFolder tree; skipped when absent, except in CI."""
    return require_cifar()
