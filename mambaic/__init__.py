"""MambaIC (CVPR 2025) on the mambaic_kernels operator layer: model, codec and command line."""

__version__ = "0.1.0"
