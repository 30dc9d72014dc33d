// Device helpers shared by the forward and backward selective scans (selective_scan_fwd.cu,
// selective_scan_bwd.cu): the tile shape, fast exp2 and softplus, 16-byte row loads and stores,
// the padded shared-memory layout of a staged tile.
#pragma once

#include <cstdint>
#include <type_traits>

namespace mambaic {
namespace scan {

constexpr int kLanes = 32;
constexpr int kSteps = 16;                 // consecutive steps per lane
constexpr int kTile = kLanes * kSteps;     // steps per tile
constexpr int kStates = 16;                // N is padded up to this
constexpr int kChunks = kTile / 4;         // 16-byte chunks per row of the B / C tile
constexpr int kRow = kChunks + kChunks / 8;  // padded row, in chunks
constexpr float kLog2e = 1.4426950408889634f;
constexpr unsigned kFull = 0xffffffffu;

__device__ __forceinline__ int padded(int chunk) { return chunk + (chunk >> 3); }

__device__ __forceinline__ float ex2(float x) {
  float r;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(x));
  return r;
}

// softplus with torch's threshold of 20, to ~1e-7 relative: max(v, 0) + log1p(e), e = exp(-|v|) in
// (0, 1], with log1p(e) = 2 atanh(s) = 2 s (1 + s^2/3 + s^4/5 + ...), s = e / (2 + e) <= 1/3: eight
// terms reach 1e-8. Two MUFU ops and ~15 FP32 instructions, against ~30 for log1pf(expf(v)).
__device__ __forceinline__ float softplus(float v) {
  const float e = ex2(-fabsf(v) * kLog2e);
  const float s = __fdividef(e, 2.f + e), z = s * s;
  float q = 1.f / 15.f;
  q = fmaf(q, z, 1.f / 13.f), q = fmaf(q, z, 1.f / 11.f), q = fmaf(q, z, 1.f / 9.f), q = fmaf(q, z, 1.f / 7.f);
  q = fmaf(q, z, 1.f / 5.f), q = fmaf(q, z, 1.f / 3.f), q = fmaf(q, z, 1.f);
  return v > 20.f ? v : fmaxf(v, 0.f) + 2.f * s * q;
}

// Four consecutive values of a row from step t (zeros past L, or everywhere when !valid).
template <bool kVec>
__device__ __forceinline__ float4 load4(const float* row, int t, int L, bool valid) {
  if (kVec) {
    if (valid && t < L) return __ldg(reinterpret_cast<const float4*>(row + t));  // L % 4 == 0
    return make_float4(0.f, 0.f, 0.f, 0.f);
  }
  float v[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) v[i] = (valid && t + i < L) ? __ldg(row + t + i) : 0.f;
  return make_float4(v[0], v[1], v[2], v[3]);
}

template <bool kVec>
__device__ __forceinline__ void load_steps(const float* row, int t, int L, float (&v)[kSteps]) {
#pragma unroll
  for (int j = 0; j < kSteps / 4; ++j) {
    const float4 q = load4<kVec>(row, t + 4 * j, L, true);
    v[4 * j] = q.x, v[4 * j + 1] = q.y, v[4 * j + 2] = q.z, v[4 * j + 3] = q.w;
  }
}

// out[0..3] += v with atomics: one 16-byte atomic on sm_90 (out 16-byte aligned), four before it.
__device__ __forceinline__ void atomic_add4(float* out, float4 v) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  atomicAdd(reinterpret_cast<float4*>(out), v);
#else
  atomicAdd(out, v.x), atomicAdd(out + 1, v.y), atomicAdd(out + 2, v.z), atomicAdd(out + 3, v.w);
#endif
}

template <bool kVec>
__device__ __forceinline__ void store_steps(float* row, int t, int L, const float (&v)[kSteps], bool accumulate) {
#pragma unroll
  for (int j = 0; j < kSteps / 4; ++j) {
    const int s = t + 4 * j;
    if (kVec) {
      if (s >= L) continue;
      const float4 q = make_float4(v[4 * j], v[4 * j + 1], v[4 * j + 2], v[4 * j + 3]);
      if (accumulate) atomic_add4(row + s, q);
      else *reinterpret_cast<float4*>(row + s) = q;
    } else {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        if (s + i >= L) break;
        if (accumulate) atomicAdd(row + s + i, v[4 * j + i]);
        else row[s + i] = v[4 * j + i];
      }
    }
  }
}

