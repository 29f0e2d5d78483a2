"""Test-session settings.

The tests evaluate small systems, where torch's intra-op threads cost more than they give, and on a
shared machine spinning threads slow everything down by 10x; one thread keeps timings stable.
"""

import torch

torch.set_num_threads(1)
