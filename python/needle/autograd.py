"""Reverse-mode automatic differentiation.

A ``Value`` is a node of the computational graph: the ``op`` that made it, its
``inputs`` and its ``cached_data`` (an array of the active backend: an NDArray, or
numpy's own in ``NEEDLE_BACKEND=np``; only ``ops/array_backend.py`` tells the two
apart). Ops run eagerly; a result that needs no gradient (no input requires one,
or inside ``no_grad()``) is returned detached, so constant work builds no graph.

``backward()`` walks the graph once in reverse topological order (an explicit
stack, so a 10,000-deep chain is fine) and sums the partial adjoints of each
node. Adjoints are built from needle ops, so a leaf's ``.grad`` has a graph of
its own and can be differentiated again (grad of grad). Each ``backward()``
call OVERWRITES ``.grad`` (it does not add to the previous value); sum the
gradients yourself if you need accumulation across calls. Non-leaf nodes get a
detached ``.grad``: it would otherwise refer back to the node through its own
graph, a reference cycle that keeps activations alive until the cyclic GC runs.
"""
import contextlib
import copy
from typing import List, Optional

import numpy

import needle
from .backend_selection import Device, NDArray, all_devices, cpu, default_device  # noqa: F401 (re-exported)
from .tensor_methods import TensorMethods

LAZY_MODE = False
TENSOR_COUNTER = 0

_GRAD_ENABLED = True

_new_object = object.__new__  # a Value without __init__ (the graph's hot paths fill it in)


class no_grad(contextlib.ContextDecorator):
    """Context manager (and decorator): ops inside it record no graph."""

    def __init__(self):
        self._saved = []

    def __enter__(self):
        global _GRAD_ENABLED
        self._saved.append(_GRAD_ENABLED)
        _GRAD_ENABLED = False
        return self

    def __exit__(self, *exc):
        global _GRAD_ENABLED
        _GRAD_ENABLED = self._saved.pop()
        return False


def is_grad_enabled():
    return _GRAD_ENABLED


class Op:
    """Operator definition: ``compute`` on arrays, ``gradient`` in needle ops."""

    def __call__(self, *args):
        raise NotImplementedError()

    def compute(self, *args):
        """Forward pass on backend arrays (numpy or NDArray); returns an array."""
        raise NotImplementedError()

    def gradient(self, out_grad, node):
        """Adjoint of each input given ``out_grad``, the adjoint of ``node``; Value or tuple.

        An op may return None for an input whose ``requires_grad`` is False,
        to skip work nobody will read.
        """
        raise NotImplementedError()

    def gradient_as_tuple(self, out_grad, node):
        output = self.gradient(out_grad, node)
        if isinstance(output, tuple):
            return output
        if isinstance(output, list):
            return tuple(output)
        return (output,)


class TensorOp(Op):
    """An op whose output is a Tensor."""

    def __call__(self, *args):
        return _run_op(Tensor, self, args)


class TensorTupleOp(Op):
    """An op whose output is a TensorTuple."""

    def __call__(self, *args):
        return _run_op(TensorTuple, self, args)


def _check_inputs(op, inputs):
    """Inputs must be Values on one device: clear TypeError/ValueError otherwise."""
    for i, x in enumerate(inputs):
        if not isinstance(x, Value):
            raise TypeError(f"{type(op).__name__}: input {i} must be a Tensor, got {type(x).__name__}")
    # An input not computed yet (lazy mode) is checked when it is: B.compute checks every op's arrays.
    computed = [x.cached_data for x in inputs if isinstance(x, Tensor) and x.cached_data is not None]
    B.check_one_device(type(op).__name__, computed)


