import os
from pathlib import Path

import pytest
import torch

# Two cores: one torch thread per pytest-xdist worker (more threads than cores is slower).
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)
torch.use_deterministic_algorithms(False)


SLICE = Path(__file__).parent / "data" / "shakespeare_slice"


def copy_slice(folder: Path) -> Path:
    """The shipped Shakespeare slice's texts, copied into `folder` (a corpus source a test may change)."""
    folder.mkdir(parents=True, exist_ok=True)
    for p in sorted(SLICE.glob("*_gut.txt")):
        (folder / p.name).write_bytes(p.read_bytes())
    return folder


@pytest.fixture
def texts(tmp_path):
    return copy_slice(tmp_path / "texts")


@pytest.fixture(scope="session")
def text_corpus(tmp_path_factory):
    """The shipped Shakespeare slice (six short texts) prepared byte-level: a TokenCorpus for LM tests."""
    from bmojo.data.text.corpus import TokenCorpus, prepare

    root = tmp_path_factory.mktemp("slice")
    return TokenCorpus(prepare(str(copy_slice(root / "texts")), root=root / "data", log=lambda *_: None))
