"""needle: a small, fast deep-learning framework (course-compatible API)."""
from . import ops
from .ops import *
from .autograd import Tensor, cpu, all_devices, no_grad
from . import init
from .init import ones, zeros, zeros_like, ones_like
from . import data
from . import nn
from . import optim
from .backend_selection import *
from .serialization import save, load