class Value:
    """A node in the computational graph."""

    op: Optional[Op]
    inputs: List["Value"]
    cached_data: NDArray
    requires_grad: bool
    grad = None  # set by backward()

    def realize_cached_data(self):
        """The node's array, computed (once) from its inputs if needed."""
        if self.cached_data is not None:
            return self.cached_data
        self.cached_data = _compute(
            self.op, [x.cached_data if x.cached_data is not None else x.realize_cached_data() for x in self.inputs]
        )
        return self.cached_data

    def is_leaf(self):
        return self.op is None

    def __deepcopy__(self, memo):
        """copy.deepcopy (of a model, say): every attribute copied, arrays included, and the
        copy counted in TENSOR_COUNTER like any Value (its __del__ will uncount it)."""
        global TENSOR_COUNTER
        new = _new_object(type(self))
        TENSOR_COUNTER += 1
        memo[id(self)] = new
        for key, value in self.__dict__.items():
            setattr(new, key, copy.deepcopy(value, memo))
        return new

    def __del__(self):
        global TENSOR_COUNTER
        TENSOR_COUNTER -= 1

    def _init(self, op, inputs, *, num_outputs=1, cached_data=None, requires_grad=None):
        global TENSOR_COUNTER
        TENSOR_COUNTER += 1
        if requires_grad is None:
            requires_grad = False
            if _GRAD_ENABLED:
                for x in inputs:
                    if x.requires_grad:
                        requires_grad = True
                        break
        self.op = op
        self.inputs = list(inputs)
        self.num_outputs = num_outputs
        self.cached_data = cached_data
        self.requires_grad = bool(requires_grad)

    @classmethod
    def make_const(cls, data, *, requires_grad=False):
        value = cls.__new__(cls)
        value._init(None, [], cached_data=data, requires_grad=requires_grad)
        return value

    @classmethod
    def make_from_op(cls, op, inputs):
        return _run_op(cls, op, inputs)


def _run_op(cls, op, inputs):
    """A new ``cls`` (Tensor or TensorTuple) that ``op`` makes of the Values ``inputs``.

    Every op of every forward and backward pass runs through here, so the eager path
    is written for speed: the one- and two-input cases are unrolled, and bad inputs
    (not Values) are diagnosed by ``_check_inputs`` only after the fast path fails.
    """
    if _autocast_hook is not None:  # inside needle.amp.autocast: the inputs this op runs on
        inputs = _autocast_hook(op, inputs)
    if LAZY_MODE:
        _check_inputs(op, inputs)
        value = cls.__new__(cls)
        value._init(op, inputs)
        return value
    global TENSOR_COUNTER
    try:
        if len(inputs) == 2:
            x, y = inputs
            a, b = x.cached_data, y.cached_data
            datas = [a if a is not None else x.realize_cached_data(), b if b is not None else y.realize_cached_data()]
            requires_grad = x.requires_grad or y.requires_grad
        elif len(inputs) == 1:
            x = inputs[0]
            a = x.cached_data
            datas = [a if a is not None else x.realize_cached_data()]
            requires_grad = x.requires_grad
        else:
            datas = []
            requires_grad = False
            for x in inputs:
                a = x.cached_data
                datas.append(a if a is not None else x.realize_cached_data())
                if x.requires_grad:
                    requires_grad = True
    except AttributeError:
        _check_inputs(op, inputs)
        raise
    data = _compute(op, datas)  # checks that the arrays share one device
    value = _new_object(cls)
    TENSOR_COUNTER += 1
    value.num_outputs = 1
    value.cached_data = data
    if requires_grad and _GRAD_ENABLED:
        value.op = op
        value.inputs = list(inputs)
        value.requires_grad = True
    else:
        # Same as detach(): a constant keeps no graph.
        value.op = None
        value.inputs = []
        value.requires_grad = False
    return value


def _const_of(cls, data):
    """A new leaf of class ``cls`` holding ``data``, no graph (detach without the checks)."""
    global TENSOR_COUNTER
    value = _new_object(cls)
    TENSOR_COUNTER += 1
    value.op = None
    value.inputs = []
    value.num_outputs = 1
    value.cached_data = data
    value.requires_grad = False
    return value


