"""Course training helpers: MNIST softmax/2-layer net, CIFAR-10 and PTB epochs."""
import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.extend(p for p in (os.path.join(_ROOT, "python"), _ROOT) if p not in sys.path)
import numpy as np

import needle as ndl
import needle.nn as nn
from apps.models import *
from apps.training import classification_epoch, ptb_epoch

device = ndl.cpu()


def parse_mnist(image_filename, label_filename):
    """-> (X float32 (N, 784) in [0, 1], y uint8 (N,)) from gzip idx files."""
    return ndl.data.mnist_dataset.parse_mnist(image_filename, label_filename)


def softmax_loss(Z, y_one_hot):
    """Mean over rows of ``log(sum(exp(Z), 1)) - sum(Z * y_one_hot, 1)`` (Tensors)."""
    n = Z.shape[0]
    lse = ndl.log(ndl.exp(Z).sum(axes=(1,)))
    return (lse - (Z * y_one_hot).sum(axes=(1,))).sum() / n


def nn_epoch(X, y, W1, W2, lr=0.1, batch=100):
    """One SGD epoch of ``relu(X @ W1) @ W2`` on sequential minibatches; -> (W1, W2)."""
    num_classes = W2.shape[1]
    for start in range(0, X.shape[0], batch):
        xb = ndl.Tensor(X[start:start + batch], requires_grad=False)
        yb = y[start:start + batch]
        y_one_hot = np.zeros((yb.shape[0], num_classes), dtype=np.float32)
        y_one_hot[np.arange(yb.shape[0]), yb] = 1
        loss = softmax_loss(ndl.relu(xb @ W1) @ W2, ndl.Tensor(y_one_hot, requires_grad=False))
        loss.backward()
        W1 = ndl.Tensor(W1.numpy() - lr * W1.grad.numpy())
        W2 = ndl.Tensor(W2.numpy() - lr * W2.grad.numpy())
    return W1, W2


def loss_err(h, y):
    """Helper function to compute both loss and error"""
    y_one_hot = np.zeros((y.shape[0], h.shape[-1]))
    y_one_hot[np.arange(y.size), y] = 1
    y_ = ndl.Tensor(y_one_hot)
    return softmax_loss(h, y_).numpy(), np.mean(h.numpy().argmax(axis=1) != y)


### CIFAR-10 training ###

def epoch_general_cifar10(dataloader, model, loss_fn=nn.SoftmaxLoss(), opt=None):
    """One pass over ``dataloader``; trains when ``opt`` is given. -> (avg_acc, avg_loss),
    the loss averaged per sample."""
    np.random.seed(4)
    r = classification_epoch(dataloader, model, opt, progress=False, loss_fn=loss_fn)
    return r["acc"], r["loss"]


def train_cifar10(model, dataloader, n_epochs=1, optimizer=ndl.optim.Adam,
                  lr=0.001, weight_decay=0.001, loss_fn=nn.SoftmaxLoss):
    """Train for ``n_epochs``; -> (avg_acc, avg_loss) of the last epoch."""
    np.random.seed(4)
    opt = optimizer(model.parameters(), lr=lr, weight_decay=weight_decay)
    avg_acc, avg_loss = 0.0, 0.0
    for _ in range(n_epochs):
        avg_acc, avg_loss = epoch_general_cifar10(dataloader, model, loss_fn(), opt)
    return avg_acc, avg_loss


def evaluate_cifar10(model, dataloader, loss_fn=nn.SoftmaxLoss):
    """-> (avg_acc, avg_loss) in eval mode."""
    np.random.seed(4)
    return epoch_general_cifar10(dataloader, model, loss_fn())


### PTB training ###

def epoch_general_ptb(data, model, seq_len=40, loss_fn=nn.SoftmaxLoss(), opt=None,
                      clip=None, device=None, dtype="float32"):
    """One pass over batchified ``data`` (nbatch, bs) in chunks of ``seq_len``; the hidden
    state is carried (detached) between chunks. -> (avg_acc, avg_loss), the loss averaged
    per target token."""
    np.random.seed(4)
    r = ptb_epoch(data, model, seq_len, opt, clip, device, progress=False, dtype=dtype,
                  loss_fn=loss_fn)
    return r["acc"], r["loss"]


def train_ptb(model, data, seq_len=40, n_epochs=1, optimizer=ndl.optim.SGD,
              lr=4.0, weight_decay=0.0, loss_fn=nn.SoftmaxLoss, clip=None,
              device=None, dtype="float32"):
    """Train for ``n_epochs``; -> (avg_acc, avg_loss) of the last epoch."""
    np.random.seed(4)
    opt = optimizer(model.parameters(), lr=lr, weight_decay=weight_decay)
    avg_acc, avg_loss = 0.0, 0.0
    for _ in range(n_epochs):
        avg_acc, avg_loss = epoch_general_ptb(data, model, seq_len, loss_fn(), opt, clip,
                                              device, dtype)
    return avg_acc, avg_loss


def evaluate_ptb(model, data, seq_len=40, loss_fn=nn.SoftmaxLoss,
                 device=None, dtype="float32"):
    """-> (avg_acc, avg_loss) in eval mode."""
    np.random.seed(4)
    return epoch_general_ptb(data, model, seq_len, loss_fn(), None, None, device, dtype)
