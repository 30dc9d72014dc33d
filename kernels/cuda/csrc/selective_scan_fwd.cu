// Forward selective scan (Mamba S6, VMamba's grouping of B and C), CUDA.
//
// Work layout. A block of W warps owns W channels of one group (they share B and C) and walks L
// in tiles of 512 steps. In a tile, lane l of every warp owns the 16 consecutive steps
// [16 l, 16 l + 16) of its warp's channel; the block stages the tile's B and C rows (16 states)
// in shared memory once for its W channels. For each state n, in turn:
//   pass 1   a_t = exp2(dt_t A[n] log2 e), x_t = dt_t u_t B[n, t], and the lane's end state from
//            zero, h = a h + x over its 16 steps (a and x stay in registers);
//   combine  an inclusive warp scan (shuffles) of the lanes' affine maps h -> P h + h_end, with
//            P = exp2(A[n] log2 e * sum dt) the lane's decay; applied to the state entering the
//            tile it gives each lane its true start and the state leaving the tile;
//   pass 2   the exact states again from that start, y_t += C[n, t] h_t.
// Every exp2 is computed once (plus one per lane and state for P). The combine order depends
// only on the tile shape, so the forward gives the same bits on every run.
//
// Costs per (channel, state, step), the unit of the exp floor: 1 MUFU ex2, 6 FP32 instructions
// (two multiplies, three FMAs and the shuffled combine's share, ~2 at 16 steps per lane) and one
// 16-byte shared load per 4 steps of B and of C. Shared-memory rows are padded by one 16-byte
// chunk per eight so that the 8 lanes of a quarter warp reading chunk j of their segments (a
// stride of 4 chunks) hit 8 different bank groups.
//
// Reversed directions (the fused SS2D core's k = 2, 3) walk the tiles from the last and, inside a
// tile, give lane l the segment 31 - l and run its steps backwards: loads and stores stay at the
// same aligned addresses as forwards. Steps past L have dt = 0 and B = C = 0: identity maps.

#include "scan_common.cuh"
#include "selective_scan.h"

