"""DLPack: NDArrays handed to and taken from numpy, PyTorch, CuPy, JAX, ... without a copy.

The structures below are the DLPack ABI (dlpack.h, versions 0.x "legacy" and 1.x
"versioned"), declared with ctypes. Exchange goes through a PyCapsule named
``"dltensor"`` (legacy) or ``"dltensor_versioned"`` holding a managed tensor whose
``deleter`` the consumer calls when it is done; a consumer renames the capsule to
``"used_dltensor"`` / ``"used_dltensor_versioned"`` so that the capsule's own
destructor knows the tensor has a new owner.

Export (``NDArray.__dlpack__``): the managed tensor describes the array's own memory
(shape, element strides, byte offset of the view) and keeps the NDArray, and so its
buffer, alive in ``_EXPORTS`` until the deleter runs.

Import (``from_dlpack``): the producer's memory becomes an NDArray buffer through the
backend's ``wrap_external``, and a finalizer on that buffer calls the producer's deleter
when the last view of it is gone.
"""
import ctypes
import weakref

import numpy as np

from . import dtypes as _dt

# ---- the ABI ---------------------------------------------------------------------
kDLCPU, kDLCUDA, kDLCUDAHost = 1, 2, 3
kDLInt, kDLUInt, kDLFloat, kDLBfloat, kDLBool = 0, 1, 2, 4, 6
FLAG_READ_ONLY, FLAG_IS_COPIED = 1 << 0, 1 << 1
VERSION = (1, 0)  # the layout written here; a consumer accepts any 1.x


class DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class DLTensor(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_void_p),
        ("device", DLDevice),
        ("ndim", ctypes.c_int32),
        ("dtype", DLDataType),
        ("shape", ctypes.POINTER(ctypes.c_int64)),
        ("strides", ctypes.POINTER(ctypes.c_int64)),  # in elements; NULL: compact row-major
        ("byte_offset", ctypes.c_uint64),
    ]


class DLManagedTensor(ctypes.Structure):
    _fields_ = [("dl_tensor", DLTensor), ("manager_ctx", ctypes.c_void_p), ("deleter", ctypes.c_void_p)]


class DLPackVersion(ctypes.Structure):
    _fields_ = [("major", ctypes.c_uint32), ("minor", ctypes.c_uint32)]


class DLManagedTensorVersioned(ctypes.Structure):
    _fields_ = [
        ("version", DLPackVersion),
        ("manager_ctx", ctypes.c_void_p),
        ("deleter", ctypes.c_void_p),
        ("flags", ctypes.c_uint64),
        ("dl_tensor", DLTensor),
    ]


_DTYPE_CODES = {
    "float32": (kDLFloat, 32), "float64": (kDLFloat, 64), "float16": (kDLFloat, 16),
    "bfloat16": (kDLBfloat, 16), "int32": (kDLInt, 32), "int64": (kDLInt, 64),
    "uint8": (kDLUInt, 8), "bool": (kDLBool, 8),
}
_DTYPE_BY_CODE = {v: k for k, v in _DTYPE_CODES.items()}

# Capsule names are C strings that must outlive every capsule: module constants.
_LEGACY, _VERSIONED = b"dltensor", b"dltensor_versioned"
_USED_LEGACY, _USED_VERSIONED = b"used_dltensor", b"used_dltensor_versioned"


def _c_api(name, restype, *argtypes):
    """A private binding of a CPython C-API function (``pythonapi``'s shared ones keep
    whatever argtypes other code gave them)."""
    return ctypes.PYFUNCTYPE(restype, *argtypes)((name, ctypes.pythonapi))


_capsule_new = _c_api("PyCapsule_New", ctypes.py_object, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p)
_capsule_is_valid = _c_api("PyCapsule_IsValid", ctypes.c_int, ctypes.py_object, ctypes.c_char_p)
_capsule_pointer = _c_api("PyCapsule_GetPointer", ctypes.c_void_p, ctypes.py_object, ctypes.c_char_p)
_capsule_set_name = _c_api("PyCapsule_SetName", ctypes.c_int, ctypes.py_object, ctypes.c_char_p)
# The capsule destructor gets a capsule that is being freed: it is passed as a raw
# address, never as a Python object (no new reference to a dying object).
_is_valid_raw = _c_api("PyCapsule_IsValid", ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p)
_get_pointer_raw = _c_api("PyCapsule_GetPointer", ctypes.c_void_p, ctypes.c_void_p, ctypes.c_char_p)
_Deleter = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


