// Batched transpose (optionally adding into the output) through 32 x 32 shared-memory tiles: the
// fused SS2D core turns its column-major accumulator back to row-major and its (dim, L) result
// channel-last. Both global accesses are coalesced; the +1 column avoids bank conflicts.

#include "selective_scan.h"

namespace mambaic {
namespace {

constexpr int kTileSide = 32, kRowsPerPass = 8;

__global__ void transpose_kernel(const float* __restrict__ in, float* __restrict__ out, int64_t batch, int64_t rows,
                                 int64_t cols, bool accumulate) {
  __shared__ float tile[kTileSide][kTileSide + 1];
  const int64_t r0 = static_cast<int64_t>(blockIdx.y) * kTileSide, c0 = static_cast<int64_t>(blockIdx.x) * kTileSide;
  for (int64_t b = blockIdx.z; b < batch; b += gridDim.z) {  // gridDim.z is capped at 65535
    const float* src = in + b * rows * cols;
    float* dst = out + b * rows * cols;
    for (int i = threadIdx.y; i < kTileSide; i += kRowsPerPass) {
      const int64_t r = r0 + i, c = c0 + threadIdx.x;
      if (r < rows && c < cols) tile[i][threadIdx.x] = src[r * cols + c];
    }
    __syncthreads();
    for (int i = threadIdx.y; i < kTileSide; i += kRowsPerPass) {
      const int64_t c = c0 + i, r = r0 + threadIdx.x;  // dst is (cols, rows)
      if (r < rows && c < cols) {
        const float v = tile[threadIdx.x][i];
        dst[c * rows + r] = accumulate ? dst[c * rows + r] + v : v;
      }
    }
    __syncthreads();  // the tile is reused by the next matrix
  }
}

}  // namespace

void transpose_launch(const float* in, float* out, int64_t batch, int64_t rows, int64_t cols, bool accumulate,
                      cudaStream_t stream) {
  if (batch == 0 || rows == 0 || cols == 0) return;
  const unsigned z = static_cast<unsigned>(batch < 65535 ? batch : 65535);
  const dim3 grid((cols + kTileSide - 1) / kTileSide, (rows + kTileSide - 1) / kTileSide, z);
  transpose_kernel<<<grid, dim3(kTileSide, kRowsPerPass), 0, stream>>>(in, out, batch, rows, cols, accumulate);
}

}  // namespace mambaic
