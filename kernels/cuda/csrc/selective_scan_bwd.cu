// Backward selective scan (Mamba S6, VMamba's grouping of B and C), CUDA.
//
// With a_t = exp(dt_t A), x_t = dt_t u_t B_t and h_t = a_t h_{t-1} + x_t, the adjoint of the state
// g_t = dL/dh_t obeys the reversed recurrence g_t = C_t dy_t + a_{t+1} g_{t+1}, and
//   du_t  = D dy_t + dt_t s_t                  s_t = sum_n g_t[n] B_t[n]
//   ddt_t = u_t s_t + sum_n A[n] g_t[n] m_t[n]   m_t = a_t h_{t-1} (= h_t - x_t)
//   dA[n] = sum_t g_t[n] dt_t m_t[n],  dB_t[n] = sum_channels g_t[n] dt_t u_t,  dC_t[n] = sum_channels dy_t h_t[n]
// and ddelta = ddt * softplus'(delta + bias) = ddt * (1 - exp(-dt)).
//
// Work layout: the forward's (selective_scan_fwd.cu). A block of W warps owns W channels of one
// group and walks the tiles of 512 steps from the last; lane l owns the steps [16 l, 16 l + 16).
// The forward left the state entering every tile (tile_states), so for each state n a tile needs
//   passes 1-2  the states again, as the forward does (lane end states, an up-shuffled scan from
//               the stored entering state, then m_t = a_t h_{t-1} per step, kept in registers);
//   passes 3-4  the adjoint the same way backwards: each lane's map q -> e + P q of the value
//               a_s g_s it hands to the lane before it, a down-shuffled scan from the adjoint
//               carried in from the next tile, then the exact g_t and every gradient term.
// dB and dC sum over channels: after each state, every warp writes its terms to its own padded
// shared-memory rows (lane l's 16 steps at 17 l: no bank conflicts; two buffers, so one barrier per
// state), the block sums its W warps in a fixed order and adds the sums to global memory with one
// 16-byte atomic per 4 steps: channels / W additions per element. (Shared-memory float atomics
// would be compare-and-swap loops on sm_90: 6x slower in a first version.) dA, dD and the bias
// gradient are summed per channel in a fixed order and written per image. The backward is not
// bit-reproducible (dB and dC are sums of atomics); the forward is.
//
// Reversed directions (the fused SS2D core's k + 2) mirror the forward's: the walk runs from the
// first tile to the last, lane l owns the segment 31 - l and each pass takes its steps in the
// opposite memory order; registers, shared rows and stores keep their memory positions.

#include "scan_common.cuh"
#include "selective_scan.h"

