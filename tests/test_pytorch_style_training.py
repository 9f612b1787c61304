"""A training loop written the way a PyTorch user writes it (the README's "coming from
PyTorch" loop): int64 labels, implicit broadcasting, zero_grad, nn.functional.cross_entropy,
loss.item(), argmax accuracy. It must train an MLP on a separable problem."""
import numpy as np

import needle as ndl
import needle.nn as nn
import needle.nn.functional as F
from devices import nd_only

pytestmark = nd_only


def test_pytorch_style_loop_trains_an_mlp():
    rng = np.random.default_rng(0)
    np.random.seed(0)
    centers = rng.standard_normal((3, 8)) * 3
    y = rng.integers(0, 3, 600)
    x = centers[y] + rng.standard_normal((600, 8))

    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3))
    opt = ndl.optim.Adam(model.parameters(), lr=0.01)
    X, Y = ndl.Tensor(x, dtype="float32"), ndl.Tensor(y)  # Y is int64
    assert Y.dtype == "int64"
    losses = []
    for epoch in range(30):
        opt.zero_grad()
        logits = model(X)
        loss = F.cross_entropy(logits, Y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    accuracy = (model(X).argmax(dim=1) == Y).float().mean().item()
    assert isinstance(losses[-1], float) and losses[-1] < 0.5 * losses[0]
    assert accuracy > 0.9
