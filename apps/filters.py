"""Classic image filters as needle convolutions: Gaussian blur and Sobel gradient magnitude.

    python -m apps.filters [--out out/filters] [--sigma 2.0]

Each filter is a fixed (K, K, 1, C) weight applied with ``ops.conv(..., groups=C)``
(one filter per channel) on an H x W x C image from a bundled dataset
(scikit-image's astronaut if installed, else scikit-learn's china.jpg, else a
digits image), and the results are written as PNGs.
"""
import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "python"))

import numpy as np

import needle as ndl

SOBEL_X = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=np.float32)  # d/dW
SOBEL_Y = SOBEL_X.T.copy()                                                   # d/dH


def gaussian_kernel(sigma, radius=None):
    """Normalised 2-D Gaussian of size 2*radius+1 (radius defaults to ceil(3*sigma))."""
    if sigma <= 0:
        raise ValueError(f"gaussian_kernel: sigma must be > 0, got {sigma}")
    radius = int(np.ceil(3 * sigma)) if radius is None else int(radius)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    g = np.exp(-x ** 2 / (2 * sigma ** 2))
    g /= g.sum()
    return np.outer(g, g).astype(np.float32)


def _as_nhwc(image):
    img = np.asarray(image, dtype=np.float32)
    if img.ndim == 2:
        img = img[:, :, None]
    if img.ndim != 3:
        raise ValueError(f"filters: expected an H x W or H x W x C image, got shape {img.shape}")
    return img[None]


def depthwise(image, kernel, device=None, padding_mode="zeros"):
    """Correlate every channel of ``image`` (H, W[, C]) with the 2-D ``kernel`` (K, K), K odd,
    keeping the size ("same" padding: zeros, or wrap-around when circular)."""
    kernel = np.asarray(kernel, dtype=np.float32)
    if kernel.ndim != 2 or kernel.shape[0] != kernel.shape[1] or kernel.shape[0] % 2 == 0:
        raise ValueError(f"filters: kernel must be square with odd size, got {kernel.shape}")
    x = _as_nhwc(image)
    c = x.shape[-1]
    k = kernel.shape[0]
    pad = k // 2
    device = ndl.cpu() if device is None else device
    w = np.repeat(kernel[:, :, None, None], c, axis=3)            # (K, K, 1, C)
    X = ndl.Tensor(x, device=device, requires_grad=False)
    if padding_mode == "circular":
        from needle.nn.nn_conv import circular_pad_nhwc
        X, pad = circular_pad_nhwc(X, pad), 0
    elif padding_mode != "zeros":
        raise ValueError(f"filters: padding_mode must be 'zeros' or 'circular', "
                         f"got {padding_mode!r}")
    W = ndl.Tensor(w, device=device, requires_grad=False)
    out = ndl.conv(X, W, stride=1, padding=pad, groups=c) if c > 1 else \
        ndl.conv(X, W, stride=1, padding=pad)
    out = out.numpy()[0]
    return out if np.ndim(image) == 3 else out[:, :, 0]


def gaussian_blur(image, sigma=2.0, device=None, padding_mode="zeros"):
    return depthwise(image, gaussian_kernel(sigma), device, padding_mode)


def sobel_magnitude(image, device=None):
    """``sqrt(gx^2 + gy^2)`` per channel with the 3x3 Sobel kernels (zero padding)."""
    gx = depthwise(image, SOBEL_X, device)
    gy = depthwise(image, SOBEL_Y, device)
    return np.sqrt(gx ** 2 + gy ** 2)


def sample_image():
    """(H, W, 3) float32 in [0, 1] from an image shipped with an installed package."""
    try:
        from skimage import data as skdata
        return skdata.astronaut().astype(np.float32) / 255.0, "skimage astronaut"
    except ImportError:
        pass
    try:
        from sklearn.datasets import load_sample_image
        return load_sample_image("china.jpg").astype(np.float32) / 255.0, "sklearn china.jpg"
    except (ImportError, OSError, ValueError):
        pass
    from sklearn.datasets import load_digits
    img = load_digits().images[0].astype(np.float32) / 16.0
    return np.repeat(np.kron(img, np.ones((16, 16), dtype=np.float32))[:, :, None], 3, 2), \
        "sklearn digit"


def main(out="out/filters", sigma=2.0, downscale=2, device=None):
    from matplotlib.image import imsave   # no pyplot: leaves the caller's backend alone

    image, source = sample_image()
    image = image[::downscale, ::downscale]
    os.makedirs(out, exist_ok=True)
    blurred = gaussian_blur(image, sigma, device)
    edges = sobel_magnitude(image.mean(axis=2), device)
    paths = {"input": os.path.join(out, "input.png"),
             "blur": os.path.join(out, "gaussian_blur.png"),
             "sobel": os.path.join(out, "sobel_magnitude.png")}
    imsave(paths["input"], np.clip(image, 0, 1))
    imsave(paths["blur"], np.clip(blurred, 0, 1))
    imsave(paths["sobel"], edges / max(edges.max(), 1e-12), cmap="gray")
    print(f"{source} {image.shape}: wrote " + ", ".join(paths.values()))
    return paths


if __name__ == "__main__":
    p = argparse.ArgumentParser(prog="python -m apps.filters", description=__doc__.split("\n")[0])
    p.add_argument("--out", default=os.path.join("out", "filters"))
    p.add_argument("--sigma", type=float, default=2.0)
    p.add_argument("--downscale", type=int, default=2)
    a = p.parse_args()
    main(a.out, a.sigma, a.downscale)
