"""needle ops: every class and lowercase helper is re-exported here (and at top level)."""
from .ops_mathematic import *
from .ops_logarithmic import *
from .ops_tuple import *
from .ops_indexing import *
from .ops_conv import *
from .ops_loss import *
from .ops_norm import *
from .ops_functions import *
from ..autograd import Tensor, TensorTuple
