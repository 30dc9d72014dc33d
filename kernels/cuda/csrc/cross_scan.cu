// cross_scan / cross_merge: the four scan orders of a 2D map (row-major p = h W + w, column-major
// q = w H + h, and both reversed) and their adjoint, through a shared-memory tile.
//
//   cross_scan   out[b, 0, c, p] = out[b, 2, c, L-1-p] = out[b, 1, c, q] = out[b, 3, c, L-1-q] = x[b, c, h, w]
//   cross_merge  out[b, c, h, w] = (y0[p] + y2[L-1-p]) + (y1[q] + y3[L-1-q])   (float32, in this order)
//
// A block owns a tile of kC channels x kH rows x kW columns. Each phase walks the tile with the
// axis that is contiguous in the global tensor it touches fastest across the threads, so every
// warp reads or writes whole runs: the map along w (channels-first) or c (channels-last),
// directions 0 / 2 along w, directions 1 / 3 along h. The reversed directions are runs at
// descending addresses, the same memory sectors. Traffic is the minimum: cross_scan reads E and
// writes 4E elements, cross_merge the reverse (E = batch C H W). Both are index maps plus a sum in
// a fixed order: bit-identical from run to run. Offsets are 64-bit: a 4K map's four directions pass
// 2^31 elements.

#include "cross_scan.h"
#include "element.cuh"

