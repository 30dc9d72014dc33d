// Tensor-core matrix products of float32 data (mma.sync m16n8k8 on tf32 operands, sm_80 and later),
// made float32-accurate by the 3xTF32 split (the window attention kernels use them).
//
// 3xTF32: x = hi + lo, hi = tf32(x), lo = tf32(x - hi), so that x - hi - lo is about 2^-22 |x|, and
// a b ~= a_hi b_hi + a_hi b_lo + a_lo b_hi (a_lo b_lo, about 2^-22 |a b|, is dropped): three mma per
// tile, the two small terms first. tf32(x) rounds to nearest, ties away (cvt.rna), and zeroes the
// low 13 bits. Inf has no split (Inf - Inf is NaN), nor has a finite x that rounds up to Inf: the
// kernels check their inputs with splittable() and take an exact float32 path if one fails.
//
// Fragments (PTX ISA, "Matrix Fragments for mma.m16n8k8", .tf32); lane = 4 g + t, g = groupID,
// t = threadID_in_group:
//   A (16 x 8, row):     a0 (g, t)   a1 (g+8, t)   a2 (g, t+4)    a3 (g+8, t+4)
//   B (8 x 8, k x n):    b0 (t, g)   b1 (t+4, g)
//   C, D (16 x 8):       c0 (g, 2t)  c1 (g, 2t+1)  c2 (g+8, 2t)   c3 (g+8, 2t+1)
// A C fragment's columns 2t and 2t+1 are the columns an A fragment holds as t and t+4. A dot product
// may sum its terms in any order, so a C tile feeds the next product as an A tile with no exchange
// between lanes (a_from_c), if B's reduction rows are read in the same order (load_b_kn_paired).
#pragma once

#include <cstdint>

namespace mambaic {
namespace mma {

// mma.sync with tf32 operands exists from sm_80; older targets compile, and never run, the products.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
constexpr bool kTensorCores = false;
#else
constexpr bool kTensorCores = true;
#endif

struct Lane {
  int g, t;  // groupID and threadID_in_group
  __device__ explicit Lane(int lane) : g(lane >> 2), t(lane & 3) {}
};

__device__ __forceinline__ uint32_t tf32(float x) {
  uint32_t r = 0;
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
  asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x));
#endif
  return r;
}

// Finite, and so is tf32(x): |x| below the midpoint between tf32's largest value and 2^128.
// False for NaN too.
__device__ __forceinline__ bool splittable(float x) { return fabsf(x) < 0x1.ffep127f; }

struct FragA {  // one 16 x 8 A tile, split
  uint32_t hi[4], lo[4];
  __device__ void set(int r, float x) {
    hi[r] = tf32(x);
    lo[r] = tf32(x - __uint_as_float(hi[r]));
  }
};
struct FragB {  // one 8 x 8 B tile, split
  uint32_t hi[2], lo[2];
  __device__ void set(int r, float x) {
    hi[r] = tf32(x);
    lo[r] = tf32(x - __uint_as_float(hi[r]));
  }
};

// Loads from row-major float32 matrices M in shared memory, kStride floats a row.

// A = M[row0 .. row0+15][col0 .. col0+7]
template <int kStride>
__device__ __forceinline__ FragA load_a(const float* m, int row0, int col0, Lane l) {
  const float* p = m + (row0 + l.g) * kStride + col0 + l.t;
  FragA f;
  f.set(0, p[0]), f.set(1, p[8 * kStride]), f.set(2, p[4]), f.set(3, p[8 * kStride + 4]);
  return f;
}
// A = M^T: A(r, c) = M[col0 + c][row0 + r]
template <int kStride>
__device__ __forceinline__ FragA load_a_transposed(const float* m, int row0, int col0, Lane l) {
  const float* p = m + (col0 + l.t) * kStride + row0 + l.g;
  FragA f;
  f.set(0, p[0]), f.set(1, p[8]), f.set(2, p[4 * kStride]), f.set(3, p[4 * kStride + 8]);
  return f;
}
// B = M^T: B(k, n) = M[n0 + n][k0 + k]
template <int kStride>
__device__ __forceinline__ FragB load_b_nk(const float* m, int n0, int k0, Lane l) {
  const float* p = m + (n0 + l.g) * kStride + k0 + l.t;
  FragB f;
  f.set(0, p[0]), f.set(1, p[4]);
  return f;
}
// B(k, n) = M[k0 + k][n0 + n]
template <int kStride>
__device__ __forceinline__ FragB load_b_kn(const float* m, int k0, int n0, Lane l) {
  const float* p = m + (k0 + l.t) * kStride + n0 + l.g;
  FragB f;
  f.set(0, p[0]), f.set(1, p[4 * kStride]);
  return f;
}
// B(k, n) = M[k0 + pair(k)][n0 + n], pair(t) = 2t and pair(t + 4) = 2t + 1: the reduction order of
// an A tile made by a_from_c.
template <int kStride>
__device__ __forceinline__ FragB load_b_kn_paired(const float* m, int k0, int n0, Lane l) {
  const float* p = m + (k0 + 2 * l.t) * kStride + n0 + l.g;
  FragB f;
  f.set(0, p[0]), f.set(1, p[kStride]);
  return f;
}
// The C tile c as an A tile whose column t holds c's column 2t and column t + 4 holds 2t + 1.
__device__ __forceinline__ FragA a_from_c(const float (&c)[4]) {
  FragA f;
  f.set(0, c[0]), f.set(1, c[2]), f.set(2, c[1]), f.set(3, c[3]);
  return f;
}

__device__ __forceinline__ void mma_tf32(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
  asm("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}
// d += a b to about float32 accuracy: the small terms first, where d's rounding loses least of them.
__device__ __forceinline__ void mma3(float (&d)[4], const FragA& a, const FragB& b) {
  mma_tf32(d, a.lo, b.hi);
  mma_tf32(d, a.hi, b.lo);
  mma_tf32(d, a.hi, b.hi);
}

}  // namespace mma
}  // namespace mambaic