class TensorTuple(Value):
    """A tuple of tensors produced by one op (split, make_tuple, ...)."""

    def __len__(self):
        return len(self.realize_cached_data())

    def __getitem__(self, index):
        n = len(self)
        if not isinstance(index, (int, numpy.integer)):
            raise TypeError(f"TensorTuple indices must be integers, got {type(index).__name__}")
        if not -n <= index < n:
            raise IndexError(f"TensorTuple index {index} out of range for length {n}")
        return needle.ops.tuple_get_item(self, int(index) % n)

    def tuple(self):
        return tuple(self[i] for i in range(len(self)))

    def __repr__(self):
        return "needle.TensorTuple" + str(self.tuple())

    def __str__(self):
        return self.__repr__()

    def __add__(self, other):
        if not isinstance(other, TensorTuple) or len(other) != len(self):
            raise ValueError(f"TensorTuple add: need a TensorTuple of length {len(self)}")
        return needle.ops.make_tuple(*[self[i] + other[i] for i in range(len(self))])

    def detach(self):
        return _const_of(TensorTuple, self.realize_cached_data())


class Tensor(TensorMethods, Value):

    def __init__(self, array, *, device: Optional[Device] = None, dtype=None, requires_grad=True, **kwargs):
        if isinstance(array, Tensor):
            device = array.device if device is None else device
            dtype = array.dtype if dtype is None else dtype
            if device == array.device and dtype == array.dtype:
                cached_data = array.realize_cached_data()
            else:
                cached_data = Tensor._array_from_numpy(array.numpy(), device=device, dtype=dtype)
        else:
            device = default_device() if device is None else device
            cached_data = Tensor._array_from_numpy(array, device=device, dtype=dtype)
        if requires_grad and not B.differentiable(cached_data):
            requires_grad = False  # integer and bool tensors never require a gradient
        self._init(None, [], cached_data=cached_data, requires_grad=requires_grad)

    @staticmethod
    def _array_from_numpy(numpy_array, device, dtype):
        return B.array(numpy_array, device, dtype)

    @staticmethod
    def make_const(data, requires_grad=False):
        if isinstance(data, Tensor):
            data = data.realize_cached_data()
        if not requires_grad:
            return _const_of(Tensor, data)
        tensor = Tensor.__new__(Tensor)
        tensor._init(None, [], cached_data=data, requires_grad=requires_grad)
        return tensor

    @property
    def data(self):
        return self.detach()

    @data.setter
    def data(self, value):
        if not isinstance(value, Tensor):
            raise TypeError(f"Tensor.data must be set to a Tensor, got {type(value).__name__}")
        if value.dtype != self.dtype:
            raise TypeError(f"Tensor.data: dtype {value.dtype} does not match the tensor's dtype {self.dtype}")
        self.cached_data = value.realize_cached_data()

    def detach(self):
        """A new leaf sharing this tensor's data, with no graph."""
        return _const_of(Tensor, self.realize_cached_data())

    @property
    def shape(self):
        data = self.cached_data
        if data is None:
            data = self.realize_cached_data()
        return data.shape  # a tuple for NDArray and numpy alike

    @property
    def ndim(self):
        return len(self.shape)

    @property
    def dtype(self):
        return self.realize_cached_data().dtype

    @property
    def device(self):
        return B.device(self.realize_cached_data())

    def backward(self, out_grad=None, create_graph=True):
        """Set ``.grad`` of every node this tensor depends on (overwriting old values).

        ``out_grad`` defaults to ones. With ``create_graph=False`` the adjoints
        are computed without recording a graph (faster, no grad of grad).
        """
        if out_grad is None:
            data = self.realize_cached_data()
            out_grad = _const_of(Tensor, B.full(data.shape, 1.0, data))
        elif not isinstance(out_grad, Tensor):
            raise TypeError(f"backward: out_grad must be a Tensor, got {type(out_grad).__name__}")
        elif out_grad.shape != self.shape:
            raise ValueError(f"backward: out_grad shape {out_grad.shape} does not match tensor shape {self.shape}")
        prof = needle.profiler.active()
        if prof is None and create_graph:
            compute_gradient_of_variables(self, out_grad)
            return
        with prof.backward_phase() if prof is not None else contextlib.nullcontext():
            if create_graph:
                compute_gradient_of_variables(self, out_grad)
            else:
                with no_grad():
                    compute_gradient_of_variables(self, out_grad)

    def __repr__(self):
        return "needle.Tensor(" + str(self.realize_cached_data()) + ")"

    def __str__(self):
        return self.realize_cached_data().__str__()

    def numpy(self):
        return B.to_numpy(self.realize_cached_data())

    # ---- operators (the exact op nodes are part of the contract) ----------
    # Two-tensor operators run the shared op instances straight through _run_op.
    def __add__(self, other):
        if isinstance(other, Tensor):
            return _run_op(Tensor, _ops._ADD, (self, other))
        return _ops.AddScalar(other)(self)

    __radd__ = __add__

    def __mul__(self, other):
        if isinstance(other, Tensor):
            return _run_op(Tensor, _ops._MUL, (self, other))
        return _ops.MulScalar(other)(self)

    __rmul__ = __mul__

    def __pow__(self, other):
        if isinstance(other, Tensor):
            return _run_op(Tensor, _ops._POW, (self, other))
        return _ops.PowerScalar(other)(self)

    def __sub__(self, other):
        if isinstance(other, Tensor):
            return _run_op(Tensor, _ops._ADD, (self, _ops._NEGATE(other)))
        return _ops.AddScalar(-other)(self)

    def __rsub__(self, other):
        return _ops.AddScalar(other)(_ops._NEGATE(self))

    def __truediv__(self, other):
        if isinstance(other, Tensor):
            return _run_op(Tensor, _ops._DIV, (self, other))
        return _ops.DivScalar(other)(self)

    def __rtruediv__(self, other):
        return _ops.MulScalar(other)(_ops.PowerScalar(-1)(self))

    def __matmul__(self, other):
        return _ops.matmul(self, other)

    def matmul(self, other):
        return _ops.matmul(self, other)

    def __neg__(self):
        return _ops._NEGATE(self)

    def __getitem__(self, index):
        return needle.ops.tensor_getitem(self, index)

    def __setitem__(self, index, value):
        needle.ops.tensor_setitem(self, index, value)

    # sum, mean, reshape, transpose, permute, broadcast_to and the rest of the
    # PyTorch-style methods: tensor_methods.TensorMethods.


