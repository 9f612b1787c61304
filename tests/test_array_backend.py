"""One place for the numpy mode: only ``backend_selection.py``, ``backend_numpy.py`` and
``ops/array_backend.py`` may tell ``NEEDLE_BACKEND=np`` from ``nd``; autograd, the ops,
the optimizers and the layers call ``array_backend`` instead of testing the mode.

Runs in both modes (``NEEDLE_BACKEND=np python -m pytest tests/test_array_backend.py``):
a source scan, imports in a fresh interpreter from every entry point, and the
``array_backend`` functions whose numpy and NDArray spellings differ, against numpy.
"""
import ast
import os
import subprocess
import sys

import numpy as np
import pytest

import needle as ndl
from needle.ops import array_backend as B

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "python", "needle")
# The files that know the modes: the selection, the numpy device, the array functions,
# and the NDArray backend itself (which knows nothing of numpy mode).
ALLOWED = {"backend_selection.py", "backend_numpy.py", os.path.join("ops", "array_backend.py")}
ALLOWED_DIRS = ("backend_ndarray",)
MODE_NAMES = {"NP", "_ND", "BACKEND"}
MODULE_NAMES = {"numpy", "np"}


def mode_tests(source, filename="<source>"):
    """(line, what) for every place that tests the backend mode: a use of NP / _ND /
    BACKEND (outside f-string text), an import of them, ``... is numpy`` style
    comparisons, ``array_api`` in a comparison, and the NEEDLE_BACKEND variable read."""
    tree = ast.parse(source, filename)
    in_fstring = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):  # an error message naming the mode is no test of it
            in_fstring.update(id(n) for n in ast.walk(node))
    found = []
    for node in ast.walk(tree):
        if id(node) in in_fstring:
            continue
        if isinstance(node, ast.Name) and node.id in MODE_NAMES:
            found.append((node.lineno, node.id))
        elif isinstance(node, ast.Attribute) and node.attr in MODE_NAMES:
            found.append((node.lineno, "." + node.attr))
        elif isinstance(node, ast.ImportFrom) and any(a.name in MODE_NAMES for a in node.names):
            found.append((node.lineno, "import of " + ", ".join(a.name for a in node.names)))
        elif isinstance(node, ast.Compare):
            sides = [node.left] + node.comparators
            if any(isinstance(s, ast.Name) and s.id in MODULE_NAMES | {"array_api"} for s in sides):
                found.append((node.lineno, "comparison with the array module"))
        elif isinstance(node, ast.Constant) and node.value == "NEEDLE_BACKEND":
            found.append((node.lineno, "reads NEEDLE_BACKEND"))
    return sorted(found)


def test_scanner_finds_every_form_of_mode_test():
    src = (
        "from .backend_selection import BACKEND\n"
        "if B.NP:\n    pass\n"
        "x = 1 if _ND else 2\n"
        "ok = array_api is numpy\n"
        "mode = os.environ.get('NEEDLE_BACKEND')\n"
        "raise ValueError(f'not available with NEEDLE_BACKEND={backend_selection.BACKEND!r}')\n"
    )
    assert [line for line, _ in mode_tests(src)] == [1, 2, 4, 5, 6]


def _package_files():
    for dirpath, _, names in os.walk(PACKAGE):
        rel_dir = os.path.relpath(dirpath, PACKAGE)
        if rel_dir.split(os.sep)[0] in ALLOWED_DIRS:
            continue
        for name in sorted(names):
            rel = os.path.normpath(os.path.join(rel_dir, name))
            if name.endswith(".py") and rel not in ALLOWED:
                yield rel


def test_only_array_backend_tests_the_mode():
    files = list(_package_files())
    assert os.path.join("ops", "ops_mathematic.py") in files and "autograd.py" in files
    offenders = []
    for rel in files:
        with open(os.path.join(PACKAGE, rel), encoding="utf-8") as f:
            offenders += [f"{rel}:{line}: {what}" for line, what in mode_tests(f.read(), rel)]
    assert not offenders, "backend mode tested outside ops/array_backend.py:\n" + "\n".join(offenders)


