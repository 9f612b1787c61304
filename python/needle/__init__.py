"""needle: a small, fast deep-learning framework (course-compatible API)."""
from . import ops
from .ops import *
from .autograd import Tensor, cpu, all_devices, no_grad
from . import init
# PyTorch-style factories (they accept every call of the course's init versions too).
from .ops.ops_functions import ones, zeros, ones_like, zeros_like
from . import data
from . import nn
from . import optim
from .backend_selection import *
from .serialization import save, load
from .dlpack import from_dlpack
from . import amp, profiler
from . import interop
from .backend_ndarray.dtypes import DTYPES as dtypes
# dtype constants, as ``needle.float32``: they are the dtype names.
float32, float64, float16, bfloat16 = "float32", "float64", "float16", "bfloat16"
int32, int64, uint8, bool = "int32", "int64", "uint8", "bool"
