import os
import random

# Tests never download: a model or tokenizer that would come from the hub fails at once instead of
# retrying the network (set before huggingface_hub is imported; subprocesses inherit it).
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch

from pixparse.data.write import write_synth_shards

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def _reset_global_state():
    """Seed, default dtype and process group are the same for every test."""
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    dtype = torch.get_default_dtype()
    yield
    torch.set_default_dtype(dtype)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


@pytest.fixture(scope="session")
def synth_shards(tmp_path_factory) -> str:
    """4 shards x 8 small synthetic documents; returns the brace pattern."""
    out = tmp_path_factory.mktemp("synth")
    write_synth_shards(str(out), num_shards=4, samples_per_shard=8, seed=0, page_size=(240, 320))
    return str(out / "synth-{000000..000003}.tar")


@pytest.fixture(scope="session")
def shared_data() -> str:
    """The real third-party documents (FUNSD, SROIE, ...) named by PIXPARSE_TEST_DATA."""
    root = os.environ.get("PIXPARSE_TEST_DATA", "")
    if not root or not os.path.isdir(root):
        pytest.skip("real document data absent: set PIXPARSE_TEST_DATA to shared/data (launch/test.sh does)")
    return root