// The 16 values of row n of a staged tile at the lane's segment.
__device__ __forceinline__ void read_segment(const float4* tile, int n, int seg, float (&v)[kSteps]) {
#pragma unroll
  for (int j = 0; j < kSteps / 4; ++j) {
    const float4 q = tile[n * kRow + padded(seg * (kSteps / 4) + j)];
    v[4 * j] = q.x, v[4 * j + 1] = q.y, v[4 * j + 2] = q.z, v[4 * j + 3] = q.w;
  }
}

// A 16-byte copy from global to shared memory that does not wait (cp.async, sm_80+): zeros when
// !valid (no byte is read then).
__device__ __forceinline__ void copy16_async(float4* dst, const float* src, bool valid) {
  const unsigned to = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(to), "l"(src), "r"(valid ? 16 : 0));
}

// Stage rows of one tile (steps [t0, t0 + kTile)) into shared memory as [row][kRow] padded chunks:
// `count` rows of `rows` (zeros from row `valid` on: the states padded up to kStates), and as many
// of `rows2` into `tile2` when given. The whole block of kThreads calls it, then a barrier. With
// 16-byte rows every copy is in flight at once (cp.async): staging costs one memory latency per
// tile, not one per row chunk a thread copies.
template <bool kVec, int kThreads>
__device__ __forceinline__ void stage_rows(float4* tile, const float* rows, float4* tile2, const float* rows2,
                                           int64_t row_stride, int count, int valid, int t0, int L) {
  for (int i = threadIdx.x; i < count * kChunks; i += kThreads) {
    const int r = i / kChunks, chunk = i % kChunks, t = t0 + 4 * chunk;
    if (kVec) {
      const bool ok = r < valid && t < L;
      const int64_t at = ok ? r * row_stride + t : 0;
      copy16_async(tile + r * kRow + padded(chunk), rows + at, ok);
      if (tile2 != nullptr) copy16_async(tile2 + r * kRow + padded(chunk), rows2 + at, ok);
    } else {
      tile[r * kRow + padded(chunk)] = load4<false>(rows + r * row_stride, t, L, r < valid);
      if (tile2 != nullptr) tile2[r * kRow + padded(chunk)] = load4<false>(rows2 + r * row_stride, t, L, r < valid);
    }
  }
  if (kVec) asm volatile("cp.async.wait_all;\n" ::);
}

// Widest block whose channels share one group (W | channels per group): they share the staged rows.
inline int warps_for(int channels, int groups) {
  const int per_group = channels / groups;
  for (int w : {8, 4, 2}) if (per_group % w == 0) return w;
  return 1;
}

// Calls launch(warps, vec) with warps_for's block width and the 16-byte flag as compile-time
// constants (std::integral_constant): the kernels' template arguments, chosen in one place.
template <typename Launch>
void dispatch_shape(int channels, int groups, bool vec, Launch&& launch) {
  auto width = [&](auto v) {
    switch (warps_for(channels, groups)) {
      case 8: return launch(std::integral_constant<int, 8>{}, v);
      case 4: return launch(std::integral_constant<int, 4>{}, v);
      case 2: return launch(std::integral_constant<int, 2>{}, v);
      default: return launch(std::integral_constant<int, 1>{}, v);
    }
  };
  if (vec) width(std::true_type{});
  else width(std::false_type{});
}

// Why the scans refuse these sizes, or null.
inline const char* scan_shape_unsupported(int states, int channels, int groups, int batch) {
  if (states < 1 || states > kStates) return "the cuda selective scan takes 1 to 16 states (N)";
  if (groups < 1 || channels % groups) return "the group count must divide the channel count";
  if (batch > 65535) return "the cuda selective scan takes at most 65535 images per call";
  return nullptr;
}

inline bool aligned(const void* ptr) { return ptr == nullptr || reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }

}  // namespace scan
}  // namespace mambaic
