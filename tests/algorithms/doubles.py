"""Test doubles shared by the algorithm tests (imported, not collected)."""

import torch
from torch import nn


class TableQ(nn.Module):
    """Q_i(o_i, .) looked up from a table [n_obs, N, K] by the (integer) observation value."""

    def __init__(self, table):
        super().__init__()
        self.register_buffer("table", torch.as_tensor(table, dtype=torch.float32))

    def forward(self, observation):
        index = observation[..., 0].long()  # [..., N]
        return self.table[index, torch.arange(self.table.shape[1])]
