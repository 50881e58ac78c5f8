"""The toy model the attack tests share: trained once per session."""

from __future__ import annotations

import pytest

from tests.attacks.test_attack import ToyNet, train


@pytest.fixture(scope="session")
def toy() -> ToyNet:
    return train(ToyNet(seed=0))
