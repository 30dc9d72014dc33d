// Parameters of the selective scan kernels (selective_scan_fwd.cu, selective_scan_bwd.cu), shared with the torch
// bindings (bindings.cpp). Plain C++ so that the .cu compiles without torch's headers.
#pragma once

#include <cstdint>
#include <cuda_runtime.h>

namespace mambaic {

constexpr int kMaxDirections = 4;
constexpr int kScanTile = 512;  // steps per tile of both scans: tile_states holds one state per tile
constexpr int kMaxRank = 64;  // rows of the delta projection staged per tile (dt_rank)

// One scan direction: the channels of one launch read these pointers. The public op has one
// direction; the fused SS2D core launches its four (k + 2 walks k's sequence backwards; k and
// k + 2 add into one accumulator).
struct ScanDirection {
  const float* u;           // (batch, channels, L) with the strides below
  const float* delta;       // same layout as u; null when computed from `proj` (below)
  const float* proj;        // (batch, rank, L) with the B / C strides: delta = dt_weight @ proj
  const float* dt_weight;   // (channels, rank)
  const float* A;           // (channels, states)
  const float* B;           // (batch, groups, states, L)
  const float* C;           // same layout as B
  const float* D;           // (channels,) or null
  const float* delta_bias;  // (channels,) or null
  float* y;                 // (batch, channels, L)
  bool reverse;             // walk L from its end (the output stays in sequence order)
  float* tile_states;       // null, or (batch, channels, tiles of 512 steps, states): the state entering each
                            // tile, written for the backward (selective_scan_bwd.cu)
};

struct ScanFwdParams {
  ScanDirection dir[kMaxDirections];
  int directions;  // blocks [d * channels / warps, (d + 1) * channels / warps) run dir[d]
  int batch, channels, groups, states, length, rank;
  // strides in elements; the step stride is 1 for every tensor (proj shares B's and C's)
  int64_t u_batch, u_channel, bc_batch, bc_group, bc_state, y_batch, y_channel;
  bool softplus;    // dt = softplus(delta + bias)
  bool accumulate;  // y += with atomics (exactly two directions per element: bit-reproducible)
};

// Why a launch is refused (an empty string when it is fine), then the launch on `stream`.
const char* selective_scan_fwd_unsupported(const ScanFwdParams& p);
void selective_scan_fwd_launch(const ScanFwdParams& p, cudaStream_t stream);

// The backward of one scan direction from dy and the forward's tile states: the gradients of every
// input. The public op has one direction; the fused SS2D core's backward launches a pair (k and
// k + 2: one sequence, k + 2 walking it backwards, their du added into one zeroed tensor).
struct ScanBwdDirection {
  const float *u, *delta, *A, *B, *C, *D, *delta_bias;  // as ScanDirection (D, delta_bias may be null)
  const float *dy, *tile_states;                         // dy like u; tile_states as ScanDirection's
  float *du, *ddelta;                                    // like u, written (du added to with `accumulate_du`)
  float *dB, *dC;                                        // like B, zeroed by the caller, added to atomically
  float *dA_part, *dD_part, *dbias_part;                 // (batch, channels, states), (batch, channels) x 2:
                                                         // written per image, summed by the caller
  bool reverse;                                          // as ScanDirection's
};

struct ScanBwdParams {
  ScanBwdDirection dir[kMaxDirections];
  int directions;  // blocks [d * channels / warps, (d + 1) * channels / warps) run dir[d]
  int batch, channels, groups, states, length;
  int64_t u_batch, u_channel, bc_batch, bc_group, bc_state;  // delta, dy, du and ddelta share u's strides
  bool softplus;
  bool accumulate_du;  // du += with atomics (exactly two directions per element onto zeros: bit-reproducible)
};

const char* selective_scan_bwd_unsupported(const ScanBwdParams& p);
void selective_scan_bwd_launch(const ScanBwdParams& p, cudaStream_t stream);

// out[b][j][i] = in[b][i][j] (+ out[b][j][i] when accumulate) for `batch` row-major (rows, cols)
// matrices: the transposes of the fused SS2D core (column-major directions, channel-last output).
void transpose_launch(const float* in, float* out, int64_t batch, int64_t rows, int64_t cols, bool accumulate,
                      cudaStream_t stream);

}  // namespace mambaic
