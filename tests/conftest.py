import os
from pathlib import Path

import pytest
import torch

# Two cores: one torch thread per pytest-xdist worker (more threads than cores is slower).
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)
torch.use_deterministic_algorithms(False)


@pytest.fixture(scope="session")
def text_corpus(tmp_path_factory):
    """The shipped Shakespeare slice (six short texts) prepared byte-level: a TokenCorpus for LM tests."""
    from bmojo.data.text.corpus import TokenCorpus, prepare

    root = tmp_path_factory.mktemp("slice")
    for p in sorted((Path(__file__).parent / "data" / "shakespeare_slice").glob("*_gut.txt")):
        (root / "texts").mkdir(exist_ok=True)
        (root / "texts" / p.name).write_bytes(p.read_bytes())
    return TokenCorpus(prepare(str(root / "texts"), root=root / "data", log=lambda *_: None))
