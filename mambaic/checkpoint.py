"""Loading MambaIC checkpoints: official ``.pth.tar`` files and our own.

An official checkpoint is a dict whose ``"state_dict"`` holds the weights (with ``module.``
prefixes when it was saved from DataParallel), next to training state such as ``"epoch"`` and
``"optimizer"``; a bare state dict works too. The model's configuration (N, M, depths, slices,
z channels, d_state, ssm_ratio) is read off the tensor shapes, so no side file is needed.
"""

from __future__ import annotations

import os
import re

import torch

from mambaic.models import MambaIC

# Entropy-coder buffers whose size depends on the trained distributions: CompressAI resizes them
# when loading, so their shapes are not compared.
VARIABLE_SIZE_BUFFERS = ("_quantized_cdf", "_offset", "_cdf_length", "scale_table")
_SHOW = 3  # how many keys of each kind an error names


def _first(keys: list[str]) -> str:
    more = f", ... ({len(keys) - _SHOW} more)" if len(keys) > _SHOW else ""
    return ", ".join(keys[:_SHOW]) + more


def _is_variable_size(key: str) -> bool:
    return key.rsplit(".", 1)[-1] in VARIABLE_SIZE_BUFFERS


def state_dict_mismatch(model: torch.nn.Module, state_dict: dict) -> str | None:
    """None if ``state_dict`` fits ``model`` exactly (keys and shapes), else one sentence saying how not.

    The sentence names the first missing keys, the first unexpected keys and the first shape
    mismatches; the entropy coder's variable-size buffers are exempt from the shape check.
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = []
    for k, v in own.items():
        if k in state_dict and not _is_variable_size(k):
            theirs = state_dict[k]
            if not isinstance(theirs, torch.Tensor):
                shapes.append(f"{k} is a {type(theirs).__name__}, not a tensor")
            elif theirs.shape != v.shape:
                shapes.append(f"{k} has shape {tuple(theirs.shape)}, the model {tuple(v.shape)}")
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys ({_first(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys ({_first(unexpected)})")
    if shapes:
        parts.append(f"{len(shapes)} shape mismatches ({'; '.join(shapes[:_SHOW])})")
    if not parts:
        return None
    config = getattr(model, "config", None)
    what = f"{type(model).__name__}({', '.join(f'{k}={v}' for k, v in config.items())})" if config else "the model"
    return f"the state dict does not fit {what}: " + "; ".join(parts)


def _indices(state_dict: dict, pattern: str) -> list[int]:
    """Sorted integers i for which some key matches ``pattern`` (a regex with one (\\d+) group)."""
    rx = re.compile(pattern)
    return sorted({int(m.group(1)) for k in state_dict for m in [rx.fullmatch(k)] if m})


def config_from_state_dict(state_dict: dict) -> dict:
    """MambaIC constructor arguments that produce exactly the shapes in ``state_dict``.

    Raises ValueError naming the first expected key that is missing, when the dict is not a
    MambaIC state dict at all.
    """
    for key in ("g_a.0.weight", "h_a.0.weight", "entropy_bottleneck.quantiles", "context_vss.0.0.op.A_logs"):
        if key not in state_dict:
            raise ValueError(
                f"not a MambaIC state dict: key {key!r} is missing (its first keys: {_first(list(state_dict))})"
            )
    N = state_dict["g_a.0.weight"].shape[0] // 2
    M = state_dict["h_a.0.weight"].shape[1]

    # g_a is conv, VSS x d0, conv, VSS x d1, conv, VSS x d2, conv: count blocks between the convs.
    convs = _indices(state_dict, r"g_a\.(\d+)\.weight")
    if len(convs) != 4:
        raise ValueError(f"not a MambaIC state dict: g_a has {len(convs)} convolutions, expected 4")
    d0, d1, d2 = (b - a - 1 for a, b in zip(convs, convs[1:]))
    d3 = len(_indices(state_dict, r"h_a\.(\d+)\.op\.A_logs"))

    num_slices = len(_indices(state_dict, r"cc_mean_transforms\.(\d+)\.0\.weight"))
    slice_ch = M // max(num_slices, 1)
    # Every configuration has the first context model's VSS blocks, at 2M + 2 * slice_ch channels.
    A_logs = state_dict["context_vss.0.0.op.A_logs"]  # (4 * d_inner, d_state)
    ssm_ratio = A_logs.shape[0] / 4 / (2 * M + 2 * slice_ch)
    supports = [
        (state_dict[f"atten_mean.{i}.0.in_conv.weight"].shape[1] - M) // slice_ch for i in range(num_slices)
    ]
    # A cap at or above num_slices - 1 changes nothing; keep the official default (5) then.
    capped = [n for i, n in enumerate(supports) if n < i]
    max_support = max(supports) if capped else (5 if num_slices <= 6 else -1)
    return dict(
        N=N,
        M=M,
        depths=(d0, d1, d2, d3),
        num_slices=num_slices,
        max_support_slices=max_support,
        z_channels=state_dict["entropy_bottleneck.quantiles"].shape[0],
        d_state=A_logs.shape[1],
        ssm_ratio=ssm_ratio,
    )


def strip_prefix(state_dict: dict, prefix: str = "module.") -> dict:
    """Remove ``prefix`` from every key that has it (checkpoints saved from DataParallel)."""
    return {(k[len(prefix) :] if k.startswith(prefix) else k): v for k, v in state_dict.items()}


def read_state_dict(path: str | os.PathLike, map_location="cpu") -> dict:
    """The state dict in a checkpoint file: its ``"state_dict"`` entry, or the file itself."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path}: no such file")
    try:
        # weights_only: a checkpoint is data; never run code from a file we were handed.
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for a file that is not a checkpoint
        raise ValueError(f"checkpoint {path}: not a PyTorch checkpoint ({type(exc).__name__}: {exc})") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(
            f"checkpoint {path}: expected a state dict (or a dict with a 'state_dict' entry), "
            f"got a {type(obj).__name__}"
            + (f" with keys {_first([str(k) for k in obj])}" if isinstance(obj, dict) else "")
        )
    return strip_prefix(obj)


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> MambaIC:
    """A :class:`MambaIC` built from a checkpoint file (official or ours), in eval mode.

    Raises FileNotFoundError, or ValueError naming the file and what does not fit.

    Example:
        >>> net = mambaic.load_checkpoint("mambaic_0.0483.pth.tar")  # doctest: +SKIP
    """
    state_dict = read_state_dict(path, map_location)
    try:
        model = MambaIC.from_state_dict(state_dict)
    except ValueError as exc:
        raise ValueError(f"checkpoint {os.fspath(path)}: {exc}") from None
    return model.eval()


def random_model(seed: int = 0, **config) -> MambaIC:
    """A randomly initialised :class:`MambaIC` (for demos and tests), reproducible from ``seed``."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = MambaIC(**config)
    finally:
        torch.random.set_rng_state(generator_state)  # leave the caller's random stream alone
    return model.eval()
