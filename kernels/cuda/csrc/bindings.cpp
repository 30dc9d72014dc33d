// Torch bindings of the CUDA kernels: argument checks, the parameter struct (strides in
// elements), the current stream. The Python side (kernels/cuda/) registers the ops, their fake
// kernels and autograd. The scans take float32 tensors (the Python side casts other dtypes); the
// cross ops and window attention take float32, float16 and bfloat16 as they come.

#include <cmath>

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/extension.h>

#include "cross_scan.h"
#include "selective_scan.h"
#include "window_attention.h"

namespace {

// Entries of the forward's tile_states per sequence: one per tile of kScanTile steps.
int64_t tiles_of(int64_t length) { return (length + mambaic::kScanTile - 1) / mambaic::kScanTile; }

void check_cuda_fp32(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_cuda(), name, " must be a CUDA tensor, got one on ", t.device());
  TORCH_CHECK(t.scalar_type() == at::kFloat, name, " must be float32 here, got ", t.scalar_type());
  TORCH_CHECK(t.stride(-1) == 1, name, " must be contiguous along its last dimension, got strides ", t.strides());
}

void check_shape(const at::Tensor& t, const char* name, at::IntArrayRef shape) {
  TORCH_CHECK(t.sizes() == shape, name, " must have shape ", shape, ", got ", t.sizes());
}

const float* optional_ptr(const c10::optional<at::Tensor>& t, const char* name, int64_t channels) {
  if (!t.has_value()) return nullptr;
  check_cuda_fp32(*t, name);
  check_shape(*t, name, {channels});
  return t->data_ptr<float>();
}

