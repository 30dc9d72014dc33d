"""MambaIC, the learned image codec of Zeng et al. (CVPR 2025), on the mambaic_kernels operators."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
from compressai.entropy_models import EntropyBottleneck, GaussianConditional
from compressai.models import CompressionModel
from compressai.models.base import get_scale_table
from compressai.registry import register_model

from mambaic import precision as prec
from mambaic.layers import CheckerboardMaskedConv2d, SWAtten, VSSBlock, conv, deconv

from . import checkerboard as cb
from . import rans
from .checkerboard import ANCHOR, NON_ANCHOR
from .entropy_tables import bottleneck_tables, gaussian_tables, install

# Called with (part, symbols) as each part of the bitstream is coded or decoded: part 0 is z, parts
# 1 + 2i and 2 + 2i the anchors and non-anchors of slice i (the order of the strings in a file);
# symbols are the integer latents of that part, in coding order. The .mic codec checksums them.
SymbolsHook = Callable[[int, torch.Tensor], None]

# The image side must be a multiple of this: g_a downsamples by 16, and the entropy model cuts the
# latent into 8 x 8 attention windows (and h_a / h_s need a latent side divisible by 4).
IMAGE_MULTIPLE = 128


def ste_round(x: torch.Tensor) -> torch.Tensor:
    """Round in the forward pass, identity gradient (straight-through), written as the official
    code does so that the float result is bit-identical: ``round(x) - x + x`` is not always
    ``round(x)`` in floating point."""
    return torch.round(x) - x.detach() + x


def _dtype(module: nn.Module) -> torch.dtype:
    """The dtype of a module's weights."""
    return next(module.parameters()).dtype


def _rates(drop_path_rate: float, n: int) -> list[float]:
    """Stochastic-depth rates rising linearly from 0 to ``drop_path_rate`` over n blocks."""
    return torch.linspace(0, drop_path_rate, n).tolist() if n else []


