from .data_basic import *
from .samplers import DistributedSampler
from .data_transforms import *
from .datasets import *
from .datasets import mnist_dataset, ndarray_dataset, cifar10_dataset, ptb_dataset
