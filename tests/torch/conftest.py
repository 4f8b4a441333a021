"""Tiny GGUFs for the torch backend: the whole folder is skipped without torch."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from localspec.backends.torch_backend import TorchBackend, TorchSettings  # noqa: E402
from localspec.drafters.polybasic import torch_drafter_factory  # noqa: E402
from localspec.engine import Engine  # noqa: E402
from tests.torch.drafting import CURVE, FAST  # noqa: E402
from tests.torch.helpers import build_arch_model  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def torch_model_path(model_dir):
    """Four layers, so there are middle layers to skip."""
    return build_arch_model(model_dir / "torch-llama.gguf", "llama", seed=5, n_layer=4, n_ctx=512)


@pytest.fixture(scope="session")
def torch_backend(torch_model_path):
    backend = TorchBackend(torch_model_path, TorchSettings(device="cpu", dtype="float32", n_ctx=512,
                                                           n_threads=1, max_tree_nodes=32, scratch_slots=64))
    yield backend
    backend.close()


@pytest.fixture()
def engine(torch_backend):
    """An engine over the tiny model whose layerskip and polybasic search quickly (FAST)."""
    return Engine(torch_backend, new_drafter=torch_drafter_factory(torch_backend, CURVE, FAST))
