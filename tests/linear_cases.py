"""What the QuantizedLinear tests share: a fresh dynamo for each test and a seeded nn.Linear."""

import pytest
import torch


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def linear(bias=True, k=64, n=48, seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    return torch.nn.Linear(k, n, bias=bias).to(dtype)
