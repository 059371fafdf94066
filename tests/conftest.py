import os

import torch

# Two cores are shared by the test workers: one torch thread each.
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")
