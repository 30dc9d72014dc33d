"""The cuda SS2D core (kernels/cuda/ss2d_core.py) around its kernels, on the CPU: the extension's
entry points replaced by PyTorch stand-ins (the reference scan, a direction at a time, under
autograd in the backward), the ops' own Python (transposes, projections, delta, the matmuls after
the scan, the pair slicing, the forward's tile states handed to the right pair and images) must
give the reference's output and gradients. The kernels themselves are checked against the
reference on the GPU (tests/parity/test_ss2d_core.py); this keeps the code between them honest in
CI, which has no GPU.

It runs in a subprocess: importing the module registers the cuda ops and backend, which the
other tests of this process must not see on a machine without a GPU."""

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent(
    """
    import importlib.util, sys, types
    import torch
    from mambaic_kernels import reference

    def transpose(src, out, accumulate):  # out (batch, cols, rows) = src (batch, rows, cols) transposed
        out.add_(src.transpose(1, 2)) if accumulate else out.copy_(src.transpose(1, 2))

    def scan(seq, delta, A, B, C, D, bias, reverse):  # one direction, (batch, D, L) in seq's order
        turn = (lambda t: t.flip(-1)) if reverse else (lambda t: t)
        y = reference.selective_scan(turn(seq), turn(delta), A, turn(B)[:, None], turn(C)[:, None], D,
                                     delta_bias=bias, delta_softplus=True)
        return turn(y)

    def tag(k, image):  # what the stand-in forward writes as direction k's tile states of an image
        return 100.0 * k + image

    def ss2d_fwd(rows, cols, rows_proj, cols_proj, dt_weight, A, Ds, bias, rows_acc, cols_acc, tile_states=None):
        R, N = dt_weight.shape[2], A.shape[2]
        C = R + 2 * N
        for k in range(4):
            seq, proj = (cols, cols_proj) if k % 2 else (rows, rows_proj)
            rows_k = proj[:, (k // 2) * C : (k // 2 + 1) * C]
            delta = torch.matmul(dt_weight[k], rows_k[:, :R])
            y = scan(seq, delta, A[k], rows_k[:, R : R + N], rows_k[:, R + N :], Ds[k], bias[k], k >= 2)
            (cols_acc if k % 2 else rows_acc).add_(y)
            if tile_states is not None:
                for image in range(seq.shape[0]):
                    tile_states[k % 2, k // 2, image] = tag(k, image)

    seen_states = []  # what each ss2d_pair_bwd call got

    def ss2d_pair_states(seq, delta, proj, A, Ds, bias, rank):
        return torch.full((2, 1), float("nan"))  # the stand-in backward recomputes: nothing to keep

    def ss2d_pair_bwd(seq, dy, delta, proj, A, Ds, bias, states, rank):
        seen_states.append(states.clone())
        # direction i = 0 walks seq forwards, i = 1 backwards; B and C are rows of proj
        N, C = A.shape[2], proj.shape[1] // 2
        dseq, ddelta, dproj = torch.zeros_like(seq), torch.empty_like(delta), torch.zeros_like(proj)
        dA, dD, dbias = torch.empty_like(A), torch.empty_like(Ds), torch.empty_like(bias)
        for i in range(2):
            turn = (lambda t: t.flip(-1)) if i else (lambda t: t)
            rows = proj[:, i * C + rank : (i + 1) * C]
            leaves = [t.detach().clone().requires_grad_() for t in
                      (turn(seq), turn(delta[i]), A[i], turn(rows[:, :N]), turn(rows[:, N:]), Ds[i], bias[i])]
            u, dt, a, b, c, d, db = leaves
            y = reference.selective_scan(u, dt, a, b[:, None], c[:, None], d, delta_bias=db, delta_softplus=True)
            y.backward(turn(dy))
            g = [t.grad for t in leaves]
            dseq += turn(g[0])
            ddelta[i], dA[i], dD[i], dbias[i] = turn(g[1]), g[2], g[5], g[6]
            dproj[:, i * C + rank : i * C + rank + N] = turn(g[3])
            dproj[:, i * C + rank + N : (i + 1) * C] = turn(g[4])
        return [dseq, ddelta, dproj, dA, dD, dbias]

    ext = types.SimpleNamespace(transpose=transpose, ss2d_fwd=ss2d_fwd, ss2d_pair_states=ss2d_pair_states,
                                ss2d_pair_bwd=ss2d_pair_bwd, scan_tile=8, selective_scan_fwd=None,
                                selective_scan_bwd=None)
    package = types.ModuleType("mambaic_kernels.cuda")  # the package without its build
    package.__path__ = [str(importlib.util.find_spec("mambaic_kernels").submodule_search_locations[0]) + "/cuda"]
    package._ext = ext
    package.supports_device = lambda device, dtype: None
    sys.modules["mambaic_kernels.cuda"] = package
    from mambaic_kernels.cuda import ss2d_core

    torch.manual_seed(0)
    batch, D, H, W, N, R = 2, 6, 5, 7, 4, 2
    f = dict(dtype=torch.float64)
    u = torch.randn(batch, D, H, W, **f)
    weights = [torch.randn(4, R + 2 * N, D, **f) / D**0.5, torch.randn(4, D, R, **f) / R**0.5,
               torch.randn(4 * D, **f) * 0.5 - 2.0, torch.log(torch.arange(1, N + 1, **f)).repeat(4 * D, 1),
               torch.randn(4 * D, **f)]
    dout = torch.randn(batch, H, W, D, **f)
    # the ops' Python bodies themselves: through the dispatcher the backward would run below
    # autograd, where the stand-in's reference scan could not record its graph
    forward, backward = ss2d_core.ss2d_core_fwd_cuda._init_fn, ss2d_core.ss2d_core_bwd_cuda._init_fn
    leaves = [t.clone().requires_grad_() for t in (u, *weights)]
    want = reference.ss2d_core(*leaves)
    want.backward(dout)
    tiles = -(-H * W // ext.scan_tile)
    for save in (False, True):
        out, states = forward(u.float(), *(w.float() for w in weights), save)
        torch.testing.assert_close(out.double(), want.detach(), rtol=1e-4, atol=1e-5)
        assert states.shape == ((2, 2, batch, D, tiles, N) if save else (0,)), states.shape
    names = ("du", "dx_proj_weight", "ddt_projs_weight", "ddt_projs_bias", "dA_logs", "dDs")
    # the whole batch at once, then (as for maps past the group size) one image at a time; the
    # backward recomputing the tile states, then taking the forward's
    for group in (ss2d_core._GROUP_ELEMENTS, D * H * W):
        ss2d_core._GROUP_ELEMENTS = group
        for given in (states[:0], states):
            seen_states.clear()
            got = backward(dout.float(), u.float(), *(w.float() for w in weights), given)
            for name, g, leaf in zip(names, got, leaves):
                assert g.dtype == torch.float32 and g.shape == leaf.shape, (name, g.dtype, g.shape, leaf.shape)
                torch.testing.assert_close(g.double(), leaf.grad, rtol=1e-4, atol=1e-5,
                                           msg=lambda m: f"{name} (groups of {group} elements): {m}")
            # each pair call, cols (1, 3) then rows (0, 2) per group of images, got its own states
            per_group = batch if group > D * H * W else 1
            expected = [(first, start) for start in range(0, batch, per_group) for first in (1, 0)]
            assert len(seen_states) == len(expected), len(seen_states)
            for got_states, (first, start) in zip(seen_states, expected):
                if not given.numel():
                    assert got_states.isnan().all(), "recomputed states expected"
                    continue
                assert got_states.shape == (2, per_group, D, tiles, N) and got_states.is_contiguous()
                for i in range(2):
                    for j in range(per_group):
                        assert (got_states[i, j] == tag(first + 2 * i, start + j)).all(), (first, start, i, j)
    print("ok")
    """
)


def test_backward_wiring_gives_the_reference_gradients():
    run = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and run.stdout.strip().endswith("ok"), run.stdout[-3000:] + run.stderr[-3000:]
