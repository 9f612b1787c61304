"""Ops that build or take apart TensorTuples."""
from .. import init
from ..autograd import TensorOp, TensorTuple, TensorTupleOp, Value


class MakeTensorTuple(TensorTupleOp):
    """Pack tensors into a TensorTuple; the gradient unpacks the tuple adjoint."""

    def compute(self, *args):
        return tuple(args)

    def gradient(self, out_grad, node):
        if not isinstance(out_grad, TensorTuple):
            raise TypeError(f"make_tuple: adjoint must be a TensorTuple, got {type(out_grad).__name__}")
        return tuple(out_grad[i] for i in range(len(out_grad)))


def make_tuple(*args):
    return MakeTensorTuple()(*args)


class TupleGetItem(TensorOp):
    """Element ``index`` of a TensorTuple; the gradient is a tuple of zeros except at ``index``."""

    def __init__(self, index):
        self.index = index

    def __call__(self, a: TensorTuple, fold_const=True) -> Value:
        if not isinstance(a, TensorTuple):
            raise TypeError(f"tuple_get_item: expected a TensorTuple, got {type(a).__name__}")
        # Constant folding: take the element straight out of a make_tuple.
        if fold_const and isinstance(a.op, MakeTensorTuple):
            return a.inputs[self.index]
        return super().__call__(a)

    def compute(self, a):
        return a[self.index]

    def gradient(self, out_grad, node):
        value = node.inputs[0]
        in_grad = [out_grad if i == self.index else init.zeros_like(value[i]) for i in range(len(value))]
        return MakeTensorTuple()(*in_grad)


def tuple_get_item(value, index):
    return TupleGetItem(index)(value)


class FusedAddScalars(TensorTupleOp):
    """(a + c0, a + c1) in one op; the gradient adds the two adjoints."""

    def __init__(self, c0: float, c1: float):
        self.c0 = c0
        self.c1 = c1

    def compute(self, a):
        return a + self.c0, a + self.c1

    def gradient(self, out_grad, node):
        return out_grad[0] + out_grad[1]


def fused_add_scalars(x, c0, c1):
    return FusedAddScalars(c0, c1)(x)
