"""The same network and train step in PyTorch, with the same weights (optional dependency).

Layout: JAX arrays are ``(B, X, Y, Z, C)`` with kernels ``(x, y, z, in, out)``; PyTorch's
conv3d takes ``(B, C, D, H, W)`` with weights ``(out, in, D, H, W)``, and here D, H, W =
x, y, z, so the kernel is transposed to ``(out, in, x, y, z)`` and the input to
``(B, C, X, Y, Z)``. Zero padding 1 per layer, ReLU between layers, the input's channel 0
added to the output (residual), all as the JAX model.

Precisions: ``fp32`` turns TF32 off in cuDNN and in matmuls; ``tf32`` turns both on;
``bf16`` puts the module and its input in bfloat16 (cuDNN and oneDNN accumulate in float32
and round each layer's output to bfloat16); the residual is added in float32 as in JAX.
JAX's bf16 keeps biases and ReLU in float32 between layers, so bf16 outputs differ at
bf16 rounding (recorded, not checked).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from benchmarks.memory import torch_peak, torch_reset
from benchmarks.timing import measure, measure_alternating

FP32_TOLERANCE = 1e-4
BF16_NOTE = ("module and input in bfloat16 (cuDNN/oneDNN accumulate in float32), residual "
             "added in float32")


def load() -> tuple[Any, str | None]:
    """``(torch, None)``, or ``(None, reason)`` when PyTorch is not installed."""
    try:
        import torch
    except ImportError as e:
        return None, f"PyTorch is not installed ({e}); install it to compare"
    return torch, None


def pick_device(torch, jax_platform: str) -> tuple[str | None, str | None]:
    """PyTorch's device matching JAX's: ``cuda`` for a JAX GPU, else ``cpu``."""
    if jax_platform == "cpu":
        return "cpu", None
    if jax_platform in ("gpu", "cuda") and torch.cuda.is_available():
        return "cuda", None
    return None, f"JAX runs on {jax_platform} but PyTorch has no matching device"


def set_precision(torch, precision: str) -> None:
    tf32 = precision == "tf32"
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32


def _dtype(torch, precision: str):
    return torch.bfloat16 if precision == "bf16" else torch.float32


def build_net(torch, params: dict, config, precision: str, device: str):
    """A ``torch.nn.Module`` with the JAX ``params``: float32 ``(B, C, X, Y, Z)`` in and out."""
    names = sorted(params, key=lambda n: int(n[4:]))
    dtype = _dtype(torch, precision)

    class ReCNN(torch.nn.Module):
        def __init__(self):
            super().__init__()
            convs = []
            for name in names:
                kernel = np.asarray(params[name]["kernel"], np.float32)
                k, c_in, c_out = kernel.shape[0], kernel.shape[3], kernel.shape[4]
                conv = torch.nn.Conv3d(c_in, c_out, k, padding=(k - 1) // 2)
                with torch.no_grad():
                    conv.weight.copy_(torch.from_numpy(
                        np.ascontiguousarray(kernel.transpose(4, 3, 0, 1, 2))))
                    conv.bias.copy_(torch.from_numpy(
                        np.array(params[name]["bias"], np.float32)))
                convs.append(conv)
            self.convs = torch.nn.ModuleList(convs)

        def forward(self, x):
            y = x.to(dtype)
            for i, conv in enumerate(self.convs):
                y = conv(y)
                if i < len(self.convs) - 1:
                    y = torch.relu(y)
            y = y.float()
            return y + x[:, :1] if config.residual else y

    return ReCNN().to(device=device, dtype=dtype)


def to_torch(torch, x: np.ndarray, device: str):
    """``(B, X, Y, Z, C)`` NumPy -> ``(B, C, X, Y, Z)`` float32 tensor."""
    return torch.from_numpy(np.ascontiguousarray(np.asarray(x, np.float32)
                                                 .transpose(0, 4, 1, 2, 3))).to(device)


def to_numpy(y) -> np.ndarray:
    """``(B, C, X, Y, Z)`` tensor -> ``(B, X, Y, Z, C)`` float32 NumPy."""
    return y.detach().float().cpu().numpy().transpose(0, 2, 3, 4, 1)


def relative_difference(a: np.ndarray, reference: np.ndarray) -> float:
    span = float(reference.max() - reference.min()) or 1.0
    return float(np.max(np.abs(a.astype(np.float64) - reference)) / span)


def _sync(torch, device: str) -> Callable[[Any], Any]:
    def sync(out):
        if device == "cuda":
            torch.cuda.synchronize()
        return out
    return sync


def _formats(torch) -> dict[str, Any]:
    return {"contiguous": torch.contiguous_format, "channels_last_3d": torch.channels_last_3d}


def _probe_and_measure(torch, device: str, build: Callable[[Any], Callable[[], Any]],
                       repeats: int, rival=None) -> tuple[Any, str, dict[str, float]]:
    """Try each memory format (warm-up + one timed run); time the faster one fully.

    ``build(fmt)`` returns an independent callable (its own module copy), so the
    faster one is timed as it was probed, already warm. ``rival``: the JAX side's
    warm ``(call, sync)``; then the two are timed in turns and the rival's
    ``Measured`` is stored as ``timed.rival``."""
    sync = _sync(torch, device)
    probes, best = {}, None
    for label, fmt in _formats(torch).items():
        call = build(fmt)
        timed = measure(call, sync, 1, warmup=1)
        probes[label] = timed.seconds[0]
        if best is None or probes[label] < probes[best[0]]:
            best = (label, call)
        else:
            del call
    label, call = best
    torch_reset(torch, device)
    if rival is None:
        timed = measure(call, sync, repeats, warmup=0)
    else:
        both = measure_alternating({"torch": (call, sync), "rival": rival}, repeats)
        timed, timed.rival = both["torch"], both["rival"]
    timed.warmup, timed.warmup_seconds = 2, [probes[label]]  # the probe warmed it: 1 + 1 timed
    return timed, label, probes


def _compile(torch, net, enabled: bool):
    return torch.compile(net) if enabled else net


def _common(torch, device: str, precision: str, compiled: bool) -> dict[str, Any]:
    return {"version": torch.__version__, "device": device,
            "device_name": (torch.cuda.get_device_name() if device == "cuda" else "cpu"),
            "num_threads": torch.get_num_threads(), "compiled": compiled,
            "precision_mode": {"fp32": "allow_tf32 off (cuDNN and matmul)",
                               "tf32": "allow_tf32 on (cuDNN and matmul)",
                               "bf16": BF16_NOTE}[precision]}


def inference(params: dict, config, x: np.ndarray, reference: np.ndarray, precision: str,
              device: str, repeats: int, compile_net: bool = False, rival=None
              ) -> dict[str, Any]:
    """Agreement with the JAX output ``reference``, then the timing of the faster format
    (in turns with ``rival``, the JAX side's ``(call, sync)``, when given)."""
    import torch

    set_precision(torch, precision)
    record = _common(torch, device, precision, compile_net)
    xt = to_torch(torch, x, device)

    def build(fmt):
        net = build_net(torch, params, config, precision, device).eval()
        net = _compile(torch, net.to(memory_format=fmt), compile_net)
        xf = xt.contiguous(memory_format=fmt)
        return lambda: net(xf)

    with torch.inference_mode():
        diff = relative_difference(to_numpy(build(torch.contiguous_format)()), reference)
        record["agreement_max_rel_diff"] = diff
        record["agreement_ok"] = diff < FP32_TOLERANCE if precision == "fp32" else None

        timed, label, probes = _probe_and_measure(torch, device, build, repeats, rival)
    record.update({"memory_format": label, "format_probe_s": probes, "timing": timed.to_dict(),
                   "memory": torch_peak(torch, device)})
    if rival is not None:
        record["rival_timing"] = timed.rival.to_dict()
    return record


def train(params: dict, config, data: np.ndarray, label: np.ndarray, jax_first_loss: float,
          learning_rate: float, bias_lr_mult: float, betas: tuple[float, float], eps: float,
          device: str, repeats: int, compile_net: bool = False, rival=None) -> dict[str, Any]:
    """Adam steps on one batch; the first step's loss is compared with JAX's. ``rival``:
    as for ``inference``."""
    import torch

    set_precision(torch, "fp32")
    record = _common(torch, device, "fp32", compile_net)
    batch = data.shape[0]
    xt, lt = to_torch(torch, data, device), to_torch(torch, label, device)
    first: dict[str, float] = {}

    def build(fmt):
        net = build_net(torch, params, config, "fp32", device).to(memory_format=fmt)
        weights = [c.weight for c in net.convs]
        biases = [c.bias for c in net.convs]
        opt = torch.optim.Adam([{"params": weights, "lr": learning_rate},
                                {"params": biases, "lr": learning_rate * bias_lr_mult}],
                               lr=learning_rate, betas=betas, eps=eps)
        model = _compile(torch, net, compile_net)
        xf, lf = xt.contiguous(memory_format=fmt), lt.contiguous(memory_format=fmt)

        def step():
            opt.zero_grad(set_to_none=True)
            loss = torch.sum(torch.square(model(xf) - lf)) / (2 * batch)
            loss.backward()
            opt.step()
            if "loss" not in first:
                first["loss"] = float(loss.detach())
            return loss
        return step

    timed, fmt, probes = _probe_and_measure(torch, device, build, repeats, rival)
    if rival is not None:
        record["rival_timing"] = timed.rival.to_dict()
    record.update({
        "memory_format": fmt, "format_probe_s": probes, "timing": timed.to_dict(),
        "first_loss": first["loss"], "jax_first_loss": jax_first_loss,
        "agreement_loss_rel_diff": abs(first["loss"] - jax_first_loss) / abs(jax_first_loss),
        "optimizer": f"Adam(lr {learning_rate:g}, bias lr x{bias_lr_mult:g}, betas {betas}, "
                     f"eps {eps:g}); loss sum((p - l)^2) / (2B)",
        "memory": torch_peak(torch, device)})
    record["agreement_ok"] = record["agreement_loss_rel_diff"] < FP32_TOLERANCE
    return record
