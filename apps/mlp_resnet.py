"""MLP ResNet for MNIST (course hw2)."""
import os
import sys
import time

sys.path.append(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                             "python"))
import numpy as np

import needle as ndl
import needle.nn as nn

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
    if opt is not None:
        model.train()
    else:
        model.eval()
    loss_fn = nn.SoftmaxLoss()
    errors, total_loss, count = 0.0, 0.0, 0
    for X, y in dataloader:
        logits = model(X.reshape((X.shape[0], int(np.prod(X.shape[1:])))))
        loss = loss_fn(logits, y)
        if opt is not None:
            opt.reset_grad()
            loss.backward()
            opt.step()
        n = y.shape[0]
        errors += float((logits.numpy().argmax(axis=1) != y.numpy()).sum())
        total_loss += float(loss.numpy()) * n
        count += n
    return errors / count, total_loss / count


def train_mnist(batch_size=100, epochs=10, optimizer=ndl.optim.Adam, lr=0.001,
                weight_decay=0.001, hidden_dim=100, data_dir="data"):
    np.random.seed(4)
    train_set = ndl.data.MNISTDataset(os.path.join(data_dir, "train-images-idx3-ubyte.gz"),
                                      os.path.join(data_dir, "train-labels-idx1-ubyte.gz"))
    test_set = ndl.data.MNISTDataset(os.path.join(data_dir, "t10k-images-idx3-ubyte.gz"),
                                     os.path.join(data_dir, "t10k-labels-idx1-ubyte.gz"))
    train_loader = ndl.data.DataLoader(train_set, batch_size, shuffle=True)
    test_loader = ndl.data.DataLoader(test_set, batch_size)
    model = MLPResNet(784, hidden_dim)
    opt = optimizer(model.parameters(), lr=lr, weight_decay=weight_decay)
    for _ in range(epochs):
        train_err, train_loss = epoch(train_loader, model, opt)
    test_err, test_loss = epoch(test_loader, model)
    return train_err, train_loss, test_err, test_loss


if __name__ == "__main__":
    t0 = time.time()
    print(train_mnist(data_dir=os.environ.get("NEEDLE_DATA", "../shared/data") + "/mnist"),
          f"{time.time() - t0:.1f}s")
