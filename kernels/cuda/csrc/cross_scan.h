// cross_scan / cross_merge kernels (cross_scan.cu), shared with the torch bindings (bindings.cpp).
// Plain C++ so that the .cu compiles without torch's headers.
#pragma once

#include <cstdint>
#include <cuda_runtime.h>

#include "element.h"

namespace mambaic {

// The map's sizes; x / out of cross_scan and y / out of cross_merge are contiguous.
struct CrossShape {
  int64_t batch, channels, height, width;
  bool channel_last;  // the map is (batch, H, W, C) rather than (batch, C, H, W)
};

// Why one launch cannot take this map, or "" when it can.
const char* cross_unsupported(const CrossShape& shape);
// out (batch, 4, C, L) = the four scan orders of the map x.
void cross_scan_launch(const void* x, void* out, const CrossShape& shape, Element element, cudaStream_t stream);
// out (the map's layout) = the sum of y (batch, 4, C, L)'s four directions, each put back in row-major order.
void cross_merge_launch(const void* y, void* out, const CrossShape& shape, Element element, cudaStream_t stream);

}  // namespace mambaic