namespace mambaic {
namespace {

constexpr int kThreads = 256;


// Tile sides per layout: channels-first tiles one plane (runs of 64 along w, 32 along h);
// channels-last tiles 16 channels (runs of 16 along c) of 16 x 16 positions.
template <bool kChannelLast> struct Tile;
template <> struct Tile<false> { static constexpr int kC = 1, kH = 32, kW = 64; };
template <> struct Tile<true> { static constexpr int kC = 16, kH = 16, kW = 16; };

// Shared-memory slot of tile element (c, h, w): rows padded by one and channels by one more, so
// that walking any of the three axes fastest hits 32 different banks.
template <bool kChannelLast> struct Slots {
  using S = Tile<kChannelLast>;
  static constexpr int kRow = S::kW + 1, kChannel = S::kH * kRow + 1, kCount = S::kC * kChannel;
  __device__ static int at(int c, int h, int w) { return c * kChannel + h * kRow + w; }
};

// The tile this block owns: (b, c0, h0, w0). Neighbouring blocks touch neighbouring memory of the
// map: channels-first walks one plane's tiles in row-major order; channels-last walks a position
// block's channel tiles first (C is contiguous there).
template <bool kChannelLast> struct TileOrigin {
  int64_t b, c0, h0, w0;
  __device__ TileOrigin(const CrossShape& s) {
    using S = Tile<kChannelLast>;
    const int64_t tc = (s.channels + S::kC - 1) / S::kC, th = (s.height + S::kH - 1) / S::kH,
                  tw = (s.width + S::kW - 1) / S::kW;
    int64_t i = blockIdx.x;
    if (kChannelLast) {
      c0 = i % tc * S::kC, i /= tc;
      w0 = i % tw * S::kW, i /= tw;
      h0 = i % th * S::kH, b = i / th;
    } else {
      w0 = i % tw * S::kW, i /= tw;
      h0 = i % th * S::kH, i /= th;
      c0 = i % tc * S::kC, b = i / tc;
    }
  }
};

// Calls f(c, h, w) for every element of the tile inside the map, `fastest` ('c', 'h' or 'w')
// varying fastest across the block's threads.
template <bool kChannelLast, char kFastest, typename F>
__device__ __forceinline__ void for_tile(const CrossShape& s, const TileOrigin<kChannelLast>& o, F&& f) {
  using S = Tile<kChannelLast>;
  constexpr int kCount = S::kC * S::kH * S::kW;
// A plain loop that the compiler unrolls in part: 32 registers, so eight blocks share an SM and
// their warps hide the loads' latency. (Fully unrolled, with a register array carrying each
// thread's elements between walks, it took 60-102 registers and the merge ran 2.3x slower, the
// scan 1.3x: H100, twelfth session.)
#pragma unroll
  for (int i = threadIdx.x; i < kCount; i += kThreads) {
    int c, h, w;
    if (kFastest == 'w') {
      w = i % S::kW, h = i / S::kW % S::kH, c = i / (S::kW * S::kH);
    } else if (kFastest == 'h') {
      h = i % S::kH, w = i / S::kH % S::kW, c = i / (S::kH * S::kW);
    } else {
      c = i % S::kC, w = i / S::kC % S::kW, h = i / (S::kC * S::kW);
    }
    if (o.c0 + c < s.channels && o.h0 + h < s.height && o.w0 + w < s.width) f(c, h, w);
  }
}

// Offset of map element (b, c, h, w) in either layout.
template <bool kChannelLast>
__device__ __forceinline__ int64_t map_offset(const CrossShape& s, int64_t b, int64_t c, int64_t h, int64_t w) {
  return kChannelLast ? ((b * s.height + h) * s.width + w) * s.channels + c
                      : ((b * s.channels + c) * s.height + h) * s.width + w;
}

template <typename T, bool kChannelLast>
__global__ void __launch_bounds__(kThreads) cross_scan_kernel(const T* __restrict__ x, T* __restrict__ out,
                                                               CrossShape s) {
  using Slot = Slots<kChannelLast>;
  __shared__ T tile[Slot::kCount];
  const TileOrigin<kChannelLast> o(s);
  const int64_t L = s.height * s.width;
  for_tile<kChannelLast, kChannelLast ? 'c' : 'w'>(s, o, [&](int c, int h, int w) {
    tile[Slot::at(c, h, w)] = x[map_offset<kChannelLast>(s, o.b, o.c0 + c, o.h0 + h, o.w0 + w)];
  });
  __syncthreads();
  // direction k of channel c starts at ((b * 4 + k) * C + c) * L
  auto sequence = [&](int k, int c) { return out + ((o.b * 4 + k) * s.channels + o.c0 + c) * L; };
  for_tile<kChannelLast, 'w'>(s, o, [&](int c, int h, int w) {
    const T v = tile[Slot::at(c, h, w)];
    const int64_t p = (o.h0 + h) * s.width + o.w0 + w;
    sequence(0, c)[p] = v;
    sequence(2, c)[L - 1 - p] = v;
  });
  for_tile<kChannelLast, 'h'>(s, o, [&](int c, int h, int w) {
    const T v = tile[Slot::at(c, h, w)];
    const int64_t q = (o.w0 + w) * s.height + o.h0 + h;
    sequence(1, c)[q] = v;
    sequence(3, c)[L - 1 - q] = v;
  });
}

template <typename T, bool kChannelLast>
__global__ void __launch_bounds__(kThreads) cross_merge_kernel(const T* __restrict__ y, T* __restrict__ out,
                                                                CrossShape s) {
  using Slot = Slots<kChannelLast>;
  // The row-major pair (0, 2) and the column-major pair (1, 3) go to separate tiles, so that the
  // two phases need no barrier between them: all four directions' loads are in flight at once.
  __shared__ float rows[Slot::kCount], cols[Slot::kCount];
  const TileOrigin<kChannelLast> o(s);
  const int64_t L = s.height * s.width;
  auto sequence = [&](int k, int c) { return y + ((o.b * 4 + k) * s.channels + o.c0 + c) * L; };
  for_tile<kChannelLast, 'w'>(s, o, [&](int c, int h, int w) {
    const int64_t p = (o.h0 + h) * s.width + o.w0 + w;
    rows[Slot::at(c, h, w)] = to_float(sequence(0, c)[p]) + to_float(sequence(2, c)[L - 1 - p]);
  });
  for_tile<kChannelLast, 'h'>(s, o, [&](int c, int h, int w) {
    const int64_t q = (o.w0 + w) * s.height + o.h0 + h;
    cols[Slot::at(c, h, w)] = to_float(sequence(1, c)[q]) + to_float(sequence(3, c)[L - 1 - q]);
  });
  __syncthreads();
  for_tile<kChannelLast, kChannelLast ? 'c' : 'w'>(s, o, [&](int c, int h, int w) {
    const int i = Slot::at(c, h, w);
    out[map_offset<kChannelLast>(s, o.b, o.c0 + c, o.h0 + h, o.w0 + w)] = from_float<T>(rows[i] + cols[i]);
  });
}

template <bool kChannelLast> int64_t tiles(const CrossShape& s) {
  using S = Tile<kChannelLast>;
  return s.batch * ((s.channels + S::kC - 1) / S::kC) * ((s.height + S::kH - 1) / S::kH) *
         ((s.width + S::kW - 1) / S::kW);
}

constexpr int64_t kMaxBlocks = (int64_t{1} << 31) - 1;  // gridDim.x

template <typename T, bool kMerge>
void launch(const void* src, void* dst, const CrossShape& s, cudaStream_t stream) {
  if (s.batch == 0 || s.channels == 0 || s.height == 0 || s.width == 0) return;
  const T* in = static_cast<const T*>(src);
  T* out = static_cast<T*>(dst);
  if (s.channel_last) {
    auto kernel = kMerge ? cross_merge_kernel<T, true> : cross_scan_kernel<T, true>;
    kernel<<<static_cast<unsigned>(tiles<true>(s)), kThreads, 0, stream>>>(in, out, s);
  } else {
    auto kernel = kMerge ? cross_merge_kernel<T, false> : cross_scan_kernel<T, false>;
    kernel<<<static_cast<unsigned>(tiles<false>(s)), kThreads, 0, stream>>>(in, out, s);
  }
}

}  // namespace

const char* cross_unsupported(const CrossShape& shape) {
  if ((shape.channel_last ? tiles<true>(shape) : tiles<false>(shape)) > kMaxBlocks)
    return "the map has more tiles than one launch can take (2^31 - 1 blocks)";
  return "";
}

void cross_scan_launch(const void* x, void* out, const CrossShape& shape, Element element, cudaStream_t stream) {
  with_element(element, [&](auto t) { launch<decltype(t), false>(x, out, shape, stream); });
}

void cross_merge_launch(const void* y, void* out, const CrossShape& shape, Element element, cudaStream_t stream) {
  with_element(element, [&](auto t) { launch<decltype(t), true>(y, out, shape, stream); });
}

}  // namespace mambaic