namespace mambaic {
namespace {

using namespace scan;
static_assert(kTile == kScanTile, "tile_states has one entry per kernel tile");

// Shared memory of a block: the tile's B, C and projection rows, then per warp A log2 e and dt_weight.
struct Smem {
  float4 *B, *C, *proj;  // [kStates][kRow], [kStates][kRow], [rank][kRow]
  float *A2, *w;         // [kStates], [rank] of this warp
};

template <int kWarps>
__host__ __device__ constexpr size_t smem_bytes(int rank) {
  return (2 * kStates + rank) * kRow * sizeof(float4) + kWarps * (kStates + rank) * sizeof(float);
}

template <int kWarps, bool kVec, bool kProj, bool kSave, bool kReverse>
__device__ __forceinline__ void scan_channel(const ScanFwdParams& p, const ScanDirection& q, int channel, int lane,
                                             const Smem& sm) {
  const int L = p.length, b = blockIdx.z;
  const int group = channel / (p.channels / p.groups);
  const float* u = q.u + b * p.u_batch + channel * p.u_channel;
  const float* delta = q.delta + b * p.u_batch + channel * p.u_channel;
  const float* B = q.B + b * p.bc_batch + group * p.bc_group;
  const float* C = q.C + b * p.bc_batch + group * p.bc_group;
  const float* proj = kProj ? q.proj + b * p.bc_batch : nullptr;
  float* y = q.y + b * p.y_batch + channel * p.y_channel;
  const int tiles = (L + kTile - 1) / kTile;
  float* tile_states = kSave ? q.tile_states + (int64_t(b) * p.channels + channel) * tiles * p.states : nullptr;
  const int rank = kProj ? p.rank : 0;

  // A (times log2 e) and the delta weights in shared memory, not registers: read once per state
  // (or rank row) and tile, by the whole warp
  float* A2 = sm.A2;
  if (lane < kStates) A2[lane] = lane < p.states ? q.A[channel * p.states + lane] * kLog2e : 0.f;
  for (int r = lane; r < rank; r += kLanes) sm.w[r] = q.dt_weight[channel * rank + r];
  __syncwarp();
  float carry[kStates];
#pragma unroll
  for (int n = 0; n < kStates; ++n) carry[n] = 0.f;
  const float skip = q.D ? q.D[channel] : 0.f;
  const float bias = q.delta_bias ? q.delta_bias[channel] : 0.f;
  const int seg = kReverse ? kLanes - 1 - lane : lane;

  for (int it = 0; it < tiles; ++it) {
    const int t0 = (kReverse ? tiles - 1 - it : it) * kTile;
    const int ts = t0 + seg * kSteps;  // the lane's first step (in memory order)
    float dtu[kSteps], dt[kSteps], out[kSteps];
    load_steps<kVec>(u, ts, L, dtu);
    if (!kProj) load_steps<kVec>(delta, ts, L, dt);

    __syncthreads();  // every warp is done with the previous tile's rows
    stage_rows<kVec, kWarps * kLanes>(sm.B, B, sm.C, C, p.bc_state, kStates, p.states, t0, L);
    if (kProj) stage_rows<kVec, kWarps * kLanes>(sm.proj, proj, nullptr, nullptr, p.bc_state, rank, rank, t0, L);
    __syncthreads();  // the tile's rows are staged

    if (kProj) {  // delta = dt_weight[channel] @ the rank rows, in registers: never written
#pragma unroll
      for (int i = 0; i < kSteps; ++i) dt[i] = 0.f;
      for (int r = 0; r < rank; ++r) {
        float row[kSteps];
        read_segment(sm.proj, r, seg, row);
        const float w = sm.w[r];
#pragma unroll
        for (int i = 0; i < kSteps; ++i) dt[i] = fmaf(w, row[i], dt[i]);
      }
    }
    float dtsum = 0.f;
#pragma unroll
    for (int i = 0; i < kSteps; ++i) {
      float v = dt[i] + bias;
      if (p.softplus) v = softplus(v);
      v = ts + i < L ? v : 0.f;
      dt[i] = v;
      out[i] = skip * dtu[i];
      dtu[i] *= v;
      dtsum += v;
    }

#pragma unroll
    for (int n = 0; n < kStates; ++n) {
      if (n >= p.states) break;
      float a[kSteps], x[kSteps];
      const float A2n = A2[n];
      float h = 0.f;
#pragma unroll
      for (int jj = 0; jj < kSteps / 4; ++jj) {  // B read 16 bytes at a time, in walking order
        const int j = kReverse ? kSteps / 4 - 1 - jj : jj;
        const float4 q4 = sm.B[n * kRow + padded(seg * (kSteps / 4) + j)];
        const float bq[4] = {q4.x, q4.y, q4.z, q4.w};
#pragma unroll
        for (int ii = 0; ii < 4; ++ii) {
          const int i = 4 * j + (kReverse ? 3 - ii : ii);
          a[i] = ex2(dt[i] * A2n);
          x[i] = dtu[i] * bq[i % 4];
          h = fmaf(a[i], h, x[i]);
        }
      }
      // inclusive scan of the lanes' maps (P, e): h -> P h + e, lane order = time order
      float P = ex2(dtsum * A2n), e = h;
#pragma unroll
      for (int o = 1; o < kLanes; o <<= 1) {
        const float Pp = __shfl_up_sync(kFull, P, o), ep = __shfl_up_sync(kFull, e, o);
        if (lane >= o) e = fmaf(P, ep, e), P *= Pp;
      }
      if (kSave && lane == 0) tile_states[(t0 / kTile) * p.states + n] = carry[n];
      const float end = fmaf(P, carry[n], e);  // the state after this lane's segment
      float start = __shfl_up_sync(kFull, end, 1);
      if (lane == 0) start = carry[n];
      carry[n] = __shfl_sync(kFull, end, kLanes - 1);

      h = start;
#pragma unroll
      for (int jj = 0; jj < kSteps / 4; ++jj) {
        const int j = kReverse ? kSteps / 4 - 1 - jj : jj;
        const float4 q4 = sm.C[n * kRow + padded(seg * (kSteps / 4) + j)];
        const float cq[4] = {q4.x, q4.y, q4.z, q4.w};
#pragma unroll
        for (int ii = 0; ii < 4; ++ii) {
          const int i = 4 * j + (kReverse ? 3 - ii : ii);
          h = fmaf(a[i], h, x[i]);
          out[i] = fmaf(cq[i % 4], h, out[i]);
        }
      }
    }
    store_steps<kVec>(y, ts, L, out, p.accumulate);
  }
}

template <int kWarps, bool kVec, bool kProj, bool kSave>
__global__ void __launch_bounds__(kWarps * kLanes, 2) selective_scan_fwd_kernel(const ScanFwdParams p) {
  extern __shared__ float4 smem[];
  const int warp = threadIdx.x / kLanes;
  const int rank = p.rank;
  float* per_warp = reinterpret_cast<float*>(smem + (2 * kStates + rank) * kRow) + warp * (kStates + rank);
  const Smem sm{smem, smem + kStates * kRow, smem + 2 * kStates * kRow, per_warp, per_warp + kStates};
  const int blocks_per_direction = p.channels / kWarps;
  const int d = blockIdx.x / blocks_per_direction;
  const int channel = (blockIdx.x % blocks_per_direction) * kWarps + warp;
  const ScanDirection q = d == 0 ? p.dir[0] : d == 1 ? p.dir[1] : d == 2 ? p.dir[2] : p.dir[3];
  if (q.reverse) scan_channel<kWarps, kVec, kProj, kSave, true>(p, q, channel, threadIdx.x % kLanes, sm);
  else scan_channel<kWarps, kVec, kProj, kSave, false>(p, q, channel, threadIdx.x % kLanes, sm);
}

// 16-byte loads need every row to start on 16 bytes.
bool vectorizable(const ScanFwdParams& p) {
  if (p.length % 4 || p.u_batch % 4 || p.u_channel % 4 || p.bc_batch % 4 || p.bc_group % 4 || p.bc_state % 4 ||
      p.y_batch % 4 || p.y_channel % 4)
    return false;
  for (int d = 0; d < p.directions; ++d) {
    const ScanDirection& q = p.dir[d];
    if (!aligned(q.u) || !aligned(q.delta) || !aligned(q.proj) || !aligned(q.B) || !aligned(q.C) || !aligned(q.y))
      return false;
  }
  return true;
}

template <int kWarps, bool kVec>
void launch(const ScanFwdParams& p, cudaStream_t stream) {
  // delta read from memory (the public op) or computed from the projection rows (the SS2D core),
  // each saving the tile states for its backward or not: separate kernels, so that each keeps the
  // registers the others spend
  const bool proj = p.dir[0].proj, save = p.dir[0].tile_states;
  auto kernel = proj ? (save ? selective_scan_fwd_kernel<kWarps, kVec, true, true>
                             : selective_scan_fwd_kernel<kWarps, kVec, true, false>)
                     : (save ? selective_scan_fwd_kernel<kWarps, kVec, false, true>
                             : selective_scan_fwd_kernel<kWarps, kVec, false, false>);
  const size_t bytes = smem_bytes<kWarps>(p.rank);
  cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
  const dim3 grid(p.directions * (p.channels / kWarps), 1, p.batch);
  kernel<<<grid, kWarps * kLanes, bytes, stream>>>(p);
}

}  // namespace

const char* selective_scan_fwd_unsupported(const ScanFwdParams& p) {
  if (const char* why = scan_shape_unsupported(p.states, p.channels, p.groups, p.batch)) return why;
  if (p.directions < 1 || p.directions > kMaxDirections) return "one to four directions per launch";
  if (p.rank < 0 || p.rank > kMaxRank) return "the cuda scan stages at most 64 rows of the delta projection (dt_rank)";
  for (int d = 0; d < p.directions; ++d)
    if ((p.dir[d].delta == nullptr) == (p.dir[d].proj == nullptr) || (p.dir[d].proj == nullptr) != (p.dir[0].proj == nullptr))
      return "every direction reads delta, or every direction its projection";
  for (int d = 0; d < p.directions; ++d)
    if ((p.dir[d].tile_states != nullptr) != (p.dir[0].tile_states != nullptr))
      return "the tile states are saved for every direction or none";
  return "";
}

void selective_scan_fwd_launch(const ScanFwdParams& p, cudaStream_t stream) {
  if (p.length == 0 || p.batch == 0 || p.channels == 0) return;
  dispatch_shape(p.channels, p.groups, vectorizable(p),
                 [&](auto warps, auto vec) { launch<decltype(warps)::value, decltype(vec)::value>(p, stream); });
}

}  // namespace mambaic
