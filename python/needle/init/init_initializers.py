"""Weight initialisers (Glorot/Xavier and He/Kaiming). Default shape (fan_in, fan_out); ``shape=`` overrides it."""
import math

from .init_basic import rand, randn


def _shape(fan_in, fan_out, shape):
    return (fan_in, fan_out) if shape is None else tuple(shape)


def _check_relu(nonlinearity):
    if nonlinearity != "relu":
        raise ValueError(f"only nonlinearity='relu' is supported, got {nonlinearity!r}")


def xavier_uniform(fan_in, fan_out, gain=1.0, shape=None, **kwargs):
    """U(-a, a), a = gain * sqrt(6 / (fan_in + fan_out))."""
    a = gain * math.sqrt(6.0 / (fan_in + fan_out))
    return rand(*_shape(fan_in, fan_out, shape), low=-a, high=a, **kwargs)


def xavier_normal(fan_in, fan_out, gain=1.0, shape=None, **kwargs):
    """N(0, std^2), std = gain * sqrt(2 / (fan_in + fan_out))."""
    std = gain * math.sqrt(2.0 / (fan_in + fan_out))
    return randn(*_shape(fan_in, fan_out, shape), mean=0.0, std=std, **kwargs)


def kaiming_uniform(fan_in, fan_out, shape=None, nonlinearity="relu", **kwargs):
    """U(-b, b), b = sqrt(2) * sqrt(3 / fan_in)."""
    _check_relu(nonlinearity)
    bound = math.sqrt(2.0) * math.sqrt(3.0 / fan_in)
    return rand(*_shape(fan_in, fan_out, shape), low=-bound, high=bound, **kwargs)


def kaiming_normal(fan_in, fan_out, shape=None, nonlinearity="relu", **kwargs):
    """N(0, std^2), std = sqrt(2) / sqrt(fan_in)."""
    _check_relu(nonlinearity)
    std = math.sqrt(2.0) / math.sqrt(fan_in)
    return randn(*_shape(fan_in, fan_out, shape), mean=0.0, std=std, **kwargs)
