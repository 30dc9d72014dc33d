"""Models: :class:`MambaIC`, registered with CompressAI's model registry as "mambaic"."""

from .mambaic import IMAGE_MULTIPLE, MambaIC

__all__ = ["IMAGE_MULTIPLE", "MambaIC"]