namespace mambaic {
namespace {

using namespace scan;
static_assert(kTile == kScanTile, "tile_states has one entry per kernel tile");

constexpr int kLaneStride = kSteps + 1;           // lane l's steps start at 17 l in an accumulator row
constexpr int kAccRow = kLanes * kLaneStride;     // floats of a warp's dB (or dC) terms of one state
constexpr int kPerWarp = 3 * kStates + kStates * kLanes;  // A, A log2 e, adjoint carry, lane dA sums

template <int kWarps>
constexpr size_t bwd_smem_bytes() {
  return 2 * kStates * kRow * sizeof(float4) + (2 * kWarps * 2 * kAccRow + kWarps * kPerWarp) * sizeof(float);
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = kLanes / 2; o > 0; o >>= 1) v += __shfl_xor_sync(kFull, v, o);
  return v;
}

// Step i of a lane's 16 at position `pos` of a walk over them in time order (`forward`) or against
// it; 4-step chunk j = i / 4 and element i % 4 give the 16-byte shared-memory reads.
template <bool kReverse>
__device__ __forceinline__ constexpr int chunk_at(int pos, bool forward) {
  return (forward != kReverse) ? pos : kSteps / 4 - 1 - pos;
}
template <bool kReverse>
__device__ __forceinline__ constexpr int elem_at(int pos, bool forward) {
  return (forward != kReverse) ? pos : 3 - pos;
}

template <int kWarps, bool kVec, bool kReverse>
__device__ __forceinline__ void scan_channel_bwd(const ScanBwdParams& p, const ScanBwdDirection& q, float4* smem,
                                                 int channel) {
  float4* sB = smem;
  float4* sC = smem + kStates * kRow;
  float* terms = reinterpret_cast<float*>(smem + 2 * kStates * kRow);  // [2 buffers][kWarps][dB, dC][kAccRow]
  const int warp = threadIdx.x / kLanes, lane = threadIdx.x % kLanes;
  float* A_n = terms + 2 * kWarps * 2 * kAccRow + warp * kPerWarp;  // this warp's A[n]
  float* A2_n = A_n + kStates;                                // A[n] log2 e
  float* g_carry = A2_n + kStates;                            // a g entering the tile's last step, per state
  float* dA_lane = g_carry + kStates;                         // [kStates][kLanes]

  const int L = p.length, b = blockIdx.z;
  const int group = channel / (p.channels / p.groups);
  const int64_t row = b * p.u_batch + channel * p.u_channel;
  const float *u = q.u + row, *delta = q.delta + row, *dy = q.dy + row;
  float *du = q.du + row, *ddelta = q.ddelta + row;
  const int64_t bc = b * p.bc_batch + group * p.bc_group;
  const float *B = q.B + bc, *C = q.C + bc;
  float *dB = q.dB + bc, *dC = q.dC + bc;
  const int tiles = (L + kTile - 1) / kTile;
  const float* entering = q.tile_states + (int64_t(b) * p.channels + channel) * tiles * p.states;
  const int seg = kReverse ? kLanes - 1 - lane : lane;  // the lane's 16 steps in memory

  if (lane < kStates) {
    const float a = lane < p.states ? q.A[channel * p.states + lane] : 0.f;
    A_n[lane] = a, A2_n[lane] = a * kLog2e, g_carry[lane] = 0.f;
  }
  for (int i = lane; i < kStates * kLanes; i += kLanes) dA_lane[i] = 0.f;
  __syncwarp();
  const float skip = q.D ? q.D[channel] : 0.f;
  const float bias = q.delta_bias ? q.delta_bias[channel] : 0.f;
  float dskip = 0.f, dbias = 0.f;

  for (int it = tiles - 1; it >= 0; --it) {  // the walk's tiles, its last first
    const int tile = kReverse ? tiles - 1 - it : it;
    const int t0 = tile * kTile, ts = t0 + seg * kSteps;
    float dt[kSteps], dtu[kSteps], gy[kSteps];
    load_steps<kVec>(delta, ts, L, dt);
    load_steps<kVec>(u, ts, L, dtu);
    load_steps<kVec>(dy, ts, L, gy);

    __syncthreads();  // every warp is done with the previous tile's rows and terms
    stage_rows<kVec, kWarps * kLanes>(sB, B, sC, C, p.bc_state, kStates, p.states, t0, L);
    __syncthreads();

    float dtsum = 0.f;
#pragma unroll
    for (int i = 0; i < kSteps; ++i) {
      float v = dt[i] + bias;
      if (p.softplus) v = softplus(v);
      v = ts + i < L ? v : 0.f;  // steps past L: identity maps, no gradient
      dt[i] = v, dtu[i] *= v, dtsum += v;
    }
    float s[kSteps], w[kSteps];
#pragma unroll
    for (int i = 0; i < kSteps; ++i) s[i] = 0.f, w[i] = 0.f;

#pragma unroll 1
    for (int n = 0; n < p.states; ++n) {
      const float An = A_n[n], A2n = A2_n[n];
      const float4* Bq = sB + n * kRow;
      const float4* Cq = sC + n * kRow;
      float a[kSteps], m[kSteps];

      // pass 1: the lane's end state from zero
      float h = 0.f;
#pragma unroll
      for (int jj = 0; jj < kSteps / 4; ++jj) {
        const int j = chunk_at<kReverse>(jj, true);
        const float4 q4 = Bq[padded(seg * (kSteps / 4) + j)];
        const float bq[4] = {q4.x, q4.y, q4.z, q4.w};
#pragma unroll
        for (int kk = 0; kk < 4; ++kk) {
          const int k = elem_at<kReverse>(kk, true), i = 4 * j + k;
          a[i] = ex2(dt[i] * A2n);
          h = fmaf(a[i], h, dtu[i] * bq[k]);
        }
      }
      const float P0 = ex2(dtsum * A2n);  // the lane's decay over its 16 steps
      float P = P0, e = h;
#pragma unroll
      for (int o = 1; o < kLanes; o <<= 1) {  // inclusive scan of h -> P h + e, in time order
        const float Pp = __shfl_up_sync(kFull, P, o), ep = __shfl_up_sync(kFull, e, o);
        if (lane >= o) e = fmaf(P, ep, e), P *= Pp;
      }
      const float h_in = entering[tile * p.states + n];
      float start = __shfl_up_sync(kFull, fmaf(P, h_in, e), 1);
      if (lane == 0) start = h_in;

      // pass 2: m_t = a_t h_{t-1}
      h = start;
#pragma unroll
      for (int jj = 0; jj < kSteps / 4; ++jj) {
        const int j = chunk_at<kReverse>(jj, true);
        const float4 q4 = Bq[padded(seg * (kSteps / 4) + j)];
        const float bq[4] = {q4.x, q4.y, q4.z, q4.w};
#pragma unroll
        for (int kk = 0; kk < 4; ++kk) {
          const int k = elem_at<kReverse>(kk, true), i = 4 * j + k;
          m[i] = a[i] * h;
          h = fmaf(dtu[i], bq[k], m[i]);
        }
      }

      // pass 3: what the lane hands back, a_s g_s at its first step s, from a zero adjoint after it
      float r = 0.f;
#pragma unroll
      for (int jj = 0; jj < kSteps / 4; ++jj) {
        const int j = chunk_at<kReverse>(jj, false);
        const float4 q4 = Cq[padded(seg * (kSteps / 4) + j)];
        const float cq[4] = {q4.x, q4.y, q4.z, q4.w};
#pragma unroll
        for (int kk = 0; kk < 4; ++kk) {
          const int k = elem_at<kReverse>(kk, false), i = 4 * j + k;
          r = a[i] * fmaf(cq[k], gy[i], r);
        }
      }
      P = P0, e = r;
#pragma unroll
      for (int o = 1; o < kLanes; o <<= 1) {  // inclusive scan of q -> e + P q, against time order
        const float Pn = __shfl_down_sync(kFull, P, o), en = __shfl_down_sync(kFull, e, o);
        if (lane + o < kLanes) e = fmaf(P, en, e), P *= Pn;
      }
      const float g_in = g_carry[n];
      const float handed = fmaf(P, g_in, e);  // a_s g_s with everything after the lane
      float g_next = __shfl_down_sync(kFull, handed, 1);  // a g entering the lane's last step
      if (lane == kLanes - 1) g_next = g_in;
      const float g_out = __shfl_sync(kFull, handed, 0);
      __syncwarp();
      if (lane == 0) g_carry[n] = g_out;  // what the previous tile's last step receives

      // pass 4: the exact adjoint and every gradient term
      float* const buffer = terms + (n & 1) * kWarps * 2 * kAccRow;
      float* dB_row = buffer + warp * 2 * kAccRow + seg * kLaneStride;
      float* dC_row = dB_row + kAccRow;
      float dA = 0.f;
      r = g_next;
#pragma unroll
      for (int jj = 0; jj < kSteps / 4; ++jj) {
        const int j = chunk_at<kReverse>(jj, false);
        const float4 b4 = Bq[padded(seg * (kSteps / 4) + j)];
        const float4 c4 = Cq[padded(seg * (kSteps / 4) + j)];
        const float bq[4] = {b4.x, b4.y, b4.z, b4.w}, cq[4] = {c4.x, c4.y, c4.z, c4.w};
#pragma unroll
        for (int kk = 0; kk < 4; ++kk) {
          const int k = elem_at<kReverse>(kk, false), i = 4 * j + k;
          const float g = fmaf(cq[k], gy[i], r);
          const float gm = g * m[i];
          s[i] = fmaf(g, bq[k], s[i]);
          w[i] = fmaf(gm, An, w[i]);
          dA = fmaf(gm, dt[i], dA);
          dB_row[i] = g * dtu[i];
          dC_row[i] = gy[i] * fmaf(dtu[i], bq[k], m[i]);  // dy_t h_t
          r = a[i] * g;
        }
      }
      dA_lane[n * kLanes + lane] += dA;

      __syncthreads();  // every warp's terms of state n are in the buffer
      for (int i = threadIdx.x; i < 2 * kChunks; i += kWarps * kLanes) {
        const int which = i / kChunks, step = 4 * (i % kChunks), t = t0 + step;
        const float* src = buffer + which * kAccRow + (step / kSteps) * kLaneStride + step % kSteps;
        float sum[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
        for (int v = 0; v < kWarps; ++v)
#pragma unroll
          for (int k = 0; k < 4; ++k) sum[k] += src[v * 2 * kAccRow + k];
        float* out = (which ? dC : dB) + n * p.bc_state + t;
        if (kVec) {
          if (t < L) atomic_add4(out, make_float4(sum[0], sum[1], sum[2], sum[3]));
        } else {
#pragma unroll
          for (int k = 0; k < 4; ++k)
            if (t + k < L) atomicAdd(out + k, sum[k]);
        }
      }
    }

    // du and ddelta of the lane's steps; u read again rather than kept in registers
    float uu[kSteps];
    load_steps<kVec>(u, ts, L, uu);
#pragma unroll
    for (int i = 0; i < kSteps; ++i) {
      float ddt = fmaf(uu[i], s[i], w[i]);
      if (p.softplus) ddt *= -expm1f(-dt[i]);  // softplus'(v) = sigmoid(v) = 1 - exp(-softplus(v))
      ddt = ts + i < L ? ddt : 0.f;
      dbias += ddt;
      dskip = fmaf(gy[i], uu[i], dskip);
      s[i] = fmaf(dt[i], s[i], skip * gy[i]);  // du
      w[i] = ddt;
    }
    store_steps<kVec>(du, ts, L, s, p.accumulate_du);
    store_steps<kVec>(ddelta, ts, L, w, false);
  }

  const int64_t part = int64_t(b) * p.channels + channel;
  for (int n = 0; n < p.states; ++n) {
    const float v = warp_sum(dA_lane[n * kLanes + lane]);
    if (lane == 0) q.dA_part[part * p.states + n] = v;
  }
  dskip = warp_sum(dskip), dbias = warp_sum(dbias);
  if (lane == 0) q.dD_part[part] = dskip, q.dbias_part[part] = dbias;
}

template <int kWarps, bool kVec>
__global__ void __launch_bounds__(kWarps * kLanes, 1) selective_scan_bwd_kernel(const ScanBwdParams p) {
  extern __shared__ float4 smem[];
  const int blocks_per_direction = p.channels / kWarps;
  const int d = blockIdx.x / blocks_per_direction;
  const int channel = (blockIdx.x % blocks_per_direction) * kWarps + threadIdx.x / kLanes;
  const ScanBwdDirection& q = d == 0 ? p.dir[0] : d == 1 ? p.dir[1] : d == 2 ? p.dir[2] : p.dir[3];
  if (q.reverse) scan_channel_bwd<kWarps, kVec, true>(p, q, smem, channel);
  else scan_channel_bwd<kWarps, kVec, false>(p, q, smem, channel);
}

bool vectorizable(const ScanBwdParams& p) {
  if (p.length % 4 || p.u_batch % 4 || p.u_channel % 4 || p.bc_batch % 4 || p.bc_group % 4 || p.bc_state % 4)
    return false;
  for (int d = 0; d < p.directions; ++d) {
    const ScanBwdDirection& q = p.dir[d];
    for (const void* ptr : {static_cast<const void*>(q.u), static_cast<const void*>(q.delta), static_cast<const void*>(q.dy),
                            static_cast<const void*>(q.B), static_cast<const void*>(q.C), static_cast<const void*>(q.du),
                            static_cast<const void*>(q.ddelta), static_cast<const void*>(q.dB), static_cast<const void*>(q.dC)})
      if (!aligned(ptr)) return false;
  }
  return true;
}

template <int kWarps, bool kVec>
void launch(const ScanBwdParams& p, cudaStream_t stream) {
  auto kernel = selective_scan_bwd_kernel<kWarps, kVec>;
  const size_t bytes = bwd_smem_bytes<kWarps>();
  cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
  const dim3 grid(p.directions * (p.channels / kWarps), 1, p.batch);
  kernel<<<grid, kWarps * kLanes, bytes, stream>>>(p);
}

}  // namespace

const char* selective_scan_bwd_unsupported(const ScanBwdParams& p) {
  if (const char* why = scan_shape_unsupported(p.states, p.channels, p.groups, p.batch)) return why;
  if (p.directions < 1 || p.directions > kMaxDirections) return "one to four directions per launch";
  for (int d = 0; d < p.directions; ++d)
    if (p.dir[d].tile_states == nullptr) return "the backward needs the forward's tile states";
  return "";
}

void selective_scan_bwd_launch(const ScanBwdParams& p, cudaStream_t stream) {
  if (p.length == 0 || p.batch == 0 || p.channels == 0) return;
  dispatch_shape(p.channels, p.groups, vectorizable(p),
                 [&](auto warps, auto vec) { launch<decltype(warps)::value, decltype(vec)::value>(p, stream); });
}

}  // namespace mambaic