# ---- backward ---------------------------------------------------------------
def compute_gradient_of_variables(output_tensor, out_grad):
    """Set ``node.grad`` for every node that ``output_tensor`` depends on.

    Reverse topological order guarantees that all partial adjoints of a node
    are known (and summed) before its own op's gradient is taken. The adjoint
    that ``tuple_get_item`` sends to its TensorTuple is kept sparse (index,
    grad) until the tuple's own turn: a split into T parts then costs one
    make_tuple, not T tuples of T - 1 zeros each.
    """
    get_item_op = needle.ops.TupleGetItem
    grads = {output_tensor: [out_grad]}
    for node in reversed(find_topo_sort([output_tensor])):
        partials = grads.pop(node, None)
        if partials is None:
            continue  # a node that needs no gradient
        grad = partials[0] if len(partials) == 1 and type(partials[0]) is not _Slot else _sum_partials(node, partials)
        data = grad.cached_data
        op = node.op
        if op is None:
            if type(data) is not tuple and data is not None:
                # Same values, in the layout optimizers update through; the grad's own graph is untouched.
                grad.cached_data = _compact_for_update(data)
            node.grad = grad
            continue
        # A detached view of the adjoint (shared data, no graph): see the module docstring.
        node.grad = _const_of(type(grad), data if data is not None else grad.realize_cached_data())
        if type(op) is get_item_op:
            inp = node.inputs[0]
            if inp.requires_grad:
                grads.setdefault(inp, []).append(_Slot(op.index, grad))
            continue
        in_grads = op.gradient(grad, node)
        if type(in_grads) is not tuple:
            in_grads = tuple(in_grads) if isinstance(in_grads, list) else (in_grads,)
        for inp, g in zip(node.inputs, in_grads):
            if not inp.requires_grad:
                continue
            if type(inp) is not TensorTuple:
                g_data = g.cached_data
                if g_data is None:
                    g_data = g.realize_cached_data()
                inp_data = inp.cached_data
                if inp_data is None:
                    inp_data = inp.realize_cached_data()
                if g_data.shape != inp_data.shape:
                    i = next(k for k, x in enumerate(node.inputs) if x is inp)
                    raise RuntimeError(
                        f"{type(op).__name__}.gradient returned shape {g.shape} for input {i} of shape {inp.shape}"
                    )
                # After a promoting op the gradient takes its input's dtype.
                if _gradient_dtype_differs(g_data, inp_data):
                    g = needle.ops.cast(g, inp.dtype)
            partial = grads.get(inp)
            if partial is None:
                grads[inp] = [g]
            else:
                partial.append(g)


