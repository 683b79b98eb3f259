import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Tiny models are all synchronisation overhead: with 2 threads on a busy 2-core machine a
    # 5 s training run takes minutes. One thread keeps the suite fast and its timing stable.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
