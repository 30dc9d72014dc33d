// Torch bindings of the CUDA kernels: argument checks, the parameter struct (strides in
// elements), the current stream. The Python side (kernels/cuda/) registers the ops, their fake
// kernels and autograd; it passes float32 tensors, casting other dtypes.

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/extension.h>

#include "selective_scan.h"

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
  p.u = u.data_ptr<float>(), p.delta = delta.data_ptr<float>(), p.A = A.data_ptr<float>();
  p.B = B.data_ptr<float>(), p.C = C.data_ptr<float>();
  p.D = optional_ptr(D, "D", channels), p.delta_bias = optional_ptr(delta_bias, "delta_bias", channels);
  p.dy = dy.data_ptr<float>(), p.tile_states = tile_states.data_ptr<float>();
  p.du = du.data_ptr<float>(), p.ddelta = ddelta.data_ptr<float>(), p.dB = dB.data_ptr<float>(), p.dC = dC.data_ptr<float>();
  p.dA_part = dA_part.data_ptr<float>(), p.dD_part = dD_part.data_ptr<float>(), p.dbias_part = dbias_part.data_ptr<float>();
  p.batch = batch, p.channels = channels, p.groups = groups, p.states = states, p.length = length;
  p.u_batch = u.stride(0), p.u_channel = u.stride(1);
  p.bc_batch = B.stride(0), p.bc_group = B.stride(1), p.bc_state = B.stride(2);
  p.softplus = delta_softplus;
  const char* why = mambaic::selective_scan_bwd_unsupported(p);
  TORCH_CHECK(why[0] == '\0', "selective_scan backward (cuda): ", why);
  mambaic::selective_scan_bwd_launch(p, at::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {du, ddelta, dA_part.sum(0), dB, dC, dD_part.sum(0), dbias_part.sum(0)};
}

// The four directions of the fused SS2D core in one launch. Directions 0 and 2 scan `rows`
// (batch, D, L), u in row-major order, 1 and 3 `cols`, u in column-major order; 2 and 3 walk
// backwards. `rows_proj` / `cols_proj` (batch, 2 (R + 2N), L): x_proj of directions (0, 2) / (1, 3)
// in their sequence's order, each direction's rows being R delta-rank rows, N of B, N of C; delta
// is computed from them in the kernel. Directions k and k + 2 add into `rows_acc` / `cols_acc`
// (batch, D, L), which the caller zeroes: two float additions onto zero commute exactly, so the
// result does not depend on which lands first. dt_weight (4, D, R); A (4, D, N); Ds, bias (4, D).
void ss2d_fwd(const at::Tensor& rows, const at::Tensor& cols, const at::Tensor& rows_proj, const at::Tensor& cols_proj,
              const at::Tensor& dt_weight, const at::Tensor& A, const at::Tensor& Ds, const at::Tensor& bias,
              at::Tensor& rows_acc, at::Tensor& cols_acc) {
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
  c10::cuda::CUDAGuard guard(rows.device());
  mambaic::ScanFwdParams p{};
  for (int k = 0; k < 4; ++k) {
    const at::Tensor& seq = k % 2 ? cols : rows;
    const float* proj = (k % 2 ? cols_proj : rows_proj).data_ptr<float>() + (k / 2) * (width / 2) * length;
    p.dir[k] = {seq.data_ptr<float>(), nullptr, proj, dt_weight[k].data_ptr<float>(), A[k].data_ptr<float>(),
                proj + rank * length, proj + (rank + states) * length, Ds[k].data_ptr<float>(),
                bias[k].data_ptr<float>(), (k % 2 ? cols_acc : rows_acc).data_ptr<float>(), k >= 2, nullptr};
  }
  p.directions = 4;
  p.batch = batch, p.channels = channels, p.groups = 1, p.states = states, p.length = length, p.rank = rank;
  p.u_batch = rows.stride(0), p.u_channel = rows.stride(1);
  p.bc_batch = rows_proj.stride(0), p.bc_group = 0, p.bc_state = length;
  p.y_batch = rows_acc.stride(0), p.y_channel = rows_acc.stride(1);
  p.softplus = true, p.accumulate = true;
  launch_checked(p);
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

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("selective_scan_fwd", &selective_scan_fwd, "forward selective scan (float32), with the tile states if asked");
  m.def("selective_scan_bwd", &selective_scan_bwd, "backward selective scan (float32) from the tile states");
  m.def("ss2d_fwd", &ss2d_fwd, "the four scans of the fused SS2D core into two accumulators");
  m.def("transpose", &transpose, "batched transpose, optionally accumulating");
  m.attr("scan_tile") = mambaic::kScanTile;  // the fake kernels' tile_states shape
}
