"""SRReCNN3D as a Flax (linen) module, for use inside a user's own Flax code.

The module holds no arithmetic of its own: its parameters are exactly the plain tree of
``model`` (``{"conv1": {"kernel": (k, k, k, C_in, C_out), "bias": (C_out,)}, ...}``), so
weights from ``checkpoint.load_model`` or ``caffe.load_caffemodel`` (the 2019 release's)
go straight into ``apply({"params": params}, x)``, and its output is ``model.apply``'s
bit for bit. Inputs are channels-last ``(B, X, Y, Z, C_in)``, image axes in (x, y, z)
order, channel 0 the spline-interpolated image (the residual adds it back).

>>> net = SRReCNN3D(config)                       # a config.ModelConfig
>>> params = net.init(key, x)["params"]           # or load_model(path).params
>>> y = net.apply({"params": params}, x)
"""

from __future__ import annotations

import flax.linen as nn
import jax

from srrecnn_jax import model
from srrecnn_jax.config import ModelConfig


class SRReCNN3D(nn.Module):
    """The network of ``config`` (SRReCNN3D, its multimodal form, or SRCNN3D).

    Attributes:
      config: the architecture (``config.recnn()``, ``config.srcnn3d()``, or a loaded
        model's ``.config``).
      precision: arithmetic of the convolutions, one of ``config.PRECISIONS``.
      algorithm: the convolution algorithm, as ``model.apply``'s (``conv.ALGORITHMS``).
      differentiable: as ``model.apply``'s: ``True`` when training (every layer one
        convolution with a gradient of its own), ``False`` (default) for inference.

    ``init`` gives each layer He (fan-in) Gaussian kernels and zero biases, as
    ``model.init``, with a key per layer from Flax's ``params`` stream (so the numbers
    differ from ``model.init(key, config)``'s, the tree does not).
    """

    config: ModelConfig
    precision: str = "fp32"
    algorithm: str = "auto"
    differentiable: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """``(B, X, Y, Z, C_in)`` -> ``(B, X, Y, Z, C_out)`` float32."""
        params = {name: self.param(name, model.init_layer, shapes["kernel"])
                  for name, shapes in model.param_shapes(self.config).items()}
        return model.apply(params, x, self.config, self.precision, self.algorithm,
                           self.differentiable)
