import os

import torch

# Two cores: one torch thread per pytest-xdist worker (more threads than cores is slower).
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)
torch.use_deterministic_algorithms(False)
