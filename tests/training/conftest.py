import pytest
import torch


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    # Trainer / evaluator set torch's process-wide thread count; keep it from leaking into later tests.
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
