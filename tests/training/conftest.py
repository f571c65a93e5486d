import pytest
import torch

from model import ModelConfig, StyA2K


@pytest.fixture(scope="session")
def net() -> StyA2K:
    torch.manual_seed(0)
    return StyA2K(ModelConfig()).eval()


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    # Trainer / evaluator set torch's process-wide thread count; keep it from leaking into later tests.
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
