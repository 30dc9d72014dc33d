"""MambaIC (CVPR 2025) on the mambaic_kernels operator layer: model, codec and command line."""

# 0.2.0: .mic format version 2 (platform record, latent checksums); the SS2D core as one op (the
# torch backend's arithmetic changed). 0.3.0: the triton and cpu backends' SS2D cores are one
# fused scan per direction (their arithmetic changed: a file encoded by 0.2.0 on them decodes
# there, and 0.3.0 refuses it, naming the version). 0.4.0: precision modes (recorded in the file);
# the cpu backend's SS2D core adds its directions into the channel-last output (its arithmetic
# changed). The version is recorded in every .mic file.
__version__ = "0.4.0"

import warnings  # noqa: E402

with warnings.catch_warnings():
    # CompressAI 1.2.8 calls torch.jit.script at import, which recent torch deprecates with a
    # FutureWarning; keep `import mambaic` silent (the style guide: nothing warns at import).
    warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.* is deprecated", category=FutureWarning)
    import compressai.entropy_models  # noqa: F401

from mambaic.checkpoint import load_checkpoint, random_model  # noqa: E402
from mambaic.graphs import CUDAGraphForward  # noqa: E402
from mambaic.models import MambaIC  # noqa: E402

__all__ = ["CUDAGraphForward", "MambaIC", "__version__", "load_checkpoint", "random_model"]
