from .ndarray import *
