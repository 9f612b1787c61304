"""Model zoo: ResNet9 for CIFAR-10 and a word-level LanguageModel (RNN/LSTM/Transformer)."""
import os
import sys

sys.path.append(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                             "python"))
import numpy as np

import needle as ndl
import needle.nn as nn

np.random.seed(0)


class ConvBN(ndl.nn.Module):
    """Conv(a, b, k, stride) -> BatchNorm2d(b) -> ReLU."""

    def __init__(self, in_channels, out_channels, kernel_size, stride, device=None,
                 dtype="float32"):
        super().__init__()
        self.conv = nn.Conv(in_channels, out_channels, kernel_size, stride=stride,
                            device=device, dtype=dtype)
        self.bn = nn.BatchNorm2d(out_channels, device=device, dtype=dtype)
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.bn(self.conv(x)))


class ResNet9(ndl.nn.Module):
    """CIFAR-10 ResNet9 (431,946 parameters); input NCHW (N, 3, 32, 32) -> logits (N, 10)."""

    def __init__(self, device=None, dtype="float32"):
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        self.model = nn.Sequential(
            ConvBN(3, 16, 7, 4, **kw),
            ConvBN(16, 32, 3, 2, **kw),
            nn.Residual(nn.Sequential(ConvBN(32, 32, 3, 1, **kw), ConvBN(32, 32, 3, 1, **kw))),
            ConvBN(32, 64, 3, 2, **kw),
            ConvBN(64, 128, 3, 2, **kw),
            nn.Residual(nn.Sequential(ConvBN(128, 128, 3, 1, **kw),
                                      ConvBN(128, 128, 3, 1, **kw))),
            nn.Flatten(),
            nn.Linear(128, 128, **kw),
            nn.ReLU(),
            nn.Linear(128, 10, **kw),
        )

    def forward(self, x):
        return self.model(x)


class LanguageModel(nn.Module):
    """Embedding -> RNN / LSTM / Transformer -> Linear over the vocabulary.

    forward(x (seq_len, bs), h=None) -> (logits (seq_len*bs, output_size), h).
    """

    def __init__(self, embedding_size, output_size, hidden_size, num_layers=1,
                 seq_model="rnn", seq_len=40, device=None, dtype="float32"):
        super().__init__()
        if seq_model not in ("rnn", "lstm", "transformer"):
            raise ValueError(f"LanguageModel: seq_model must be 'rnn', 'lstm' or 'transformer', "
                             f"got {seq_model!r}")
        self.embedding_size = embedding_size
        self.output_size = output_size
        self.hidden_size = hidden_size
        self.seq_model_name = seq_model
        self.embedding = nn.Embedding(output_size, embedding_size, device=device, dtype=dtype)
        if seq_model == "rnn":
            self.seq_model = nn.RNN(embedding_size, hidden_size, num_layers, device=device,
                                    dtype=dtype)
            out_features = hidden_size
        elif seq_model == "lstm":
            self.seq_model = nn.LSTM(embedding_size, hidden_size, num_layers, device=device,
                                     dtype=dtype)
            out_features = hidden_size
        else:
            self.seq_model = nn.Transformer(embedding_size, hidden_size, num_layers,
                                            sequence_len=seq_len, device=device, dtype=dtype)
            out_features = embedding_size
        self.linear = nn.Linear(out_features, output_size, device=device, dtype=dtype)

    def forward(self, x, h=None):
        seq_len, bs = x.shape
        emb = self.embedding(x)
        out, h = self.seq_model(emb, h)
        out = self.linear(out.reshape((seq_len * bs, out.shape[-1])))
        return out, h


class SmallConvNet(nn.Module):
    """Conv-BN-ReLU-MaxPool twice, then Linear: a small NCHW image classifier.

    For (N, C, S, S) input with S divisible by 4 (e.g. 1 x 8 x 8 digits).
    """

    def __init__(self, in_channels=1, num_classes=10, image_size=8, width=16, device=None,
                 dtype="float32"):
        super().__init__()
        if image_size % 4:
            raise ValueError(f"SmallConvNet: image_size must be divisible by 4, got {image_size}")
        kw = dict(device=device, dtype=dtype)
        side = image_size // 4
        self.features = nn.Sequential(
            nn.Conv(in_channels, width, 3, **kw), nn.BatchNorm2d(width, **kw), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv(width, 2 * width, 3, **kw), nn.BatchNorm2d(2 * width, **kw), nn.ReLU(),
            nn.MaxPool2d(2))
        self.classifier = nn.Sequential(nn.Flatten(),
                                        nn.Linear(2 * width * side * side, num_classes, **kw))

    def forward(self, x):
        return self.classifier(self.features(x))


if __name__ == "__main__":
    model = ResNet9()
    print(sum(int(np.prod(p.shape)) for p in model.parameters()), "parameters")
