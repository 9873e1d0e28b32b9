"""bfloat16 autocast training (``--bf16``): the same masked guarantees, nearly the same losses."""

from __future__ import annotations

import pytest
import torch

from clue_mi import masks as M
from clue_mi import unlearn as U

FORGET = ["The capital of France is", "The capital of Spain is", "The capital of Italy is"]
RETAIN = ["When Mary and John went to the store, John gave a drink to Mary."]


@pytest.fixture
def model(restored_tiny):
    """The session's tiny model, restored after each test (conftest)."""
    return restored_tiny


def _train(model, bf16: bool):
    params = M.hf_parameters(model)
    start = {n: p.detach().clone() for n, p in params.items()}
    mask = M.mask_from_nodes(model, ["a0.h1", "m1"])
    result = U.unlearn(
        model, FORGET, RETAIN, mask, mask, loss="po", epochs=(1, 1), lr=1e-3, batch_size=2,
        progress=False, bf16=bf16,
    )  # fmt: skip
    after = {n: p.detach().clone() for n, p in params.items()}
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(start[n])
    return result, start, after, mask


def test_bf16_keeps_float32_weights_and_the_mask(model):
    result, start, after, mask = _train(model, bf16=True)
    for name, before in start.items():
        assert after[name].dtype == torch.float32, name
        outside = ~mask[name] if name in mask else torch.ones_like(before, dtype=torch.bool)
        assert torch.equal(after[name][outside], before[outside]), name  # bit-identical
    assert any(not torch.equal(after[n], start[n]) for n in mask)


def test_bf16_losses_follow_float32(model):
    fp32, *_ = _train(model, bf16=False)
    bf16, *_ = _train(model, bf16=True)
    a, b = fp32.losses(), bf16.losses()
    assert len(a) == len(b) > 0
    # Same data order and seed; only the matmul precision differs (bf16 has 8 mantissa bits).
    assert b[0] == pytest.approx(a[0], rel=0.02)
    assert b != a  # it really ran in bfloat16
    assert all(abs(x - y) <= 0.1 * abs(x) for x, y in zip(a, b, strict=True))
