"""MLP ResNet for MNIST (course hw2)."""
import os
import sys
import time

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.extend(p for p in (os.path.join(_ROOT, "python"), _ROOT) if p not in sys.path)
import numpy as np

import needle as ndl
import needle.nn as nn
from apps.training import classification_epoch

np.random.seed(0)


def ResidualBlock(dim, hidden_dim, norm=nn.BatchNorm1d, drop_prob=0.1):
    return nn.Sequential(
        nn.Residual(nn.Sequential(
            nn.Linear(dim, hidden_dim), norm(hidden_dim), nn.ReLU(), nn.Dropout(drop_prob),
            nn.Linear(hidden_dim, dim), norm(dim))),
        nn.ReLU())


def MLPResNet(dim, hidden_dim=100, num_blocks=3, num_classes=10, norm=nn.BatchNorm1d,
              drop_prob=0.1):
    return nn.Sequential(
        nn.Linear(dim, hidden_dim), nn.ReLU(),
        *[ResidualBlock(hidden_dim, hidden_dim // 2, norm, drop_prob) for _ in range(num_blocks)],
        nn.Linear(hidden_dim, num_classes))


def epoch(dataloader, model, opt=None):
    """One pass; trains when ``opt`` is given. -> (error rate, mean loss per sample)."""
    np.random.seed(4)
    r = classification_epoch(dataloader, model, opt, progress=False, flatten=True)
    return r["err"], r["loss"]


def mnist_dataset(data_dir, split="train", transforms=None):
    """MNISTDataset of ``data_dir/{split}-{images-idx3,labels-idx1}-ubyte.gz``; split is
    "train" or "t10k"."""
    return ndl.data.MNISTDataset(os.path.join(data_dir, f"{split}-images-idx3-ubyte.gz"),
                                 os.path.join(data_dir, f"{split}-labels-idx1-ubyte.gz"),
                                 transforms)


def train_mnist(batch_size=100, epochs=10, optimizer=ndl.optim.Adam, lr=0.001,
                weight_decay=0.001, hidden_dim=100, data_dir="data"):
    """Train MLPResNet(784, hidden_dim) on MNIST train, evaluate on t10k.
    -> (train_err, train_loss, test_err, test_loss) of the last epoch."""
    np.random.seed(4)
    train_loader = ndl.data.DataLoader(mnist_dataset(data_dir, "train"), batch_size, shuffle=True)
    test_loader = ndl.data.DataLoader(mnist_dataset(data_dir, "t10k"), batch_size)
    model = MLPResNet(784, hidden_dim)
    opt = optimizer(model.parameters(), lr=lr, weight_decay=weight_decay)
    train_err = train_loss = float("nan")
    for _ in range(epochs):
        train_err, train_loss = epoch(train_loader, model, opt)
    test_err, test_loss = epoch(test_loader, model)
    return train_err, train_loss, test_err, test_loss


if __name__ == "__main__":
    from apps.train import default_data_dir
    t0 = time.time()
    print(train_mnist(data_dir=default_data_dir("mnist")), f"{time.time() - t0:.1f}s")
