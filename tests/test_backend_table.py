"""Every compiled backend exports the function table of the numpy twin."""
import importlib
import inspect
import shutil

import pytest

from needle.backend_ndarray import ndarray_backend_numpy as twin

TABLE = sorted(
    name for name, obj in vars(twin).items() if inspect.isfunction(obj) and not name.startswith("_")
)


def _load(name):
    try:
        return importlib.import_module(f"needle.backend_ndarray.{name}")
    except ImportError as e:
        return e


def test_table_is_the_documented_one():
    for name in ["compact", "ewise_setitem", "scalar_setitem", "matmul", "bmm", "bmm_naive", "reduce_sum",
                 "reduce_max", "ewise_add", "scalar_power", "ewise_tanh", "to_numpy", "from_numpy", "fill"]:
        assert name in TABLE


def test_cpu_module_exports_table():
    mod = _load("ndarray_backend_cpu")
    if isinstance(mod, ImportError):
        pytest.fail(f"cpu backend not built: {mod}")
    missing = [n for n in TABLE if not hasattr(mod, n)]
    assert not missing, f"cpu backend lacks {missing}"
    assert mod.__device_name__ == "cpu"
    assert hasattr(mod, "matmul_tiled") and mod.__tile_size__ >= 1
    arr = mod.Array(10)
    assert arr.size == 10 and arr.ptr() % 64 == 0


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed: the CUDA module is not built")
def test_cuda_module_exports_table():
    """Built whenever nvcc exists; importing it needs no GPU."""
    mod = _load("ndarray_backend_cuda")
    if isinstance(mod, ImportError):
        pytest.fail(f"nvcc is present but the cuda backend did not build or import: {mod}")
    missing = [n for n in TABLE if not hasattr(mod, n)]
    assert not missing, f"cuda backend lacks {missing}"
    assert mod.__device_name__ == "cuda"
    assert not hasattr(mod, "matmul_tiled")
    assert mod.device_count() >= 0
    assert set(mod.memory_stats()) >= {"allocated", "cached", "peak"}