# ---- export ----------------------------------------------------------------------
_EXPORTS = {}  # address of a managed tensor we made -> what it keeps alive


def _release_export(address):
    _EXPORTS.pop(address, None)


_DELETER = _Deleter(_release_export)
_DELETER_ADDRESS = ctypes.cast(_DELETER, ctypes.c_void_p).value


def _capsule_destructor(capsule):
    # Unconsumed capsules (still under their first name) own their tensor; consumed
    # ones were renamed and their consumer calls the deleter.
    for name in (_LEGACY, _VERSIONED):
        if _is_valid_raw(capsule, name):
            _release_export(_get_pointer_raw(capsule, name))


_CAPSULE_DESTRUCTOR = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(_capsule_destructor)


def device_of(array):
    """``(device_type, device_id)`` of an NDArray, as ``__dlpack_device__`` reports it."""
    return (kDLCUDA, 0) if array.device.name == "cuda" else (kDLCPU, 0)


def _fill_tensor(t, array, device):
    ndim = len(array.shape)
    shape = (ctypes.c_int64 * max(ndim, 1))(*array.shape)
    strides = (ctypes.c_int64 * max(ndim, 1))(*array.strides)
    code, bits = _DTYPE_CODES[array.dtype]
    t.data = array._handle.ptr() or None
    t.device = DLDevice(*device)
    t.ndim = ndim
    t.dtype = DLDataType(code, bits, 1)
    t.shape = ctypes.cast(shape, ctypes.POINTER(ctypes.c_int64))
    t.strides = ctypes.cast(strides, ctypes.POINTER(ctypes.c_int64))
    t.byte_offset = array._offset * array._handle.itemsize
    return shape, strides


def to_dlpack(array, stream=None, max_version=None, dl_device=None, copy=None):
    """A DLPack capsule for ``array`` (the protocol's ``__dlpack__``): versioned when
    the consumer's ``max_version`` is 1.x or later, legacy otherwise."""
    device = device_of(array)
    copied = False
    if dl_device is not None and tuple(dl_device) != device:
        if tuple(dl_device) != (kDLCPU, 0) or copy is False:
            raise BufferError(f"__dlpack__: cannot export an array on {array.device} to device {tuple(dl_device)}"
                              + (" without a copy (copy=False)" if copy is False else ""))
        from .ndarray import cpu

        array, device, copied = array.to(cpu()), (kDLCPU, 0), True
    if copy and not copied:
        array, copied = array.copy(), True
    if device[0] == kDLCUDA and stream != -1:
        # needle queues all device work on the legacy default stream; make it visible to
        # whatever stream the consumer reads on.
        array.device.synchronize()
    versioned = max_version is not None and int(max_version[0]) >= 1
    managed = DLManagedTensorVersioned() if versioned else DLManagedTensor()
    keep = _fill_tensor(managed.dl_tensor, array, device)
    managed.deleter = _DELETER_ADDRESS
    if versioned:
        managed.version = DLPackVersion(*VERSION)
        managed.flags = FLAG_IS_COPIED if copied else 0
    address = ctypes.addressof(managed)
    _EXPORTS[address] = (managed, keep, array)
    return _capsule_new(address, _VERSIONED if versioned else _LEGACY, _CAPSULE_DESTRUCTOR)


# ---- import ----------------------------------------------------------------------
def _call_deleter(address, deleter):
    if deleter:
        _Deleter(deleter)(address)


def _capsule_of(obj, cuda_consumer):
    """The capsule ``obj`` exports (``obj`` may be a capsule itself)."""
    if type(obj).__name__ == "PyCapsule":
        return obj
    if not hasattr(obj, "__dlpack__"):
        raise TypeError(f"from_dlpack: {type(obj).__name__} is not a DLPack producer (no __dlpack__)")
    # Our kernels run on CUDA's legacy default stream (1 in the protocol's numbering).
    stream = 1 if cuda_consumer else None
    try:
        return obj.__dlpack__(stream=stream, max_version=VERSION)
    except TypeError:  # a producer from before DLPack 1.0 knows no max_version
        return obj.__dlpack__(stream=stream) if stream is not None else obj.__dlpack__()


