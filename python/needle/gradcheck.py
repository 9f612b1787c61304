"""Numerical gradient check: ``needle.autograd.gradcheck`` (see its docstring)."""
import numpy


class GradcheckError(AssertionError):
    """Analytic and numerical gradients disagree; the message says where."""


def gradcheck(f, *inputs, eps=1e-6, atol=1e-5, rtol=1e-4, random_directions=None, seed=0):
    """Compare ``backward()`` with central differences of ``L = sum(f(*inputs) * w)``.

    ``w`` is a fixed random weight (so a wrong permutation of the gradient is
    caught, which a plain sum would miss). Default: every element of every
    input is perturbed by +-eps (two evaluations of ``f`` per element); the
    defaults suit float64 in ``NEEDLE_BACKEND=np``. With float32 data pass
    e.g. ``eps=1e-3, atol=1e-2, rtol=1e-2``. ``random_directions=k`` instead
    draws k random directions d per input and compares (L(x+eps d) -
    L(x-eps d)) / 2eps with <grad, d> (two evaluations per direction).
    Returns True, or raises GradcheckError naming the input index, the worst
    element (or direction), and the analytic and numerical values.
    """
    from .autograd import Tensor

    rng = numpy.random.default_rng(seed)
    for i, x in enumerate(inputs):
        if not isinstance(x, Tensor):
            raise TypeError(f"gradcheck: input {i} must be a Tensor, got {type(x).__name__}")
    bases = [x.numpy() for x in inputs]
    leaves = [Tensor.make_const(x.realize_cached_data(), requires_grad=True) for x in inputs]
    out = f(*leaves)
    if not isinstance(out, Tensor):
        raise TypeError(f"gradcheck: f must return a Tensor, got {type(out).__name__}")
    w = rng.standard_normal(out.shape)

    def loss(arrays):
        ts = [Tensor(a, device=x.device, dtype=x.dtype, requires_grad=False) for a, x in zip(arrays, inputs)]
        return float((f(*ts).numpy().astype(numpy.float64) * w).sum())

    for leaf in leaves:
        leaf.grad = None  # f itself may have run backward(); a leaf f does not depend on must read 0
    out.backward(Tensor(w, device=out.device, dtype=out.dtype, requires_grad=False))
    for i, (leaf, base) in enumerate(zip(leaves, bases)):
        grad = numpy.zeros(base.shape) if leaf.grad is None else leaf.grad.numpy().astype(numpy.float64)
        if random_directions is None:
            numeric = numpy.zeros(base.shape)
            for j in range(base.size):
                hi, lo = base.copy(), base.copy()
                hi.flat[j] += eps
                lo.flat[j] -= eps
                step = float(hi.flat[j]) - float(lo.flat[j])  # exact step after rounding to the dtype
                arrays = list(bases)
                arrays[i] = hi
                l_hi = loss(arrays)
                arrays[i] = lo
                numeric.flat[j] = (l_hi - loss(arrays)) / step
            excess = numpy.abs(grad - numeric) - (atol + rtol * numpy.abs(numeric))
            if excess.size and excess.max() > 0:
                j = numpy.unravel_index(int(numpy.argmax(excess)), base.shape)
                raise GradcheckError(
                    f"gradcheck failed for input {i} (shape {base.shape}): {(excess > 0).sum()} of {base.size} "
                    f"elements outside atol={atol}, rtol={rtol}; worst element {tuple(int(k) for k in j)}: "
                    f"analytic {grad[j]:.8g}, numeric {numeric[j]:.8g}, abs error {abs(grad[j] - numeric[j]):.3g}"
                )
        else:
            for k in range(random_directions):
                d = rng.standard_normal(base.shape)
                arrays = list(bases)
                arrays[i] = (base + eps * d).astype(base.dtype)
                l_hi = loss(arrays)
                arrays[i] = (base - eps * d).astype(base.dtype)
                numeric = (l_hi - loss(arrays)) / (2 * eps)
                analytic = float((grad * d).sum())
                if abs(analytic - numeric) > atol + rtol * abs(numeric):
                    raise GradcheckError(
                        f"gradcheck failed for input {i} (shape {base.shape}) along random direction {k}: "
                        f"analytic <grad, d> {analytic:.8g}, numeric {numeric:.8g}, "
                        f"abs error {abs(analytic - numeric):.3g} (atol={atol}, rtol={rtol})"
                    )
    return True
