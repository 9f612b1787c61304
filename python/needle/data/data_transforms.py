"""Image augmentations on H x W x C numpy arrays (numpy global RNG, course draw order)."""
import numpy as np


class Transform:
    def __call__(self, x):
        raise NotImplementedError(f"{type(self).__name__} must define __call__ (abstract)")


def _check_hwc(img, name):
    if not isinstance(img, np.ndarray) or img.ndim != 3:
        raise ValueError(f"{name}: expected an H x W x C numpy array, got "
                         f"{getattr(img, 'shape', type(img).__name__)}")


class RandomFlipHorizontal(Transform):
    """With probability p flip the image along W (axis 1); one ``np.random.rand()`` per call."""

    def __init__(self, p=0.5):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"RandomFlipHorizontal: p must be in [0, 1], got {p}")
        self.p = p

    def __call__(self, img):
        _check_hwc(img, "RandomFlipHorizontal")
        flip_img = np.random.rand() < self.p
        return img[:, ::-1, :] if flip_img else img


class RandomCrop(Transform):
    """Zero-pad H and W by ``padding`` and crop the original size at a random shift.

    One ``np.random.randint(-padding, padding + 1, size=2)`` per call gives
    (shift_x along H, shift_y along W).
    """

    def __init__(self, padding=3):
        if padding < 0:
            raise ValueError(f"RandomCrop: padding must be >= 0, got {padding}")
        self.padding = padding

    def __call__(self, img):
        _check_hwc(img, "RandomCrop")
        shift_x, shift_y = np.random.randint(low=-self.padding, high=self.padding + 1, size=2)
        p = self.padding
        h, w, _ = img.shape
        padded = np.pad(img, ((p, p), (p, p), (0, 0)))
        return padded[p + shift_x:p + shift_x + h, p + shift_y:p + shift_y + w, :]
