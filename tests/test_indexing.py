"""PyTorch-style indexing: ``needle.ops.tensor_getitem`` / ``tensor_setitem``.

Every index form against PyTorch (CPU) on the same data: forward values, and the
gradient of ``sum(x[idx] * w)`` for a random ``w`` (a wrong permutation of the
gradient would be caught); float64 gradchecks (and grad of grad); setitem against
numpy; the bad-input errors.
"""
import numpy as np
import pytest
import torch

import needle as ndl
from needle import autograd
from needle.ops import tensor_getitem, tensor_setitem
from needle.ops.ops_indexing import IndexGather, IndexTypeError, IndexView
from devices import DEVICES, nd_only

SHAPE = (3, 4, 5)
DTYPES = ["float32", "float64"]


def _data(shape=SHAPE, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


def _int_tensor(values, device):
    return ndl.Tensor(np.array(values, dtype=np.int64), device=device, requires_grad=False)


def _bool_tensor(values, device):
    return ndl.Tensor(np.array(values, dtype=bool), device=device, requires_grad=False)


# name -> index builder (x as numpy, device) -> the needle index. PyTorch gets the same
# index with Tensors / numpy arrays converted by _to_torch.
CASES = {
    # basic: views
    "int": lambda x, d: 1,
    "neg_int": lambda x, d: -1,
    "int_pair": lambda x, d: (1, -2),
    "all_ints_0d": lambda x, d: (2, 3, 4),
    "slices_with_steps": lambda x, d: (slice(None), slice(0, 4, 3), slice(1, None, 2)),
    "negative_bounds": lambda x, d: (slice(-2, None), slice(None, -1)),
    "empty_slice": lambda x, d: (slice(2, 1),),
    "ellipsis_int": lambda x, d: (Ellipsis, 1),
    "none_ellipsis_int": lambda x, d: (None, Ellipsis, 1),
    "mixed_basic": lambda x, d: (slice(None), None, 0, slice(0, 5, 3)),
    "trailing_none": lambda x, d: (1, Ellipsis, None),
    "zero_d_tensor_as_int": lambda x, d: (_int_tensor(1, d), slice(1, 3)),
    # advanced: gathers
    "list": lambda x, d: [0, 2],
    "cols": lambda x, d: (slice(None), [0, 2]),
    "pairs": lambda x, d: ([0, 1], [2, 3]),
    "int64_tensor": lambda x, d: _int_tensor([[2, 0], [1, 2]], d),
    "int32_numpy": lambda x, d: np.array([1, -1], dtype=np.int32),
    "negative_list": lambda x, d: (slice(None), [-1, 0, -4]),
    "repeated": lambda x, d: [1, 1, 0, 1],
    "repeated_pairs": lambda x, d: ([0, 0, 2, 0], [1, 1, 1, 1]),
    "broadcast_arrays": lambda x, d: ([[0], [2]], slice(None), [1, 4, 0]),
    "int_slice_array": lambda x, d: (0, slice(None), [1, 2]),  # PyTorch: (4, 2); numpy: (2, 4)
    "array_int_array": lambda x, d: ([0, 2], 1, [3, 3]),
    "array_none_array": lambda x, d: ([0, 1], None, [0, 1]),
    "none_ellipsis_array": lambda x, d: (None, Ellipsis, [1, 0]),
    "ellipsis_array_int": lambda x, d: (Ellipsis, [0, 1], 0),
    "stepped_slice_array": lambda x, d: (slice(0, 3, 2), [3, 0], slice(1, None, 2)),
    "mask_tensor": lambda x, d: _bool_tensor(x > 0, d),  # x[x > 0]
    "mask_numpy_rows": lambda x, d: np.array([True, False, True]),
    "mask_list": lambda x, d: [True, False, True],
    "mask_middle": lambda x, d: (slice(None), x[0, :, 0] > 0),
    "mask_2d_then_int": lambda x, d: (x[:, :, 0] > 0, 1),
    "mask_and_array": lambda x, d: (np.array([True, False, True]), slice(None), [4, 2]),
    "bool_scalar": lambda x, d: (slice(None), True, [0, 1]),
    "empty_list": lambda x, d: [],
    "empty_cols": lambda x, d: (slice(None), []),
    "empty_mask": lambda x, d: _bool_tensor(x > 1e9, d),
}
BASIC = {"int", "neg_int", "int_pair", "all_ints_0d", "slices_with_steps", "negative_bounds", "empty_slice",
         "ellipsis_int", "none_ellipsis_int", "mixed_basic", "trailing_none", "zero_d_tensor_as_int"}


def _to_torch(idx):
    if isinstance(idx, tuple):
        return tuple(_to_torch(i) for i in idx)
    if isinstance(idx, ndl.Tensor):
        return torch.from_numpy(np.array(idx.numpy()))
    if isinstance(idx, np.ndarray):
        return torch.from_numpy(idx)
    return idx


def _leaf(x, device, dtype, requires_grad=True):
    return ndl.Tensor(x, device=device, dtype=dtype, requires_grad=requires_grad)


def _check_against_torch(fn, x, idx, device, dtype, seed=1):
    """fn(needle x) vs x_torch[idx]: values, and d sum(out * w) / dx."""
    t = _leaf(x, device, dtype)
    out = fn(t, idx)
    xt = torch.tensor(x, dtype=getattr(torch, dtype), requires_grad=True)
    ref = xt[_to_torch(idx)]
    assert out.shape == tuple(ref.shape)
    assert out.dtype == dtype
    tol = dict(rtol=1e-6, atol=1e-6) if dtype == "float32" else dict(rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(out.numpy(), ref.detach().numpy(), **tol)
    w = np.random.default_rng(seed).standard_normal(tuple(ref.shape))
    (out * ndl.Tensor(w, device=device, dtype=dtype, requires_grad=False)).sum().backward()
    (ref * torch.tensor(w, dtype=ref.dtype)).sum().backward()
    assert t.grad.shape == x.shape
    np.testing.assert_allclose(t.grad.numpy(), xt.grad.numpy(), **tol)
    return out


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", sorted(CASES))
def test_getitem_matches_torch(name, device, dtype):
    x = _data()
    out = _check_against_torch(tensor_getitem, x, CASES[name](x, device), device, dtype)
    assert isinstance(out.op, IndexView if name in BASIC else IndexGather)


EDGES = [
    ((), ()), ((), None), ((), Ellipsis), ((), True), ((), False), ((), (None, None)),
    ((0, 3), (slice(None), [0, 1])), ((0, 3), []), ((0, 3), (slice(None), 1)), ((3, 0), [0, 2, 0]),
    ((1, 1, 4), (0, [0, 0], slice(1, 3))),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape, idx", EDGES, ids=[f"{s}-{i}" for s, i in EDGES])
def test_zero_d_and_size_zero(shape, idx, device):
    _check_against_torch(tensor_getitem, _data(shape), idx, device, "float64")


@nd_only
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision(dtype, device):
    x = np.arange(12.0).reshape(3, 4)
    t = ndl.Tensor(x, device=device, dtype=dtype, requires_grad=True)
    out = tensor_getitem(t, ([0, 0, 2], slice(1, 3)))
    assert out.dtype == dtype
    np.testing.assert_array_equal(out.numpy().astype(np.float64), x[[0, 0, 2], 1:3])
    out.sum().backward()
    expect = np.zeros((3, 4))
    np.add.at(expect, ([0, 0, 2], slice(1, 3)), 1.0)
    np.testing.assert_array_equal(t.grad.numpy().astype(np.float64), expect)


def test_public_names():
    """Reachable as needle.ops.X and needle.X; the course's get_item / GetItem stay."""
    for name in ("tensor_getitem", "tensor_setitem", "get_item", "GetItem", "Scatter", "IndexView", "IndexGather"):
        assert getattr(ndl.ops, name) is getattr(ndl, name)
    assert ndl.ops.tensor_getitem is tensor_getitem and ndl.ops.tensor_setitem is tensor_setitem


@pytest.mark.parametrize("device", DEVICES)
def test_course_get_item_unchanged(device):
    x = _data()
    t = _leaf(x, device, "float32")
    out = ndl.ops.get_item(t, (1, slice(1, 4, 2)))
    assert isinstance(out.op, ndl.ops.GetItem)
    np.testing.assert_allclose(out.numpy(), x[1, 1:4:2].astype(np.float32))
    out.sum().backward()
    expect = np.zeros(SHAPE, np.float32)
    expect[1, 1:4:2] = 1
    np.testing.assert_array_equal(t.grad.numpy(), expect)


# ---- non-compact inputs and layout ---------------------------------------------
LAYOUTS = {
    "permuted": (lambda t: ndl.transpose(t, (0, 2)), lambda a: a.transpose(0, 2)),
    "stepped_view": (lambda t: tensor_getitem(t, (slice(None), slice(None, None, 2))), lambda a: a[:, ::2]),
    "offset_view": (lambda t: tensor_getitem(t, (slice(1, None), slice(1, None))), lambda a: a[1:, 1:]),
    "broadcast": (lambda t: ndl.broadcast_to(tensor_getitem(t, (slice(None), slice(0, 1))), (3, 4, 5)),
                  lambda a: a[:, 0:1].expand(3, 4, 5)),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("idx", [(1, slice(None, None, 2)), (None, Ellipsis, 0), (slice(None), [0, 0, 1]),
                                 ([1, 0], [1, 1]), "mask"], ids=["basic", "none", "cols", "pairs", "mask"])
def test_non_compact_inputs(layout, idx, device):
    make, make_torch = LAYOUTS[layout]
    x = _data()
    t = _leaf(x, device, "float32")
    xt = torch.tensor(x, dtype=torch.float32, requires_grad=True)
    v, vt = make(t), make_torch(xt)
    if isinstance(idx, str):
        mask = vt.detach().numpy() > 0
        idx, tidx = _bool_tensor(mask, device), torch.from_numpy(mask)
    else:
        tidx = idx
    out, ref = tensor_getitem(v, idx), vt[tidx]
    np.testing.assert_allclose(out.numpy(), ref.detach().numpy(), rtol=1e-6)
    w = np.random.default_rng(3).standard_normal(tuple(ref.shape))
    (out * ndl.Tensor(w, device=device, dtype="float32", requires_grad=False)).sum().backward()
    (ref * torch.tensor(w, dtype=torch.float32)).sum().backward()
    np.testing.assert_allclose(t.grad.numpy(), xt.grad.numpy(), rtol=1e-5, atol=1e-6)


@nd_only
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", sorted(BASIC))
def test_basic_index_is_a_view(name, device):
    x = _data()
    t = _leaf(x, device, "float32", requires_grad=False)
    idx = CASES[name](x, device)
    out = tensor_getitem(t, idx)
    assert out.realize_cached_data()._handle is t.realize_cached_data()._handle
    tensor_setitem(t, Ellipsis, 7.0)  # the view sees writes to its base
    np.testing.assert_array_equal(out.numpy(), np.full(out.shape, 7.0, np.float32))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", ["int64", "bool"])
def test_getitem_of_integer_and_bool_tensors(device, dtype):
    x = (np.arange(60).reshape(SHAPE) % 7).astype(dtype)
    t = ndl.Tensor(x, device=device, dtype=dtype, requires_grad=False)
    mask = x > 0 if dtype == "int64" else x
    for idx in [(1, slice(None, None, 2)), (slice(None), [0, 3, 0]), ([0, 2], [1, 1]), mask]:
        out = tensor_getitem(t, idx)
        assert out.dtype == dtype and not out.requires_grad
        np.testing.assert_array_equal(out.numpy(), x[idx])


# ---- gradcheck (float64) -------------------------------------------------------
GRADCHECK = ["mixed_basic", "none_ellipsis_int", "cols", "repeated_pairs", "broadcast_arrays", "int_slice_array",
             "mask_tensor", "mask_and_array", "array_none_array"]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", GRADCHECK)
def test_gradcheck_float64(name, device):
    x = _data()
    idx = CASES[name](x, device)
    t = _leaf(x, device, "float64")
    assert autograd.gradcheck(lambda a: tensor_getitem(a, idx), t, atol=1e-8, rtol=1e-6)


def _grad_of(fn, seed=1):
    """x -> d/dx sum(fn(x) * w): its own gradient is a second derivative."""

    def f(x):
        x = x if x.requires_grad else ndl.Tensor(x, requires_grad=True)
        out = fn(x)
        w = np.random.default_rng(seed).standard_normal(out.shape)
        (out * ndl.Tensor(w, device=x.device, dtype=x.dtype, requires_grad=False)).sum().backward()
        return x.grad

    return f


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["mixed_basic", "repeated_pairs", "mask_tensor"])
def test_grad_of_grad_float64(name, device):
    x = _data()
    idx = CASES[name](x, device)
    t = _leaf(x, device, "float64")
    fn = lambda a: tensor_getitem(a, idx) ** 2  # noqa: E731
    assert autograd.gradcheck(_grad_of(fn), t, atol=1e-8, rtol=1e-6)


# ---- setitem ---------------------------------------------------------------------
SETITEM = {
    "int_scalar": (lambda x, d: 1, lambda shape: 7.0),
    "slice_broadcast_row": (lambda x, d: (slice(None), 0), lambda shape: np.arange(5.0)),
    "ellipsis_full": (lambda x, d: (Ellipsis, 1), lambda shape: np.arange(12.0).reshape(3, 4)),
    "none_leading_ones": (lambda x, d: (None, 0, slice(1, 3)), lambda shape: np.ones((1, 1, 2, 5)) * 3),
    "stepped": (lambda x, d: (slice(0, 3, 2), slice(None), slice(1, None, 3)), lambda shape: -np.arange(4.0)[:, None]),
    "list_rows": (lambda x, d: [0, 2], lambda shape: np.arange(40.0).reshape(2, 4, 5)),
    "cols_scalar": (lambda x, d: (slice(None), [0, 2]), lambda shape: 5.0),
    "pairs": (lambda x, d: ([0, 1], [2, 3]), lambda shape: np.array([[10.0], [20.0]])),
    "int_tensor": (lambda x, d: _int_tensor([2, 0], d), lambda shape: 9.0),
    "repeated_last_wins": (lambda x, d: [1, 1], lambda shape: np.stack([np.full((4, 5), 1.0), np.full((4, 5), 2.0)])),
    "mask_scalar": (lambda x, d: _bool_tensor(x > 0, d), lambda shape: 0.0),
    "mask_values": (lambda x, d: x > 0, lambda shape: np.arange(float(shape[0]))),
    "mask_middle": (lambda x, d: (slice(None), x[0, :, 0] > 0), lambda shape: 4.0),
    "bool_scalar": (lambda x, d: (0, True), lambda shape: np.arange(20.0).reshape(4, 5)),
    "empty": (lambda x, d: (slice(None), []), lambda shape: 1.0),
}


def _as_value(v, kind, device, dtype):
    if kind == "tensor" and isinstance(v, np.ndarray):
        return ndl.Tensor(v, device=device, dtype="float64", requires_grad=False)  # converted to x's dtype
    return v


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", ["float32", "int64"])
@pytest.mark.parametrize("kind", ["numpy", "tensor"])
@pytest.mark.parametrize("name", sorted(SETITEM))
def test_setitem_matches_numpy(name, kind, dtype, device):
    x = np.round(_data() * 10)
    index_of, value_of = SETITEM[name]
    idx = index_of(x, device)
    ref = x.astype(dtype)
    np_idx = tuple(i.numpy() if isinstance(i, ndl.Tensor) else i for i in idx) if isinstance(idx, tuple) else (
        idx.numpy() if isinstance(idx, ndl.Tensor) else idx)
    value = value_of(ref[np_idx].shape)
    ref[np_idx] = value
    t = ndl.Tensor(x, device=device, dtype=dtype, requires_grad=False)
    alias = t.detach()  # shares t's data: the write is in place
    data = t.realize_cached_data()
    assert tensor_setitem(t, idx, _as_value(value, kind, device, dtype)) is t
    assert t.realize_cached_data() is data and t.dtype == dtype
    np.testing.assert_array_equal(t.numpy(), ref)
    np.testing.assert_array_equal(alias.numpy(), ref)


@pytest.mark.parametrize("device", DEVICES)
def test_setitem_torch_placement_and_overlap(device):
    x = _data()
    t = ndl.Tensor(x, device=device, dtype="float32", requires_grad=False)
    xt = torch.tensor(x, dtype=torch.float32)
    v = np.arange(8.0).reshape(4, 2)
    tensor_setitem(t, (0, slice(None), [1, 2]), v)  # (4, 2) in PyTorch's placement
    xt[0, :, [1, 2]] = torch.tensor(v, dtype=torch.float32)
    tensor_setitem(t, slice(1, None), tensor_getitem(t, slice(None, -1)))  # overlapping view of itself
    xt[1:] = xt[:-1].clone()
    np.testing.assert_array_equal(t.numpy(), xt.numpy())


@pytest.mark.parametrize("device", DEVICES)
def test_setitem_bool_tensor(device):
    x = _data() > 0
    t = ndl.Tensor(x, device=device, requires_grad=False)
    tensor_setitem(t, (slice(None), [0, 2]), True)
    tensor_setitem(t, 1, np.zeros(5, dtype=bool))
    x[:, [0, 2]] = True
    x[1] = False
    np.testing.assert_array_equal(t.numpy(), x)


@pytest.mark.parametrize("device", DEVICES)
def test_setitem_requires_grad_rules(device):
    x = _data()
    t = _leaf(x, device, "float32")
    with pytest.raises(RuntimeError, match="leaf Tensor that requires grad is being used in an in-place operation"):
        tensor_setitem(t, 0, 1.0)
    y = t * 2
    with pytest.raises(RuntimeError, match="requires grad is being used in an in-place operation"):
        tensor_setitem(y, 0, 1.0)
    with ndl.autograd.no_grad():  # PyTorch's idiom for initialising a parameter in place
        tensor_setitem(t, (0, [1, 2]), 0.5)
    expect = x.astype(np.float32)
    expect[0, [1, 2]] = 0.5
    np.testing.assert_array_equal(t.numpy(), expect)
    c = ndl.Tensor(x, device=device, requires_grad=False)
    with pytest.raises(RuntimeError, match="value requires grad"):
        tensor_setitem(c, 0, tensor_getitem(t, 1))
    tensor_setitem(c, 0, tensor_getitem(t, 1).detach())
    np.testing.assert_array_equal(c.numpy()[0], expect[1])


@pytest.mark.parametrize("device", DEVICES)
def test_setitem_value_shape_mismatch(device):
    t = ndl.Tensor(_data(), device=device, requires_grad=False)
    with pytest.raises(ValueError, match=r"value of shape \(3,\) cannot be broadcast .* \(4, 5\)"):
        tensor_setitem(t, 0, np.ones(3))
    with pytest.raises(ValueError, match=r"\(2, 2\) cannot be broadcast .* \(3, 2, 5\)"):
        tensor_setitem(t, (slice(None), [0, 1]), np.ones((2, 2)))


# ---- bad input -------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op", ["get", "set"])
def test_bad_indices(op, device):
    t = ndl.Tensor(_data(), device=device, requires_grad=False)

    def index(idx):
        return tensor_getitem(t, idx) if op == "get" else tensor_setitem(t, idx, 0.0)

    shape = r"\(3, 4, 5\)"
    for bad in [1.0, (0, 2.5), "a", object()]:
        with pytest.raises(TypeError, match=shape) as err:
            index(bad)
        assert isinstance(err.value, IndexError) and isinstance(err.value, IndexTypeError)
    for bad in [np.array([0.5]), ndl.Tensor([1.0], device=device), (slice(0.5, 2),), [[0, 1], [2]]]:
        with pytest.raises(TypeError):
            index(bad)
    with pytest.raises(IndexError, match=r"index 3 is out of bounds for axis 0 with size 3.*" + shape):
        index(3)
    with pytest.raises(IndexError, match=r"index -6 is out of bounds for axis 2 with size 5.*" + shape):
        index((0, 0, -6))
    with pytest.raises(IndexError, match=r"index 4 is out of bounds for axis 1 with size 4 \(index array"):
        index((slice(None), [0, 4]))
    with pytest.raises(IndexError, match=r"index 7 is out of bounds for axis 0"):
        index(_int_tensor([7, 0], device))
    with pytest.raises(IndexError, match=r"mask \(4,\) at index 0 does not match .* \(3,\) .*" + shape):
        index(np.ones(4, dtype=bool))
    with pytest.raises(IndexError, match=r"mask \(3, 5\) at index 1 does not match .* \(4, 5\)"):
        index((0, _bool_tensor(np.ones((3, 5)), device)))
    with pytest.raises(IndexError, match=r"too many indices for a tensor of dimension 3 \(shape \(3, 4, 5\)\)"):
        index((0, 0, 0, 0))
    with pytest.raises(IndexError, match="too many indices"):
        index((np.ones((3, 4), bool), 0, 0))
    with pytest.raises(IndexError, match="single ellipsis"):
        index((Ellipsis, 0, Ellipsis))
    with pytest.raises(IndexError, match=r"broadcast.*" + shape):
        index(([0, 1], [0, 1, 2]))
    for step in (-1, 0):
        with pytest.raises(ValueError, match="slice steps must be > 0; index 1"):
            index((0, slice(None, None, step)))


def test_gather_layout():
    """The gather reads whole trailing rows where the index leaves them whole, and its row
    numbers take host memory O(result), not O(numel)."""
    t = ndl.Tensor(np.zeros((1000, 64), np.float32), requires_grad=True)
    plan = tensor_getitem(t, [5, 999, 5]).op.plan
    assert (plan.nk, plan.d) == (1000, 64) and plan.rows.tolist() == [5, 999, 5]
    plan = tensor_getitem(t, (slice(None), [3])).op.plan
    assert (plan.nk, plan.d, plan.rows.size) == (64000, 1, 1000)
    plan = tensor_getitem(ndl.Tensor(np.zeros((10, 20, 30)), requires_grad=True), (slice(2, 4), [1, 2])).op.plan
    assert plan.rows.size == 4 and plan.d == 30
