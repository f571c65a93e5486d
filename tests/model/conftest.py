import pytest
import torch

from model import ModelConfig, StyA2K


@pytest.fixture(scope="session")
def net() -> StyA2K:
    torch.manual_seed(0)
    return StyA2K(ModelConfig()).eval()
