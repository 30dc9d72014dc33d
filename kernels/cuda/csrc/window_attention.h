// Window attention kernels (window_attention_fwd.cu, window_attention_bwd.cu), shared with the torch
// bindings (bindings.cpp). Plain C++ so that the .cu files compile without torch's headers.
#pragma once

#include <cstdint>
#include <cuda_runtime.h>

#include "element.h"

namespace mambaic {

constexpr int kMaxWindow = 8;    // w*w <= 64 tokens: four warps of 16 query rows
constexpr int kMaxHeadDim = 32;  // the widest head the kernels are built for (16 and 32)

struct WindowAttentionParams {
  const void* qkv;         // (batch, H, W, 3 dim), channels (q|k|v, head, head_dim), in `element`
  const float* table;      // (heads, 2w-1, 2w-1): the relative position bias
  const void* dout;        // backward: (batch, H, W, dim)
  void* out;               // forward: (batch, H, W, dim); backward: d qkv, qkv's shape
  float* dtable_parts;     // backward: (batch * windows, heads, 2w-1, 2w-1), one partial per block
  int64_t batch, height, width;
  int heads, head_dim, window;
  bool shifted;
  float scale;             // head_dim^-0.5
  Element element;
};

// Why the kernels cannot take these parameters, or "" when they can.
const char* window_attention_unsupported(const WindowAttentionParams& p);
void window_attention_fwd_launch(const WindowAttentionParams& p, cudaStream_t stream);
void window_attention_bwd_launch(const WindowAttentionParams& p, cudaStream_t stream);

}  // namespace mambaic