@register_model("mambaic")
class MambaIC(CompressionModel):
    r"""MambaIC: visual state-space transforms with a channel-wise checkerboard entropy model.

    Fanhu Zeng, Hao Tang, Yihua Shao, Siyu Chen, Ling Shao, Yan Wang, "MambaIC: State Space Models
    for High-Performance Learned Image Compression", CVPR 2025, arXiv:2503.12461. Parameter names and shapes are those of the
    official checkpoints (github AuroraZengfh/MambaIC), so its ``.pth.tar`` files load strictly.

    .. code-block:: none

                ┌─────┐  y   ┌─────┐  z   ┌───┐ z_hat  ┌──────────┐  latent_means
        x ──►───┤ g_a ├──►─┬─┤ h_a ├──►───┤ Q ├───►──┬─┤ h_mean_s ├──►──┐
                └─────┘    │ └─────┘      └───┘ EB   │ └──────────┘     │
                           │                         │ ┌───────────┐    │ latent_scales
                           │                         └─┤ h_scale_s ├──►─┤
                           │                           └───────────┘    │
                           ▼  y split into num_slices channel slices    ▼
              for slice i: support = SWAtten(hyper + previous y_hat slices) -> cc transforms
                           anchors:     context_vss(0, support) -> anchor SWAtten -> means, scales
                           non-anchors: context_vss(masked conv(anchors), support) -> ...
                           y_hat_i = round(y_i - means) + means + 0.5 tanh(lrp(support, y_hat_i))
                           │
                ┌─────┐    ▼ y_hat
        x_hat ◄─┤ g_s ├────┘
                └─────┘

    g_a and g_s are strided convolutions with stacks of :class:`~mambaic.layers.VSSBlock` (2D
    selective scan) between them; h_a, h_mean_s and h_scale_s likewise at 2N channels. The
    anchors / non-anchors split of each slice is the checkerboard of :mod:`.checkerboard`.

    Args:
        N: half the channel width of the transforms (they run at 2N channels).
        M: channels of the latent y.
        depths: VSS blocks per stage: g_a's three stages (g_s mirrors them) and the hyperprior.
        num_slices: channel slices of y, coded one after another.
        max_support_slices: how many previous slices condition a slice (-1: all).
        z_channels: channels of the hyper-latent z (192 in the official code).
        drop_path_rate: largest stochastic-depth rate of the VSS blocks (training only).
        d_state, ssm_ratio: SS2D state size and expansion.

    Input images must have sides that are multiples of 128 (see ``IMAGE_MULTIPLE``); the codec
    (:mod:`mambaic.codec`) pads any image to that and crops the reconstruction.
    """

    def __init__(
        self,
        N: int = 128,
        M: int = 320,
        depths: tuple[int, int, int, int] = (2, 2, 9, 2),
        num_slices: int = 5,
        max_support_slices: int = 5,
        z_channels: int = 192,
        drop_path_rate: float = 0.1,
        d_state: int = 16,
        ssm_ratio: float = 2.0,
    ):
        super().__init__()
        depths = tuple(int(d) for d in depths)
        if len(depths) != 4 or min(depths) < 0:
            raise ValueError(f"MambaIC: depths must be 4 non-negative ints, got {depths}")
        if num_slices < 1 or M % num_slices:
            raise ValueError(f"MambaIC: M must be a multiple of num_slices={num_slices}, got M={M}")
        self.N, self.M, self.depths, self.num_slices = N, M, depths, num_slices
        self.max_support_slices = max_support_slices
        self.window_size = 8
        self.config = dict(
            N=N, M=M, depths=depths, num_slices=num_slices, max_support_slices=max_support_slices,
            z_channels=z_channels, d_state=d_state, ssm_ratio=ssm_ratio,
        )  # fmt: skip
        slice_ch = M // num_slices
        C = 2 * N

        def vss(rates):
            return [VSSBlock(C, r, d_state=d_state, ssm_ratio=ssm_ratio) for r in rates]

        # Stochastic depth rises along g_a then h_a; h_s and g_s reuse the rates from the start.
        d0, d1, d2, d3 = depths
        dpr = _rates(drop_path_rate, sum(depths))
        s1, s2, s3 = dpr[:d0], dpr[d0 : d0 + d1], dpr[d0 + d1 : d0 + d1 + d2]

        self.entropy_bottleneck = EntropyBottleneck(z_channels)
        # Analysis / synthesis transforms: 16x down / up, VSS stages at 1/2, 1/4, 1/8.
        self.g_a = nn.Sequential(
            conv(3, C, 5, 2), *vss(s1), conv(C, C, 3, 2), *vss(s2), conv(C, C, 3, 2), *vss(s3), conv(C, M, 3, 2)
        )
        # Hyperprior: 4x down to z, and two 4x up branches for the means and the scales of y.
        self.h_a = nn.Sequential(conv(M, C, 3, 2), *vss(dpr[d0 + d1 + d2 :]), conv(C, z_channels, 3, 2))
        self.h_mean_s = nn.Sequential(deconv(z_channels, C, 3, 2), *vss(dpr[:d3]), deconv(C, M, 3, 2))
        self.h_scale_s = nn.Sequential(deconv(z_channels, C, 3, 2), *vss(dpr[:d3]), deconv(C, M, 3, 2))
        g = dpr[d3:]  # g_s: the mirror of g_a (d2 blocks at 1/8, d1 at 1/4, d0 at 1/2)
        self.g_s = nn.Sequential(
            deconv(M, C, 3, 2), *vss(g[:d2]), deconv(C, C, 3, 2), *vss(g[d2 : d2 + d1]),
            deconv(C, C, 3, 2), *vss(g[d2 + d1 : d2 + d1 + d0]), deconv(C, 3, 5, 2),
        )  # fmt: skip

        # Channel-wise context: slice i sees the hyperprior and n_support(i) previous slices.
        support_ch = [M + slice_ch * self._n_support(i) for i in range(num_slices)]

        def cc_transform(in_ch):
            return nn.Sequential(
                conv(in_ch, 224, 3, 1), nn.GELU(), conv(224, 128, 3, 1), nn.GELU(), conv(128, slice_ch, 3, 1)
            )

        self.atten_mean = nn.ModuleList(nn.Sequential(SWAtten(c, c)) for c in support_ch)
        self.atten_scale = nn.ModuleList(nn.Sequential(SWAtten(c, c)) for c in support_ch)
        self.cc_mean_transforms = nn.ModuleList(cc_transform(c) for c in support_ch)
        self.cc_scale_transforms = nn.ModuleList(cc_transform(c) for c in support_ch)
        # Latent residual prediction from the support and the slice itself.
        self.lrp_transforms = nn.ModuleList(cc_transform(c + slice_ch) for c in support_ch)
        self.anchor_atten_mean = nn.ModuleList(nn.Sequential(SWAtten(slice_ch, slice_ch)) for _ in support_ch)
        self.anchor_atten_scale = nn.ModuleList(nn.Sequential(SWAtten(slice_ch, slice_ch)) for _ in support_ch)

        # Spatial context (SS2D context model): 2 VSS blocks over [checkerboard context, support]
        # -> (means, scales). The support of slice 0 is the hyperprior only (2M channels); later
        # slices add the cc transforms' mu and scale (2 * slice_ch more).
        ctx_rates = _rates(drop_path_rate, 2 * num_slices)
        context_vss = []
        for i in range(num_slices):
            dim = 2 * M + (2 if i == 0 else 4) * slice_ch
            blocks = [VSSBlock(dim, r, d_state=d_state, ssm_ratio=ssm_ratio) for r in ctx_rates[2 * i : 2 * i + 2]]
            context_vss.append(nn.Sequential(*blocks, conv(dim, 2 * slice_ch, 3, 1)))
            # The official model registers each context model twice, as context_vss_<i+1> and as
            # context_vss.<i>, so its checkpoints hold both names: register the alias too.
            self.add_module(f"context_vss_{i + 1}", context_vss[-1])
        self.context_vss = nn.ModuleList(context_vss)
        self.context_prediction = nn.ModuleList(
            CheckerboardMaskedConv2d(slice_ch, 2 * slice_ch, kernel_size=5) for _ in range(num_slices)
        )
        self.gaussian_conditional = GaussianConditional(None)
        self._tf32 = False  # set_precision("tf32"); not part of the state dict
        self._graphs = None  # use_cuda_graphs(): a mambaic.graphs.GraphCache

    # -- the steps of the slice loop, shared by forward, compress and decompress ------------------

    def _n_support(self, i: int) -> int:
        """How many previous slices condition slice i."""
        return i if self.max_support_slices < 0 else min(i, self.max_support_slices)

    def unused_parameters(self) -> list[str]:
        """Names of the parameters that no output depends on: slice 0's mu and scale transforms
        (see _slice_support). DistributedDataParallel must be told (mambaic.distributed)."""
        unused = ("atten_scale.0.", "cc_mean_transforms.0.", "cc_scale_transforms.0.")
        return [n for n, _ in self.named_parameters() if n.startswith(unused)]

    def _slice_support(self, i, latent_means, latent_scales, y_hat_slices):
        """Channel-wise context of slice i: returns (mean_support, support).

        mean_support feeds the latent residual prediction; support (the hyperprior, plus the cc
        transforms' mu and scale after slice 0) feeds the spatial context model.
        """
        previous = y_hat_slices[: self._n_support(i)]
        mean_support = self.atten_mean[i](torch.cat([latent_means, *previous], dim=1))
        if i == 0:
            # The official code also computes mu and scale for slice 0 but never uses them.
            return mean_support, torch.cat([latent_means, latent_scales], dim=1)
        mu = self.cc_mean_transforms[i](mean_support)
        scale_support = self.atten_scale[i](torch.cat([latent_scales, *previous], dim=1))
        scale = self.cc_scale_transforms[i](scale_support)
        return mean_support, torch.cat([mu, scale, latent_means, latent_scales], dim=1)

    def _entropy_parameters(self, i, context, support):
        """(means, scales) of slice i from a checkerboard context map and the support."""
        means, scales = self.context_vss[i](torch.cat([context, support], dim=1)).chunk(2, dim=1)
        return self.anchor_atten_mean[i](means), self.anchor_atten_scale[i](scales)

    def _anchor_parameters(self, i, support):
        """Anchors see no spatial context: the context channels are zeros."""
        batch, _, H, W = support.shape
        zeros = support.new_zeros(batch, 2 * (self.M // self.num_slices), H, W)
        return self._entropy_parameters(i, zeros, support)

    def _non_anchor_parameters(self, i, y_hat_anchor, support):
        """Non-anchors see the decoded anchors through the checkerboard-masked convolution."""
        return self._entropy_parameters(i, self.context_prediction[i](y_hat_anchor), support)

    def _lrp(self, i, mean_support, y_hat_slice):
        """Latent residual prediction: a correction in (-0.5, 0.5) for the quantisation error."""
        lrp = self.lrp_transforms[i](torch.cat([mean_support, y_hat_slice], dim=1))
        return 0.5 * torch.tanh(lrp)

    def _hyper_synthesis(self, z_hat):
        return self.h_mean_s(z_hat), self.h_scale_s(z_hat)

    @staticmethod
    def _channels_last(x: torch.Tensor) -> torch.Tensor:
        """VSS blocks work channel-last: in channels_last memory their permutes are free views and
        the convolutions between them keep that layout (a third faster per block on CPU)."""
        return x.contiguous(memory_format=torch.channels_last)

    def _check_input(self, x: torch.Tensor, where: str) -> None:
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != 3:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"MambaIC.{where}: x must be a (batch, 3, H, W) tensor, got {got}")
        H, W = x.shape[-2:]
        if H % IMAGE_MULTIPLE or W % IMAGE_MULTIPLE or H == 0 or W == 0:
            raise ValueError(
                f"MambaIC.{where}: x's height and width must be positive multiples of {IMAGE_MULTIPLE}, "
                f"got {H}x{W}; pad with mambaic.image.pad_to_multiple(x) (mambaic.codec does it for you)"
            )

    # -- CompressAI contracts ----------------------------------------------------------------------

    def update(self, scale_table=None, force: bool = False, update_quantiles: bool = False) -> bool:
        """Compute the entropy coder's CDF tables (CompressAI's contract), the same on every device.

        Unlike CompressAI's ``update``, which evaluates the distributions in float32 where the
        model lives (so a GPU and a CPU get different tables, and files from one decode to noise
        on the other), the tables are evaluated in float64 on the CPU (see
        :mod:`mambaic.models.entropy_tables`) and copied to the model's device. Tables that exist
        (computed before, or loaded from a checkpoint) are kept unless ``force``.

        Returns True if a table was computed.
        """
        if scale_table is None:
            scale_table = get_scale_table()
        updated = False
        for module in self.modules():
            if not isinstance(module, (EntropyBottleneck, GaussianConditional)):
                continue
            if module._offset.numel() > 0 and not force:
                continue
            if isinstance(module, EntropyBottleneck):
                if update_quantiles:
                    module._update_quantiles()
                install(module, bottleneck_tables(module))
            else:
                install(module, gaussian_tables(module, scale_table))
            updated = True
        return updated

    def forward(self, x: torch.Tensor) -> dict:
        """Reconstruction and likelihoods (noise in training mode, rounding in eval, as CompressAI).

        Returns {"x_hat", "likelihoods": {"y", "z"}, "y", "z"}; x_hat is not clamped.
        """
        self._check_input(x, "forward")
        y = self._analysis(x)
        z = self.h_a(y)
        z_likelihoods = self._z_likelihoods(z)
        z_offset = self.entropy_bottleneck._get_medians()
        z_hat = ste_round(z - z_offset) + z_offset
        y_hat, y_likelihoods = self._slice_loop(y, *self._hyper_synthesis(z_hat))
        x_hat = self._synthesis(y_hat)
        return {
            "x_hat": x_hat,
            "likelihoods": {"y": y_likelihoods, "z": z_likelihoods},
            "y": y,
            "z": z,
        }

    def _z_likelihoods(self, z: torch.Tensor) -> torch.Tensor:
        """The likelihoods of z that ``EntropyBottleneck.forward`` returns, by the same operations,
        with the (channels, batch, ...) permutation given as Python ints: CompressAI builds it as a
        device tensor and iterates it, a host sync that a CUDA graph cannot capture."""
        eb = self.entropy_bottleneck
        perm = (1, 0, *range(2, z.dim()))  # its own inverse
        values = z.permute(*perm).contiguous()
        shape = values.shape
        outputs = eb.quantize(values.reshape(shape[0], 1, -1), "noise" if eb.training else "dequantize",
                              eb._get_medians())  # fmt: skip
        likelihood, _, _ = eb._likelihood(outputs)
        if eb.use_likelihood_bound:
            likelihood = eb.likelihood_lower_bound(likelihood)
        return likelihood.reshape(shape).permute(*perm).contiguous()

    def _slice_loop(self, y, latent_means, latent_scales):
        """The forward's channel-conditional, checkerboard slice loop: (y_hat, y likelihoods).
        A method of its own so that its intermediates are freed before the synthesis runs (the
        peak of a large image's forward is in g_s)."""
        y_hat_slices, y_likelihoods = [], []
        for i, y_slice in enumerate(y.chunk(self.num_slices, dim=1)):
            mean_support, support = self._slice_support(i, latent_means, latent_scales, y_hat_slices)
            means_a, scales_a = self._anchor_parameters(i, support)
            y_hat_a = cb.keep(ste_round(y_slice - means_a) + means_a, ANCHOR)
            means_n, scales_n = self._non_anchor_parameters(i, y_hat_a, support)
            y_hat_n = cb.keep(ste_round(y_slice - means_n) + means_n, NON_ANCHOR)

            means, scales = cb.merge(means_a, means_n), cb.merge(scales_a, scales_n)
            _, likelihoods = self.gaussian_conditional(y_slice, scales, means=means)
            y_hat_slice = y_hat_a + y_hat_n
            y_hat_slice = y_hat_slice + self._lrp(i, mean_support, y_hat_slice)
            y_hat_slices.append(y_hat_slice)
            y_likelihoods.append(likelihoods)
        return torch.cat(y_hat_slices, dim=1), torch.cat(y_likelihoods, dim=1)

    def _code_colour(self, y_slice, means, scales, colour, part, symbols_hook):
        """Entropy-code one checkerboard colour: returns (strings, y_hat on that colour).

        The strings are CompressAI's ``GaussianConditional.compress`` (its quantisation, its rANS
        bytes), coded by :mod:`mambaic.models.rans`. y_hat is computed as the decoder will get
        it, round(y - means) + means on the packed tensors, so encoder and decoder continue from
        bit-identical values.
        """
        packed_means = cb.pack(means, colour)
        indexes = self.gaussian_conditional.build_indexes(cb.pack(scales, colour))
        packed_y = cb.pack(y_slice, colour)
        symbols = self.gaussian_conditional.quantize(packed_y, "symbols", packed_means)
        strings = rans.encode_symbols(self.gaussian_conditional, symbols, indexes)
        if symbols_hook is not None:
            symbols_hook(part, symbols)
        y_hat = self.gaussian_conditional.quantize(packed_y, "dequantize", packed_means)
        return strings, cb.unpack(y_hat, colour)

    def _decode_colour(self, strings, means, scales, colour, part, symbols_hook):
        packed_means = cb.pack(means, colour)
        indexes = self.gaussian_conditional.build_indexes(cb.pack(scales, colour))
        # The integer symbols first (checked by the hook before anything depends on them), then
        # symbols + means: the same float operation as CompressAI's dequantize.
        symbols = rans.decode_symbols(self.gaussian_conditional, strings, indexes, part=part)
        if symbols_hook is not None:
            symbols_hook(part, symbols)
        return cb.unpack(self.gaussian_conditional.dequantize(symbols, packed_means), colour)

    def _z_medians(self, batch: int, spatial_dims: int) -> torch.Tensor:
        """The entropy bottleneck's medians shaped (batch, C, 1, 1), as its compress uses them."""
        medians = self.entropy_bottleneck._get_medians().detach()
        medians = medians.reshape(-1, *([1] * spatial_dims))
        return medians.expand(batch, *([-1] * (spatial_dims + 1)))

    def _code_z(self, z, symbols_hook):
        """z's strings (CompressAI's ``EntropyBottleneck.compress``, coded by :mod:`mambaic.models.rans`)
        and z_hat as the decoder will get it: decoded from the strings, by the decoder's own
        steps. (The symbols + medians have its values, but not always its memory layout: the
        symbols keep z's, which may be channels-last, and h_s may then round differently.)"""
        eb = self.entropy_bottleneck
        symbols = eb.quantize(z, "symbols", self._z_medians(z.shape[0], z.dim() - 2))
        strings = rans.encode_symbols(eb, symbols, eb._build_indexes(z.size()))
        if symbols_hook is not None:
            symbols_hook(0, symbols)
        return strings, self._decode_z(strings, z.shape[-2:], None)

    def _decode_z(self, strings, shape, symbols_hook):
        """z_hat from its strings: EntropyBottleneck.decompress, with the symbols shown to the hook."""
        eb = self.entropy_bottleneck
        size = (len(strings), eb._quantized_cdf.size(0), *shape)
        symbols = rans.decode_symbols(eb, strings, eb._build_indexes(size), part=0)
        if symbols_hook is not None:
            symbols_hook(0, symbols)
        return eb.dequantize(symbols, self._z_medians(len(strings), len(shape)))

    def compress(self, x: torch.Tensor, symbols_hook: SymbolsHook | None = None) -> dict:
        """Entropy-code x (sides multiples of 128). Call :meth:`update` once before.

        Returns {"strings": [y_strings, z_strings], "shape": z's (H, W), "y_hat"}, where
        y_strings[i] = [anchor strings, non-anchor strings] of slice i, each a list over the
        batch (the official layout); y_hat is the quantised latent that the decoder will rebuild.
        ``symbols_hook(part, symbols)``, if given, sees the integer symbols of each coded part
        (see :data:`SymbolsHook`).
        """
        self._check_input(x, "compress")
        y, z = self._graphed("analysis", self._analysis_and_hyper, x)
        z_strings, z_hat = self._code_z(z, symbols_hook)
        latent_means, latent_scales = self._graphed("hyper_synthesis", self._hyper_synthesis, z_hat)

        y_hat_slices, y_strings = [], []
        for i, y_slice in enumerate(y.chunk(self.num_slices, dim=1)):
            mean_support, support, means_a, scales_a = self._graphed(
                f"anchors {i}", self._anchor_step(i), latent_means, latent_scales, *y_hat_slices[: self._n_support(i)]
            )
            anchor_strings, y_hat_a = self._code_colour(y_slice, means_a, scales_a, ANCHOR, 1 + 2 * i, symbols_hook)
            means_n, scales_n = self._graphed(f"non-anchors {i}", self._non_anchor_step(i), y_hat_a, support)
            non_anchor_strings, y_hat_n = self._code_colour(
                y_slice, means_n, scales_n, NON_ANCHOR, 2 + 2 * i, symbols_hook
            )
            y_hat_slices.append(self._graphed(f"slice {i}", self._slice_step(i), mean_support, y_hat_a, y_hat_n))
            y_strings.append([anchor_strings, non_anchor_strings])
        return {"strings": [y_strings, z_strings], "shape": z.shape[-2:], "y_hat": torch.cat(y_hat_slices, dim=1)}

    def decompress(self, strings: list, shape, symbols_hook: SymbolsHook | None = None) -> dict:
        """Rebuild the image from :meth:`compress`'s strings and z shape.

        ``symbols_hook(part, symbols)``, if given, sees the integer symbols of each part as soon
        as they are decoded, before anything is computed from them: a hook that raises stops the
        decoder there (the .mic codec checks each part's checksum so).

        Returns {"x_hat" (clamped to [0, 1]), "y_hat"}.
        """
        if not isinstance(strings, (list, tuple)) or len(strings) != 2 or len(strings[0]) != self.num_slices:
            raise ValueError(
                f"MambaIC.decompress: strings must be [y_strings ({self.num_slices} slices), z_strings], "
                f"got {type(strings).__name__} of length {len(strings) if hasattr(strings, '__len__') else '?'}"
            )
        y_strings, z_strings = strings
        z_hat = self._decode_z(z_strings, shape, symbols_hook)
        latent_means, latent_scales = self._graphed("hyper_synthesis", self._hyper_synthesis, z_hat)

        y_hat_slices = []
        for i in range(self.num_slices):
            mean_support, support, means_a, scales_a = self._graphed(
                f"anchors {i}", self._anchor_step(i), latent_means, latent_scales, *y_hat_slices[: self._n_support(i)]
            )
            y_hat_a = self._decode_colour(y_strings[i][0], means_a, scales_a, ANCHOR, 1 + 2 * i, symbols_hook)
            means_n, scales_n = self._graphed(f"non-anchors {i}", self._non_anchor_step(i), y_hat_a, support)
            y_hat_n = self._decode_colour(y_strings[i][1], means_n, scales_n, NON_ANCHOR, 2 + 2 * i, symbols_hook)
            y_hat_slices.append(self._graphed(f"slice {i}", self._slice_step(i), mean_support, y_hat_a, y_hat_n))
        y_hat = torch.cat(y_hat_slices, dim=1)
        return {"x_hat": self._graphed("synthesis", self._synthesis, y_hat).clamp_(0, 1), "y_hat": y_hat}

    # -- the network parts of compress / decompress, between two entropy-coder calls -----------------

    def _analysis_and_hyper(self, x):
        y = self._analysis(x)
        return y, self.h_a(y)

    def _anchor_step(self, i):
        """(latent_means, latent_scales, *previous y_hat slices) -> (mean_support, support, anchor
        means, anchor scales) of slice i."""

        def step(latent_means, latent_scales, *previous):
            mean_support, support = self._slice_support(i, latent_means, latent_scales, list(previous))
            return (mean_support, support, *self._anchor_parameters(i, support))

        return step

    def _non_anchor_step(self, i):
        return lambda y_hat_a, support: self._non_anchor_parameters(i, y_hat_a, support)

    def _slice_step(self, i):
        """(mean_support, y_hat anchors, y_hat non-anchors) -> slice i's y_hat with its residual
        prediction."""

        def step(mean_support, y_hat_a, y_hat_n):
            y_hat_slice = y_hat_a + y_hat_n
            return y_hat_slice + self._lrp(i, mean_support, y_hat_slice)

        return step

    def _graphed(self, name: str, fn, *tensors):
        """fn(*tensors), replayed from a CUDA graph under :meth:`use_cuda_graphs` on a GPU."""
        if self._graphs is None or tensors[0].device.type != "cuda" or torch.is_grad_enabled():
            return fn(*tensors)
        from mambaic.graphs import dispatch_key

        return self._graphs.run(name, fn, *tensors, key=dispatch_key(self))

    def use_cuda_graphs(self, enabled: bool = True) -> "MambaIC":
        """Replay the network parts of :meth:`compress` and :meth:`decompress` from CUDA graphs on
        a GPU (see :mod:`mambaic.graphs`): the first call per image size captures them (about three
        eager passes), later calls replay. Worth it for many images of one size (``mambaic eval``);
        the means, scales and y_hat equal the eager ones bit for bit. Returns the model."""
        from mambaic.graphs import GraphCache

        self._graphs = GraphCache() if enabled else None
        return self

    # -- precision ----------------------------------------------------------------------------------

    @property
    def precision(self) -> str:
        """The precision of the transforms g_a and g_s: fp32, tf32, bf16 or fp16 (see
        :mod:`mambaic.precision`)."""
        return prec.name_of(_dtype(self.g_a), self._tf32)

    def set_precision(self, precision: str) -> "MambaIC":
        """Run the transforms g_a and g_s in ``precision`` (fp32, tf32, bf16, fp16; see
        :mod:`mambaic.precision`): their weights are cast to its dtype, the entropy model's to
        float32, where it always runs. Returns the model, as ``Module.to`` does."""
        dtype = prec.dtype_of(precision)
        self.float()
        self.g_a.to(dtype), self.g_s.to(dtype)
        self._tf32 = precision == "tf32"
        return self

    def _analysis(self, x: torch.Tensor) -> torch.Tensor:
        """y = g_a(x) in the transforms' precision, returned in the entropy model's dtype."""
        with prec.arithmetic(self.precision):
            y = self.g_a(self._channels_last(x.to(_dtype(self.g_a))))
        return y.to(_dtype(self.h_a))

    def _synthesis(self, y_hat: torch.Tensor) -> torch.Tensor:
        """x_hat = g_s(y_hat) in the transforms' precision, returned in y_hat's dtype."""
        with prec.arithmetic(self.precision):
            x_hat = self.g_s(self._channels_last(y_hat.to(_dtype(self.g_s))))
        return x_hat.to(y_hat.dtype)

    # -- checkpoints ---------------------------------------------------------------------------------

    def load_state_dict(self, state_dict, strict: bool = True):
        """Load a state dict (an official one included), resizing the entropy coder's buffers.

        With ``strict``, a mismatch raises a ValueError naming the first missing and unexpected
        keys and the shape mismatches, instead of PyTorch's list of all of them.
        """
        from mambaic.checkpoint import state_dict_mismatch  # checkpoint imports this module

        if strict:
            problem = state_dict_mismatch(self, state_dict)
            if problem:
                raise ValueError(f"MambaIC.load_state_dict: {problem}")
        return super().load_state_dict(state_dict, strict=strict)

    @classmethod
    def from_state_dict(cls, state_dict: dict) -> "MambaIC":
        """A model whose configuration (N, M, depths, slices) is read off ``state_dict``, loaded."""
        from mambaic.checkpoint import config_from_state_dict

        net = cls(**config_from_state_dict(state_dict))
        net.load_state_dict(state_dict)
        return net

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.config.items())
