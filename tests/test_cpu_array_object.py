"""The CPU module's Array object (a CPython type, src/cpu/py_array.h): its attributes, its
constructors, the errors of bad arguments, weak references, and that dropping it frees
the buffer."""
import gc
import weakref

import numpy as np
import pytest

from devices import nd_only

pytestmark = nd_only


@pytest.fixture(scope="module")
def cpu():
    from needle.backend_ndarray import ndarray_backend_cpu

    return ndarray_backend_cpu


@pytest.mark.parametrize("dtype, itemsize", [("float32", 4), ("float64", 8), ("float16", 2), ("bfloat16", 2),
                                             ("int32", 4), ("int64", 8), ("uint8", 1), ("bool", 1)])
def test_attributes(cpu, dtype, itemsize):
    for a in (cpu.Array(5, dtype), cpu.Array(size=5, dtype=dtype), cpu.new_array(5, dtype)):
        assert type(a) is cpu.Array
        assert (a.size, a.dtype, a.itemsize) == (5, dtype, itemsize)
        assert a.ptr() % 256 == 0  # the buffers' alignment
    assert cpu.Array(3).dtype == "float32"
    assert cpu.new_array(np.int64(7), "int32").size == 7  # numpy integers are sizes too
    assert cpu.Array(0).size == 0


def test_values_round_trip(cpu):
    x = np.arange(10, dtype=np.float32)
    a = cpu.new_array(10, "float32")
    cpu.from_numpy(x, a)
    np.testing.assert_array_equal(cpu.to_numpy(a, [2, 5], [5, 1], 0), x.reshape(2, 5))


@pytest.mark.parametrize("make, exc, match", [
    (lambda m: m.Array(-1), ValueError, ">= 0"),
    (lambda m: m.new_array(-3, "float32"), ValueError, ">= 0"),
    (lambda m: m.new_array(2**62, "float64"), ValueError, "too large"),
    (lambda m: m.new_array(2**70, "float32"), OverflowError, "too big"),
    (lambda m: m.new_array(1.5, "float32"), TypeError, "integer"),
    (lambda m: m.Array("3"), TypeError, "integer"),
    (lambda m: m.new_array(3, "float128"), TypeError, "float128"),
    (lambda m: m.new_array(3, 4), TypeError, "dtype"),
    (lambda m: m.new_array(3), TypeError, "2 arguments"),
    (lambda m: m.Array(), TypeError, "size"),
])
def test_bad_arguments(cpu, make, exc, match):
    with pytest.raises(exc, match=match):
        make(cpu)


def test_kernels_take_only_arrays(cpu):
    a = cpu.new_array(4, "float32")
    for bad in (None, 1.0, np.zeros(4, np.float32), [0.0] * 4):
        with pytest.raises(TypeError):
            cpu.ewise_add(a, bad, a)


def test_weak_references(cpu):
    a = cpu.new_array(4, "float32")
    ref = weakref.ref(a)
    called = []
    weakref.finalize(a, called.append, 1)
    assert ref() is a
    del a
    gc.collect()
    assert ref() is None and called == [1]


def _rss_mib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    pytest.skip("no /proc/self/status")


def test_dropping_an_array_frees_its_buffer(cpu):
    # 300 written 16 MiB buffers are 4.7 GiB if none is freed.
    before = _rss_mib()
    for _ in range(300):
        a = cpu.new_array(4 << 20, "float32")
        cpu.fill(a, 1.0)
        del a
    assert _rss_mib() - before < 600
