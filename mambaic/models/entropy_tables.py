"""The entropy coder's CDF tables, computed the same way on every device.

CompressAI's ``update()`` evaluates the factorized prior (EntropyBottleneck) and the Gaussian
(GaussianConditional) in float32 wherever the module lives, so a model updated on a GPU gets
tables that differ in a few entries from the same model updated on a CPU, and a decoder whose
tables differ from the encoder's decodes noise. Here both are evaluated on the CPU in float64
from the module's own parameters and quantised by CompressAI's ``pmf_to_quantized_cdf``; only
the integer tables are then copied to the module's device.
"""

from __future__ import annotations

import torch
from compressai.entropy_models import EntropyBottleneck, GaussianConditional

# The buffers that update() derives from the parameters (and the scale table): what an entropy
# model's tables are, as opposed to its weights.
TABLE_BUFFERS = ("_quantized_cdf", "_offset", "_cdf_length", "scale_table")


def is_table(name: str) -> bool:
    """Whether a state-dict key names a table buffer (derived, not a weight)."""
    return name.rsplit(".", 1)[-1] in TABLE_BUFFERS


@torch.no_grad()
def bottleneck_tables(eb: EntropyBottleneck) -> dict[str, torch.Tensor]:
    """The tables of ``eb`` from its quantiles and density network, evaluated in float64 on the CPU."""
    cpu = EntropyBottleneck(eb.channels, tail_mass=eb.tail_mass, init_scale=eb.init_scale, filters=eb.filters)
    cpu = cpu.double()
    for (name, dst), (src_name, src) in zip(cpu.named_parameters(), eb.named_parameters()):
        assert name == src_name, (name, src_name)  # same constructor arguments, same parameters
        dst.copy_(src.detach().to("cpu", torch.float64))
    cpu.update(force=True)
    return {name: getattr(cpu, name) for name in ("_quantized_cdf", "_offset", "_cdf_length")}


@torch.no_grad()
def gaussian_tables(gc: GaussianConditional, scale_table) -> dict[str, torch.Tensor]:
    """The tables of ``gc`` for ``scale_table`` (standard deviations), in float64 on the CPU.

    Mirrors ``GaussianConditional.update`` (which casts to float32): for each scale s, the
    probabilities of the integers -c..c, c = ceil(s * multiplier), of a zero-mean Gaussian, and
    the tail mass beyond them. The scale table itself is kept in float32, as CompressAI stores it,
    because ``build_indexes`` compares float32 scales against it.
    """
    table = gc._prepare_scale_table(scale_table)  # float32, CPU
    multiplier = -float(gc._standardized_quantile(gc.tail_mass / 2))
    scales = table.double()
    pmf_center = torch.ceil(scales * multiplier).int()
    pmf_length = 2 * pmf_center + 1
    max_length = int(pmf_length.max())
    samples = torch.abs(torch.arange(max_length).int() - pmf_center[:, None]).double()
    upper = gc._standardized_cumulative((0.5 - samples) / scales[:, None])
    lower = gc._standardized_cumulative((-0.5 - samples) / scales[:, None])
    pmf = upper - lower
    tail_mass = 2 * lower[:, :1]
    cdf = gc._pmf_to_cdf(pmf, tail_mass, pmf_length, max_length)
    return {"_quantized_cdf": cdf, "_offset": -pmf_center, "_cdf_length": pmf_length + 2, "scale_table": table}


def install(module: torch.nn.Module, tables: dict[str, torch.Tensor]) -> None:
    """Replace ``module``'s table buffers (their sizes change) on the module's device."""
    device = next((t.device for t in module.buffers() if t.numel()), None) or next(module.parameters()).device
    for name, value in tables.items():
        setattr(module, name, value.to(device))