def _device_for(device_type, device_id):
    from .ndarray import cpu, cuda

    if device_type in (kDLCPU, kDLCUDAHost):
        return cpu()
    if device_type == kDLCUDA:
        dev = cuda()
        if not dev.enabled():
            raise BufferError(f"from_dlpack: the array lives on a CUDA device but {dev.reason}")
        if device_id != 0:
            raise BufferError(f"from_dlpack: needle uses CUDA device 0; the array is on device {device_id}")
        return dev
    raise BufferError(f"from_dlpack: unsupported DLPack device type {device_type} (needle has cpu and cuda)")


def from_dlpack(obj, device=None, copy=None):
    """An NDArray sharing the memory of ``obj`` (any DLPack producer, or a capsule).

    Zero-copy when the memory is on a needle device and writable; with ``copy=True``
    (or memory the producer marks read-only, or another ``device``) the data is copied.
    ``copy=False`` raises BufferError where a copy would be needed.
    """
    cuda_consumer = False
    if hasattr(obj, "__dlpack_device__"):
        cuda_consumer = int(obj.__dlpack_device__()[0]) == kDLCUDA
    capsule = _capsule_of(obj, cuda_consumer)
    if _capsule_is_valid(capsule, _VERSIONED):
        address = _capsule_pointer(capsule, _VERSIONED)
        managed = DLManagedTensorVersioned.from_address(address)
        if managed.version.major != 1:
            raise BufferError(f"from_dlpack: DLPack version {managed.version.major}.{managed.version.minor} "
                              f"is not supported (needle reads 1.x)")
        read_only = bool(managed.flags & FLAG_READ_ONLY)
        used = _USED_VERSIONED
    elif _capsule_is_valid(capsule, _LEGACY):
        address = _capsule_pointer(capsule, _LEGACY)
        managed = DLManagedTensor.from_address(address)
        read_only, used = False, _USED_LEGACY
    else:
        raise BufferError("from_dlpack: the capsule is not an unconsumed DLPack tensor")
    # From here the tensor is ours: the finalizer below (or the error path) calls its deleter.
    _capsule_set_name(capsule, used)
    deleter = managed.deleter
    try:
        array = _wrap(managed.dl_tensor, address, deleter)
    except BaseException:
        _call_deleter(address, deleter)
        raise
    if read_only and copy is False:
        raise BufferError("from_dlpack: the producer exports read-only memory; needle arrays are writable, "
                          "so it needs a copy (copy=False)")
    if copy or read_only:
        array = array.copy()
    if device is not None and device != array.device:
        if copy is False:
            raise BufferError(f"from_dlpack: the array is on {array.device}; moving it to {device} needs a copy")
        array = array.to(device)
    return array


def _wrap(t, address, deleter):
    """An NDArray over the memory ``t`` describes; the deleter runs when its buffer dies."""
    from .ndarray import NDArray

    key = (t.dtype.code, t.dtype.bits)
    if t.dtype.lanes != 1 or key not in _DTYPE_BY_CODE:
        raise BufferError(f"from_dlpack: unsupported DLPack dtype (code {t.dtype.code}, bits {t.dtype.bits}, "
                          f"lanes {t.dtype.lanes}); needle has {', '.join(_DTYPE_CODES)}")
    dtype = _DTYPE_BY_CODE[key]
    dev = _device_for(t.device.device_type, t.device.device_id)
    ndim = int(t.ndim)
    shape = tuple(int(t.shape[i]) for i in range(ndim))
    if t.strides:
        strides = tuple(int(t.strides[i]) for i in range(ndim))
    else:
        strides = NDArray.compact_strides(shape)
    itemsize = _dt.ITEMSIZE[dtype]
    if int(np.prod(shape)) == 0:
        _call_deleter(address, deleter)
        return NDArray.make(shape, device=dev, dtype=dtype)
    data = (t.data or 0) + t.byte_offset
    first = data + itemsize * sum((n - 1) * s for n, s in zip(shape, strides) if s < 0)
    last = data + itemsize * sum((n - 1) * s for n, s in zip(shape, strides) if s > 0)
    # The wrapped buffer starts at an address aligned as needle's own buffers are on the
    # device (CUDA kernels may rely on it) and the array is a view into it.
    align = 256 if dev.name == "cuda" else itemsize
    base = first - first % align
    if (data - base) % itemsize:
        raise BufferError(f"from_dlpack: the data address is not a multiple of the {dtype} item size")
    handle = dev.wrap_external(base, (last - base) // itemsize + 1, dtype)
    weakref.finalize(handle, _call_deleter, address, deleter)
    return NDArray.make(shape, strides, dev, handle, (data - base) // itemsize)
