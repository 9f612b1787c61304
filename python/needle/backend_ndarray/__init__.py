from .ndarray import *
from .dlpack import from_dlpack
