import pytest
import torch
import torchvision


@pytest.fixture(scope="session")
def r18_state():
    """A resnet18 state dict with non-default buffers, so every tensor is distinguishable."""
    torch.manual_seed(0)
    sd = torchvision.models.resnet18().state_dict()
    for k, v in sd.items():
        if k.endswith("running_mean") or k.endswith("running_var"):
            v.uniform_(0.5, 1.5)
        elif k.endswith("num_batches_tracked"):
            v.fill_(7)
    return {k: v.clone() for k, v in sd.items()}


@pytest.fixture
def backbone18(r18_state):
    """The resnet18 backbone tensors (no fc), fresh copies."""
    return {k: v.clone() for k, v in r18_state.items() if not k.startswith("fc.")}


@pytest.fixture
def one_thread(monkeypatch):
    """One intra-op thread here and in child processes: CPU results are bit-identical for equal thread
    counts, and the run chooses its count from its loader workers unless OMP_NUM_THREADS is set."""
    threads = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