@pytest.mark.parametrize("mode", ["nd", "np"])
@pytest.mark.parametrize("first", ["needle", "needle.autograd", "needle.ops.array_backend", "needle.optim"])
def test_fresh_interpreter_imports(mode, first):
    """autograd imports array_backend after its classes (needle.ops imports autograd):
    any module imported first must give a working package in both modes."""
    code = (
        f"import {first}\n"
        "import needle as ndl, numpy as np\n"
        "x = ndl.Tensor(np.arange(4.0).reshape(2, 2))\n"
        "(x @ x).sum().backward()\n"
        "print(ndl.ops.array_backend.NP, x.grad.numpy().sum())\n"
    )
    env = dict(os.environ, NEEDLE_BACKEND=mode, PYTHONPATH=os.path.join(ROOT, "python"))
    res = subprocess.run([sys.executable, "-W", "ignore", "-c", code], env=env, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    # d sum(X @ X) / dX = 1 X^T + X^T 1: row sums plus column sums of X = [[0, 1], [2, 3]]
    assert res.stdout.split() == [str(mode == "np"), "24.0"]


# ---- the functions with two spellings, in the current mode, against numpy --------------
def _arr(x):
    return B.array(np.asarray(x), ndl.backend_selection.default_device())


def test_compact_keeps_zero_d_and_transposed_shapes():
    a = _arr(np.array(2.5))
    assert tuple(B.compact(a).shape) == ()
    t = B.permute(_arr(np.arange(6.0).reshape(2, 3)), (1, 0))
    np.testing.assert_array_equal(B.to_numpy(B.compact(t)), np.arange(6.0).reshape(2, 3).T)


def test_to_numpy_is_a_copy():
    a = _arr(np.ones(3))
    host = B.to_numpy(a)
    host[0] = 7.0
    np.testing.assert_array_equal(B.to_numpy(a), np.ones(3))


def test_set_rows_last_repeated_row_wins():
    a = _arr(np.zeros((4, 3), dtype=np.float32))
    rows = np.array([2, 0, 2], dtype=np.int64)
    values = _arr(np.arange(9, dtype=np.float32).reshape(3, 3))
    B.set_rows(a, rows, 3, values)
    expect = np.zeros((4, 3), dtype=np.float32)
    for r, v in zip(rows, np.arange(9, dtype=np.float32).reshape(3, 3)):
        expect[r] = v  # sequential assignment: the last write to a row stays
    np.testing.assert_array_equal(B.to_numpy(a), expect)


def test_gather_and_scatter_rows_match_numpy():
    table = np.random.RandomState(0).randn(5, 2).astype(np.float32)
    idx = np.array([4, 0, 4, 1], dtype=np.int64)
    a = _arr(table)
    out = B.gather_rows(a, B.index_array(idx, a))
    np.testing.assert_array_equal(B.to_numpy(out), table[idx])
    back = B.scatter_add_rows(out, B.index_array(idx, a), 5)
    expect = np.zeros_like(table)
    np.add.at(expect, idx, table[idx])
    np.testing.assert_allclose(B.to_numpy(back), expect, rtol=1e-6)


def test_where_and_concatenate_match_numpy():
    rs = np.random.RandomState(1)
    x, y = rs.randn(3, 4).astype(np.float32), rs.randn(3, 4).astype(np.float32)
    cond = x > 0
    np.testing.assert_array_equal(B.to_numpy(B.where(_arr(cond), _arr(x), _arr(y))), np.where(cond, x, y))
    np.testing.assert_array_equal(B.to_numpy(B.concatenate([_arr(x), _arr(y)], 1)), np.concatenate([x, y], 1))
    parts = B.split(_arr(x), 1)
    assert len(parts) == 4
    for i, p in enumerate(parts):
        np.testing.assert_array_equal(B.to_numpy(p), x[:, i])


def test_softmax_xent_matches_numpy():
    rs = np.random.RandomState(2)
    z = rs.randn(6, 5)
    labels = np.array([0, 4, 2, 2, 1, 3])
    a = _arr(z)
    idx = B.index_array(labels, a)
    loss, lse = B.softmax_xent(a, idx)
    ref_lse = np.log(np.exp(z).sum(1))
    np.testing.assert_allclose(float(B.to_numpy(loss)), np.mean(ref_lse - z[np.arange(6), labels]), rtol=1e-5)
    grad = B.softmax_xent_grad(a, idx, lse, _arr(np.array(2.0)))
    p = np.exp(z - ref_lse[:, None])
    p[np.arange(6), labels] -= 1
    np.testing.assert_allclose(B.to_numpy(grad), p * 2.0 / 6, rtol=1e-5, atol=1e-7)


def test_mismatched_inputs_name_the_op():
    with pytest.raises(TypeError, match=r"EWiseAdd: input 1 must be a Tensor"):
        ndl.add(ndl.Tensor([1.0]), [1.0])


def test_cross_entropy_takes_numpy_labels():
    """A backend array as target: numpy's own arrays in np mode (once an AttributeError)."""
    import needle.nn.functional as F

    rs = np.random.RandomState(3)
    z = rs.randn(4, 3)
    labels = np.array([2, 0, 1, 2])
    loss = F.cross_entropy(ndl.Tensor(z), labels)
    lse = np.log(np.exp(z).sum(1))
    np.testing.assert_allclose(loss.item(), np.mean(lse - z[np.arange(4), labels]), rtol=1e-5)
