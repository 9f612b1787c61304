// 2-D convolution on the CPU as an implicit GEMM (conv.cc).
//
// The convolution is the product of the im2col matrix A (one row per output
// pixel, one column per filter tap and input channel) with the filter B, but
// A is never built: the GEMM's packing routine reads each panel of it straight
// from the image (padding taps read as zeros, stride, dilation and groups are
// address arithmetic), so the extra memory is a few packing panels per thread.
#pragma once
#include <cstdint>

#include "common/conv_geometry.h"

namespace needle {
namespace cpu {

// The implicit GEMM, for T = float and double. Out's rows (its first three
// axes) are computed in whichever of two orders they are evenly strided in:
// (n, ho, wo), the usual NHWC layout, or (ho, wo, n), the layout in which an
// image whose batch axis has unit stride packs with contiguous copies (the
// filter gradient reads the image that way); otherwise through a scratch copy.
// ConvGeometry (common/conv_geometry.h) says what is computed; the pointers
// already include the views' offsets.
template <typename T>
void conv2d_implicit(const ConvGeometry& g, const T* x, const T* f, T* out);

// Direct loops for 8-32 output channels over a few images (n <= 4) with a deep filter
// and few outputs (the filter gradient of a layer with 1-4 input channels) or over
// images of 1-4 channels (such a layer's forward); conv_direct.cc. Returns false,
// computing nothing, for any other convolution.
template <typename T>
bool conv2d_few_images(const ConvGeometry& g, const T* x, const T* f, T* out);

}  // namespace cpu
}  // namespace needle
