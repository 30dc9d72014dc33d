// The element types the kernels load and store (float32, float16, bfloat16), converted to and from
// float32, in which they compute; and the switch from the runtime Element to the type.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "element.h"

namespace mambaic {

template <typename T> __device__ __forceinline__ float to_float(T v) { return static_cast<float>(v); }
template <> __device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
template <> __device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T> __device__ __forceinline__ T from_float(float v) { return static_cast<T>(v); }
template <> __device__ __forceinline__ __half from_float(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float(float v) { return __float2bfloat16_rn(v); }

// f(T{}) with T the C++ type of `element` (a host-side switch; f launches the kernel for T).
template <typename F> void with_element(Element element, F&& f) {
  switch (element) {
    case Element::kFloat32: return f(float{});
    case Element::kFloat16: return f(__half{});
    case Element::kBFloat16: return f(__nv_bfloat16{});
  }
}

}  // namespace mambaic