class _Slot:
    """A sparse TensorTuple adjoint: ``grad`` at ``index``, zeros elsewhere."""

    __slots__ = ("index", "grad")

    def __init__(self, index, grad):
        self.index = index
        self.grad = grad


def _zeros_like_array(a):
    return Tensor.make_const(B.full(a.shape, 0.0, a))


def _sum_partials(node, partials):
    """Sum adjoints, expanding sparse tuple slots into one make_tuple."""
    slots = [p for p in partials if type(p) is _Slot]
    if not slots:
        return sum_node_list(partials)
    data = node.realize_cached_data()
    per_index = [[] for _ in data]
    for s in slots:
        per_index[s.index].append(s.grad)
    parts = [sum_node_list(g) if g else _zeros_like_array(data[i]) for i, g in enumerate(per_index)]
    full = needle.ops.make_tuple(*parts)
    return sum_node_list([full] + [p for p in partials if type(p) is not _Slot])


def find_topo_sort(node_list: List[Value]) -> List[Value]:
    """Post-order DFS over ``inputs`` (in order): every node after its inputs, each once."""
    visited = set()
    topo_order = []
    for node in node_list:
        topo_sort_dfs(node, visited, topo_order)
    return topo_order


def topo_sort_dfs(node, visited, topo_order):
    """Append the unvisited part of ``node``'s graph to ``topo_order`` (explicit stack, no recursion)."""
    if node in visited:
        return
    visited.add(node)
    stack = [(node, iter(node.inputs))]
    while stack:
        current, children = stack[-1]
        for child in children:
            if child not in visited:
                visited.add(child)
                if child.inputs:
                    stack.append((child, iter(child.inputs)))
                    break
                topo_order.append(child)  # a leaf: done as soon as it is seen
        else:
            stack.pop()
            topo_order.append(current)


def sum_node_list(node_list):
    """Sum a list of adjoints (Tensors or TensorTuples) with needle ops."""
    total = node_list[0]
    for g in node_list[1:]:
        total = total + g
    return total


# The array functions that differ between numpy mode and NDArray. Imported last:
# needle.ops imports this module, so the import must follow the classes the ops use.
from .ops import array_backend as B  # noqa: E402
from .ops import ops_mathematic as _ops  # noqa: E402 (the operators' ops)

# Called for every op, every leaf gradient and every gradient edge: bound once.
_compute, _compact_for_update, _gradient_dtype_differs = B.compute, B.compact_for_update, B.gradient_dtype_differs

# Tools that watch or steer every op swap these in while they are active, so that
# when they are not, the op path pays nothing for them.
_autocast_hook = None


def set_autocast_hook(hook):
    """``hook(op, inputs) -> inputs`` for every op (needle.amp.autocast), or None."""
    global _autocast_hook
    _autocast_hook = hook


def set_compute_hook(wrapper):
    """``wrapper(compute, op, arrays) -> array`` around every op's compute (the profiler),
    or None for the plain backend compute."""
    global _compute
    _compute = B.compute if wrapper is None else (lambda op, datas: wrapper(B.compute, op, datas))

# gradcheck lives in its own module (it is a tool, not part of the graph) but is
# reachable as needle.autograd.gradcheck.
from .gradcheck import GradcheckError, gradcheck  # noqa: E402
