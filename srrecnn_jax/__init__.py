"""SRReCNN3D brain MRI super-resolution in JAX."""

from srrecnn_jax.errors import SrrecnnError

__version__ = "0.1.0"

__all__ = ["SRReCNN3D", "SrrecnnError", "SuperResolver", "super_resolve_array", "__version__"]


def __getattr__(name: str):
    # Lazy: importing the package must not import JAX (fast `srrecnn --help`).
    if name in ("SuperResolver", "super_resolve_array"):
        from srrecnn_jax import inference

        return getattr(inference, name)
    if name == "SRReCNN3D":
        from srrecnn_jax.flax_module import SRReCNN3D

        return SRReCNN3D
    raise AttributeError(name)