void launch_checked(const mambaic::ScanFwdParams& p) {
  const char* why = mambaic::selective_scan_fwd_unsupported(p);
  TORCH_CHECK(why[0] == '\0', "selective_scan (cuda): ", why);
  mambaic::selective_scan_fwd_launch(p, at::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void bwd_launch_checked(const mambaic::ScanBwdParams& p) {
  const char* why = mambaic::selective_scan_bwd_unsupported(p);
  TORCH_CHECK(why[0] == '\0', "selective_scan backward (cuda): ", why);
  mambaic::selective_scan_bwd_launch(p, at::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// The public op: u, delta (batch, KD, L); A (KD, N); B, C (batch, K, N, L); D, delta_bias (KD,).
// With save_states, also the state entering every tile of 512 steps, (batch, KD, tiles, N), for the
// backward; otherwise an empty tensor in its place.
std::tuple<at::Tensor, at::Tensor> selective_scan_fwd(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
                                                      const at::Tensor& B, const at::Tensor& C,
                                                      const c10::optional<at::Tensor>& D,
                                                      const c10::optional<at::Tensor>& delta_bias, bool delta_softplus,
                                                      bool save_states) {
  for (auto [t, name] : {std::pair{&u, "u"}, {&delta, "delta"}, {&A, "A"}, {&B, "B"}, {&C, "C"}}) {
    check_cuda_fp32(*t, name);
    TORCH_CHECK(t->is_contiguous(), name, " must be contiguous");
  }
  c10::cuda::CUDAGuard guard(u.device());
  const int64_t batch = u.size(0), channels = u.size(1), length = u.size(2), groups = B.size(1), states = A.size(1);
  check_shape(delta, "delta", u.sizes());
  check_shape(A, "A", {channels, states});
  check_shape(B, "B", {batch, groups, states, length});
  check_shape(C, "C", {batch, groups, states, length});
  auto y = at::empty_like(u);
  auto tile_states = save_states ? u.new_empty({batch, channels, tiles_of(length), states})
                                 : u.new_empty({0});
  mambaic::ScanFwdParams p{};
  p.dir[0] = {u.data_ptr<float>(), delta.data_ptr<float>(), nullptr, nullptr, A.data_ptr<float>(), B.data_ptr<float>(),
              C.data_ptr<float>(), optional_ptr(D, "D", channels), optional_ptr(delta_bias, "delta_bias", channels),
              y.data_ptr<float>(), false, save_states ? tile_states.data_ptr<float>() : nullptr};
  p.directions = 1;
  p.batch = batch, p.channels = channels, p.groups = groups, p.states = states, p.length = length;
  p.u_batch = u.stride(0), p.u_channel = u.stride(1);
  p.bc_batch = B.stride(0), p.bc_group = B.stride(1), p.bc_state = B.stride(2);
  p.y_batch = y.stride(0), p.y_channel = y.stride(1);
  p.softplus = delta_softplus, p.accumulate = false;
  launch_checked(p);
  return {y, tile_states};
}

// The gradients (du, ddelta, dA, dB, dC, dD, ddelta_bias) of the public op from dy and the tile
// states of selective_scan_fwd(..., save_states=true); dD and ddelta_bias are zeros when D or
// delta_bias is absent.
std::vector<at::Tensor> selective_scan_bwd(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
                                           const at::Tensor& B, const at::Tensor& C, const c10::optional<at::Tensor>& D,
                                           const c10::optional<at::Tensor>& delta_bias, bool delta_softplus,
                                           const at::Tensor& dy, const at::Tensor& tile_states) {
  for (auto [t, name] : {std::pair{&u, "u"}, {&delta, "delta"}, {&A, "A"}, {&B, "B"}, {&C, "C"}, {&dy, "dy"},
                         {&tile_states, "tile_states"}}) {
    check_cuda_fp32(*t, name);
    TORCH_CHECK(t->is_contiguous(), name, " must be contiguous");
  }
  c10::cuda::CUDAGuard guard(u.device());
  const int64_t batch = u.size(0), channels = u.size(1), length = u.size(2), groups = B.size(1), states = A.size(1);
  check_shape(delta, "delta", u.sizes());
  check_shape(dy, "dy", u.sizes());
  check_shape(A, "A", {channels, states});
  check_shape(B, "B", {batch, groups, states, length});
  check_shape(C, "C", {batch, groups, states, length});
  check_shape(tile_states, "tile_states", {batch, channels, tiles_of(length), states});
  auto du = at::empty_like(u), ddelta = at::empty_like(u);
  auto dB = at::zeros_like(B), dC = at::zeros_like(C);
  auto dA_part = u.new_empty({batch, channels, states});
  auto dD_part = u.new_empty({batch, channels}), dbias_part = u.new_empty({batch, channels});
  mambaic::ScanBwdParams p{};
  p.dir[0] = {u.data_ptr<float>(), delta.data_ptr<float>(), A.data_ptr<float>(), B.data_ptr<float>(),
              C.data_ptr<float>(), optional_ptr(D, "D", channels), optional_ptr(delta_bias, "delta_bias", channels),
              dy.data_ptr<float>(), tile_states.data_ptr<float>(), du.data_ptr<float>(), ddelta.data_ptr<float>(),
              dB.data_ptr<float>(), dC.data_ptr<float>(), dA_part.data_ptr<float>(), dD_part.data_ptr<float>(),
              dbias_part.data_ptr<float>(), false};
  p.directions = 1;
  p.batch = batch, p.channels = channels, p.groups = groups, p.states = states, p.length = length;
  p.u_batch = u.stride(0), p.u_channel = u.stride(1);
  p.bc_batch = B.stride(0), p.bc_group = B.stride(1), p.bc_state = B.stride(2);
  p.softplus = delta_softplus, p.accumulate_du = false;
  bwd_launch_checked(p);
  return {du, ddelta, dA_part.sum(0), dB, dC, dD_part.sum(0), dbias_part.sum(0)};
}

// The four directions of the fused SS2D core in one launch. Directions 0 and 2 scan `rows`
// (batch, D, L), u in row-major order, 1 and 3 `cols`, u in column-major order; 2 and 3 walk
// backwards. `rows_proj` / `cols_proj` (batch, 2 (R + 2N), L): x_proj of directions (0, 2) / (1, 3)
// in their sequence's order, each direction's rows being R delta-rank rows, N of B, N of C; delta
// is computed from them in the kernel. Directions k and k + 2 add into `rows_acc` / `cols_acc`
// (batch, D, L), which the caller zeroes: two float additions onto zero commute exactly, so the
// result does not depend on which lands first. dt_weight (4, D, R); A (4, D, N); Ds, bias (4, D).
// With `tile_states` (2, 2, batch, D, tiles, N), direction k also writes the state entering each of
// its tiles to tile_states[k % 2][k / 2]: index [first] holds the pair (first, first + 2) as
// ss2d_pair_bwd takes it.
void ss2d_fwd(const at::Tensor& rows, const at::Tensor& cols, const at::Tensor& rows_proj, const at::Tensor& cols_proj,
              const at::Tensor& dt_weight, const at::Tensor& A, const at::Tensor& Ds, const at::Tensor& bias,
              at::Tensor& rows_acc, at::Tensor& cols_acc, const c10::optional<at::Tensor>& tile_states) {
  const int64_t batch = rows.size(0), channels = rows.size(1), length = rows.size(2);
  const int64_t rank = dt_weight.size(2), states = A.size(2), width = 2 * (rank + 2 * states);
  for (auto [t, name] : {std::pair{&rows, "rows"}, {&cols, "cols"}, {&rows_proj, "rows_proj"},
                         {&cols_proj, "cols_proj"}, {&dt_weight, "dt_weight"}, {&A, "A"}, {&Ds, "Ds"},
                         {&bias, "bias"}, {&rows_acc, "rows_acc"}, {&cols_acc, "cols_acc"}}) {
    check_cuda_fp32(*t, name);
    TORCH_CHECK(t->is_contiguous(), name, " must be contiguous");
  }
  for (auto [t, name] : {std::pair{&cols, "cols"}, {&rows_acc, "rows_acc"}, {&cols_acc, "cols_acc"}})
    check_shape(*t, name, rows.sizes());
  check_shape(rows_proj, "rows_proj", {batch, width, length});
  check_shape(cols_proj, "cols_proj", {batch, width, length});
  check_shape(dt_weight, "dt_weight", {4, channels, rank});
  check_shape(A, "A", {4, channels, states});
  check_shape(Ds, "Ds", {4, channels});
  check_shape(bias, "bias", {4, channels});
  if (tile_states.has_value()) {
    check_cuda_fp32(*tile_states, "tile_states");
    TORCH_CHECK(tile_states->is_contiguous(), "tile_states must be contiguous");
    check_shape(*tile_states, "tile_states", {2, 2, batch, channels, tiles_of(length), states});
  }
  c10::cuda::CUDAGuard guard(rows.device());
  mambaic::ScanFwdParams p{};
  for (int k = 0; k < 4; ++k) {
    const at::Tensor& seq = k % 2 ? cols : rows;
    const float* proj = (k % 2 ? cols_proj : rows_proj).data_ptr<float>() + (k / 2) * (width / 2) * length;
    p.dir[k] = {seq.data_ptr<float>(), nullptr, proj, dt_weight[k].data_ptr<float>(), A[k].data_ptr<float>(),
                proj + rank * length, proj + (rank + states) * length, Ds[k].data_ptr<float>(),
                bias[k].data_ptr<float>(), (k % 2 ? cols_acc : rows_acc).data_ptr<float>(), k >= 2,
                tile_states.has_value() ? (*tile_states)[k % 2][k / 2].data_ptr<float>() : nullptr};
  }
  p.directions = 4;
  p.batch = batch, p.channels = channels, p.groups = 1, p.states = states, p.length = length, p.rank = rank;
  p.u_batch = rows.stride(0), p.u_channel = rows.stride(1);
  p.bc_batch = rows_proj.stride(0), p.bc_group = 0, p.bc_state = length;
  p.y_batch = rows_acc.stride(0), p.y_channel = rows_acc.stride(1);
  p.softplus = true, p.accumulate = true;
  launch_checked(p);
}

// The SS2D core's backward, one pair of directions at a time: k (forwards) and k + 2 (backwards)
// over one sequence `seq` (batch, D, L) (rows for k = 0, cols for k = 1). delta (2, batch, D, L):
// the pair's delta before bias and softplus, in seq's order; proj (batch, 2 (R + 2N), L): the
// pair's x_proj rows as ss2d_fwd takes them; A (2, D, N), Ds and bias (2, D).
struct PairArgs {
  int64_t batch, channels, length, rank, states, width;
};

PairArgs check_pair(const at::Tensor& seq, const at::Tensor& delta, const at::Tensor& proj, const at::Tensor& A,
                    const at::Tensor& Ds, const at::Tensor& bias, int64_t rank) {
  for (auto [t, name] : {std::pair{&seq, "seq"}, {&delta, "delta"}, {&proj, "proj"}, {&A, "A"}, {&Ds, "Ds"},
                         {&bias, "bias"}}) {
    check_cuda_fp32(*t, name);
    TORCH_CHECK(t->is_contiguous(), name, " must be contiguous");
  }
  const int64_t batch = seq.size(0), channels = seq.size(1), length = seq.size(2), states = A.size(2);
  const PairArgs a{batch, channels, length, rank, states, 2 * (rank + 2 * states)};
  check_shape(delta, "delta", {2, batch, channels, length});
  check_shape(proj, "proj", {batch, a.width, length});
  check_shape(A, "A", {2, channels, states});
  check_shape(Ds, "Ds", {2, channels});
  check_shape(bias, "bias", {2, channels});
  return a;
}

// The states entering every tile of both directions' scans (2, batch, D, tiles, N): the forward
// again, delta read from memory (its outputs land in a scratch tensor, unread).
at::Tensor ss2d_pair_states(const at::Tensor& seq, const at::Tensor& delta, const at::Tensor& proj,
                            const at::Tensor& A, const at::Tensor& Ds, const at::Tensor& bias, int64_t rank) {
  const PairArgs a = check_pair(seq, delta, proj, A, Ds, bias, rank);
  c10::cuda::CUDAGuard guard(seq.device());
  auto tile_states = seq.new_empty({2, a.batch, a.channels, tiles_of(a.length), a.states});
  auto scratch = at::empty_like(seq);
  mambaic::ScanFwdParams p{};
  for (int i = 0; i < 2; ++i) {
    const float* B = proj.data_ptr<float>() + i * (a.width / 2) * a.length + a.rank * a.length;
    p.dir[i] = {seq.data_ptr<float>(), delta[i].data_ptr<float>(), nullptr, nullptr, A[i].data_ptr<float>(), B,
                B + a.states * a.length, Ds[i].data_ptr<float>(), bias[i].data_ptr<float>(),
                scratch.data_ptr<float>(), i == 1, tile_states[i].data_ptr<float>()};
  }
  p.directions = 2;
  p.batch = a.batch, p.channels = a.channels, p.groups = 1, p.states = a.states, p.length = a.length;
  p.u_batch = seq.stride(0), p.u_channel = seq.stride(1);
  p.bc_batch = proj.stride(0), p.bc_group = 0, p.bc_state = a.length;
  p.y_batch = scratch.stride(0), p.y_channel = scratch.stride(1);
  p.softplus = true, p.accumulate = true;  // both add into the scratch: no conflicting plain stores
  launch_checked(p);
  return tile_states;
}

// The pair's gradients from dy (batch, D, L) in seq's order and ss2d_pair_states' tile states:
// dseq (both directions' du, added), ddelta (2, batch, D, L), dproj (batch, 2 (R + 2N), L) with
// its B and C rows filled and its delta-rank rows zero (the caller's matmul), dA (2, D, N), dD
// and dbias (2, D).
std::vector<at::Tensor> ss2d_pair_bwd(const at::Tensor& seq, const at::Tensor& dy, const at::Tensor& delta,
                                      const at::Tensor& proj, const at::Tensor& A, const at::Tensor& Ds,
                                      const at::Tensor& bias, const at::Tensor& tile_states, int64_t rank) {
  const PairArgs a = check_pair(seq, delta, proj, A, Ds, bias, rank);
  for (auto [t, name] : {std::pair{&dy, "dy"}, {&tile_states, "tile_states"}}) {
    check_cuda_fp32(*t, name);
    TORCH_CHECK(t->is_contiguous(), name, " must be contiguous");
  }
  check_shape(dy, "dy", seq.sizes());
  check_shape(tile_states, "tile_states", {2, a.batch, a.channels, tiles_of(a.length), a.states});
  c10::cuda::CUDAGuard guard(seq.device());
  auto dseq = at::zeros_like(seq), ddelta = at::empty_like(delta), dproj = at::zeros_like(proj);
  auto dA_part = seq.new_empty({2, a.batch, a.channels, a.states});
  auto dD_part = seq.new_empty({2, a.batch, a.channels}), dbias_part = seq.new_empty({2, a.batch, a.channels});
  mambaic::ScanBwdParams p{};
  for (int i = 0; i < 2; ++i) {
    const int64_t b_row = i * (a.width / 2) * a.length + a.rank * a.length, c_row = b_row + a.states * a.length;
    p.dir[i] = {seq.data_ptr<float>(), delta[i].data_ptr<float>(), A[i].data_ptr<float>(),
                proj.data_ptr<float>() + b_row, proj.data_ptr<float>() + c_row, Ds[i].data_ptr<float>(),
                bias[i].data_ptr<float>(), dy.data_ptr<float>(), tile_states[i].data_ptr<float>(),
                dseq.data_ptr<float>(), ddelta[i].data_ptr<float>(), dproj.data_ptr<float>() + b_row,
                dproj.data_ptr<float>() + c_row, dA_part[i].data_ptr<float>(), dD_part[i].data_ptr<float>(),
                dbias_part[i].data_ptr<float>(), i == 1};
  }
  p.directions = 2;
  p.batch = a.batch, p.channels = a.channels, p.groups = 1, p.states = a.states, p.length = a.length;
  p.u_batch = seq.stride(0), p.u_channel = seq.stride(1);
  p.bc_batch = proj.stride(0), p.bc_group = 0, p.bc_state = a.length;
  p.softplus = true, p.accumulate_du = true;
  bwd_launch_checked(p);
  return {dseq, ddelta, dproj, dA_part.sum(1), dD_part.sum(1), dbias_part.sum(1)};
}

// out (batch, cols, rows) = in (batch, rows, cols) transposed, or += when accumulate.
void transpose(const at::Tensor& in, at::Tensor& out, bool accumulate) {
  check_cuda_fp32(in, "in");
  check_cuda_fp32(out, "out");
  TORCH_CHECK(in.is_contiguous() && out.is_contiguous(), "transpose: in and out must be contiguous");
  TORCH_CHECK(in.dim() == 3 && out.dim() == 3 && out.size(0) == in.size(0) && out.size(1) == in.size(2) &&
                  out.size(2) == in.size(1),
              "transpose: out must have shape (batch, cols, rows) for in (batch, rows, cols), got ", out.sizes(),
              " for ", in.sizes());
  c10::cuda::CUDAGuard guard(in.device());
  mambaic::transpose_launch(in.data_ptr<float>(), out.data_ptr<float>(), in.size(0), in.size(1), in.size(2),
                            accumulate, at::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

mambaic::Element element_of(const at::Tensor& t, const char* name) {
  switch (t.scalar_type()) {
    case at::kFloat: return mambaic::Element::kFloat32;
    case at::kHalf: return mambaic::Element::kFloat16;
    case at::kBFloat16: return mambaic::Element::kBFloat16;
    default: TORCH_CHECK(false, name, " must be float32, float16 or bfloat16, got ", t.scalar_type());
  }
}

mambaic::CrossShape cross_shape(int64_t batch, int64_t channels, int64_t height, int64_t width, bool channel_last) {
  const mambaic::CrossShape shape{batch, channels, height, width, channel_last};
  const char* why = mambaic::cross_unsupported(shape);
  TORCH_CHECK(why[0] == '\0', "cross_scan / cross_merge (cuda): ", why);
  return shape;
}

void check_cuda_tensor(const at::Tensor& t, const char* name, int64_t dims) {
  TORCH_CHECK(t.is_cuda(), name, " must be a CUDA tensor, got one on ", t.device());
  TORCH_CHECK(t.dim() == dims, name, " must have ", dims, " dimensions, got shape ", t.sizes());
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
}

// (batch, 4, C, H W) from the map x, (batch, C, H, W) or, channel_last, (batch, H, W, C).
at::Tensor cross_scan(const at::Tensor& x, bool channel_last) {
  check_cuda_tensor(x, "x", 4);
  const auto element = element_of(x, "x");
  const int64_t batch = x.size(0), channels = x.size(channel_last ? 3 : 1);
  const int64_t height = x.size(channel_last ? 1 : 2), width = x.size(channel_last ? 2 : 3);
  const auto shape = cross_shape(batch, channels, height, width, channel_last);
  c10::cuda::CUDAGuard guard(x.device());
  auto out = x.new_empty({batch, 4, channels, height * width});
  mambaic::cross_scan_launch(x.data_ptr(), out.data_ptr(), shape, element, at::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

// The map (batch, C, H, W) or, channel_last, (batch, H, W, C) from y (batch, 4, C, H, W): the sum of
// the four directions, each put back in row-major order.
at::Tensor cross_merge(const at::Tensor& y, bool channel_last) {
  check_cuda_tensor(y, "y", 5);
  TORCH_CHECK(y.size(1) == 4, "y must have 4 directions in dimension 1, got shape ", y.sizes());
  const auto element = element_of(y, "y");
  const int64_t batch = y.size(0), channels = y.size(2), height = y.size(3), width = y.size(4);
  const auto shape = cross_shape(batch, channels, height, width, channel_last);
  c10::cuda::CUDAGuard guard(y.device());
  auto out = channel_last ? y.new_empty({batch, height, width, channels}) : y.new_empty({batch, channels, height, width});
  mambaic::cross_merge_launch(y.data_ptr(), out.data_ptr(), shape, element, at::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

// The parameters of both window attention kernels, checked; out / dout / dtable_parts left unset.
mambaic::WindowAttentionParams attention_params(const at::Tensor& qkv, const at::Tensor& table, int64_t heads,
                                                int64_t window, bool shifted) {
  check_cuda_tensor(qkv, "qkv", 4);
  check_cuda_fp32(table, "rel_pos_bias");
  TORCH_CHECK(table.is_contiguous(), "rel_pos_bias must be contiguous");
  TORCH_CHECK(heads > 0 && qkv.size(3) % (3 * heads) == 0, "qkv's last dimension must be 3 * heads * head_dim, got ",
              qkv.size(3), " for ", heads, " heads");
  check_shape(table, "rel_pos_bias", {heads, 2 * window - 1, 2 * window - 1});
  mambaic::WindowAttentionParams p{};
  p.qkv = qkv.data_ptr(), p.table = table.data_ptr<float>();
  p.batch = qkv.size(0), p.height = qkv.size(1), p.width = qkv.size(2);
  p.heads = static_cast<int>(heads), p.head_dim = static_cast<int>(qkv.size(3) / 3 / heads);
  p.window = static_cast<int>(window), p.shifted = shifted;
  p.scale = 1.0f / std::sqrt(static_cast<float>(p.head_dim));
  p.element = element_of(qkv, "qkv");
  const char* why = mambaic::window_attention_unsupported(p);
  TORCH_CHECK(why[0] == '\0', "window_attention (cuda): ", why);
  return p;
}

// (batch, H, W, dim) from qkv (batch, H, W, 3 dim) and the float32 table (heads, 2w-1, 2w-1).
at::Tensor window_attention_fwd(const at::Tensor& qkv, const at::Tensor& table, int64_t heads, int64_t window,
                                bool shifted) {
  auto p = attention_params(qkv, table, heads, window, shifted);
  c10::cuda::CUDAGuard guard(qkv.device());
  auto out = qkv.new_empty({qkv.size(0), qkv.size(1), qkv.size(2), qkv.size(3) / 3});
  p.out = out.data_ptr();
  mambaic::window_attention_fwd_launch(p, at::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

// (d qkv, d table as one float32 partial per (image, window)) from dout (batch, H, W, dim).
std::vector<at::Tensor> window_attention_bwd(const at::Tensor& dout, const at::Tensor& qkv, const at::Tensor& table,
                                             int64_t heads, int64_t window, bool shifted) {
  auto p = attention_params(qkv, table, heads, window, shifted);
  check_cuda_tensor(dout, "dout", 4);
  TORCH_CHECK(dout.scalar_type() == qkv.scalar_type(), "dout must have qkv's dtype ", qkv.scalar_type(), ", got ",
              dout.scalar_type());
  check_shape(dout, "dout", {qkv.size(0), qkv.size(1), qkv.size(2), qkv.size(3) / 3});
  c10::cuda::CUDAGuard guard(qkv.device());
  auto dqkv = at::empty_like(qkv);
  const int64_t windows = p.batch * (p.height / window) * (p.width / window);
  auto parts = table.new_empty({windows, heads, 2 * window - 1, 2 * window - 1});
  p.dout = dout.data_ptr(), p.out = dqkv.data_ptr(), p.dtable_parts = parts.data_ptr<float>();
  mambaic::window_attention_bwd_launch(p, at::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {dqkv, parts};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("selective_scan_fwd", &selective_scan_fwd, "forward selective scan (float32), with the tile states if asked");
  m.def("selective_scan_bwd", &selective_scan_bwd, "backward selective scan (float32) from the tile states");
  m.def("ss2d_fwd", &ss2d_fwd, "the four scans of the fused SS2D core into two accumulators, with their tile states if given",
        py::arg("rows"), py::arg("cols"), py::arg("rows_proj"), py::arg("cols_proj"), py::arg("dt_weight"), py::arg("A"),
        py::arg("Ds"), py::arg("bias"), py::arg("rows_acc"), py::arg("cols_acc"), py::arg("tile_states") = py::none());
  m.def("ss2d_pair_states", &ss2d_pair_states, "tile states of a pair of SS2D directions (k, k + 2)");
  m.def("ss2d_pair_bwd", &ss2d_pair_bwd, "backward of a pair of SS2D directions (k, k + 2) from their tile states");
  m.def("cross_scan", &cross_scan, "the four scan orders of a map: (batch, 4, C, L)");
  m.def("cross_merge", &cross_merge, "the sum of four scan-order sequences, back on the map");
  m.def("window_attention_fwd", &window_attention_fwd, "Swin window attention forward, one block per (window, head)");
  m.def("window_attention_bwd", &window_attention_bwd, "its backward: d qkv and per-window partials of d table");
  m.def("transpose", &transpose, "batched transpose, optionally accumulating");
  m.attr("scan_tile") = mambaic::kScanTile;  // the fake kernels' tile_states shape
}
