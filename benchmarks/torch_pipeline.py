"""The plain PyTorch script a user would write for SRReCNN3D: the rival of ``whole_brain``.

    python benchmarks/torch_pipeline.py LR.nii.gz OUT.nii.gz WEIGHTS.npz SCALE THREADS

Reads the image, normalises by its maximum, cubic-spline zoom (``scipy.ndimage.zoom``,
order 3, as the original), ``torch.nn.functional.conv3d`` layer by layer on a
channels-last-3d float32 tensor (ReLU between layers, zero padding k // 2),
residual, de-normalises, clamps at the input minimum, writes. ``WEIGHTS.npz``
holds ``conv<i>_kernel`` ``(k, k, k, C_in, C_out)`` for (x, y, z) arrays and
``conv<i>_bias``. Nothing of srrecnn_jax is imported.
"""

import sys

import numpy as np
import scipy.ndimage
import SimpleITK as sitk
import torch
import torch.nn.functional as F


def main(lr_path: str, out_path: str, weights_path: str, scale: float, threads: int) -> None:
    torch.set_num_threads(threads)
    image = sitk.ReadImage(lr_path)
    lr = sitk.GetArrayFromImage(image).transpose(2, 1, 0).astype(np.float32)  # (x, y, z)
    top, low = float(lr.max()), float(lr.min())
    interp = scipy.ndimage.zoom(lr / top, scale, order=3)
    weights = np.load(weights_path)
    layers = len([k for k in weights.files if k.endswith("_kernel")])
    x = torch.from_numpy(interp)[None, None].contiguous(memory_format=torch.channels_last_3d)
    with torch.inference_mode():
        for i in range(1, layers + 1):
            kernel = torch.from_numpy(weights[f"conv{i}_kernel"]).permute(4, 3, 0, 1, 2)
            bias = torch.from_numpy(weights[f"conv{i}_bias"])
            x = F.conv3d(x, kernel.contiguous(), bias, padding=kernel.shape[-1] // 2)
            if i < layers:
                x = F.relu(x)
    y = (x[0, 0].numpy() + interp) * top
    y[y < low] = low
    out = sitk.GetImageFromArray(np.ascontiguousarray(y.transpose(2, 1, 0)))
    out.SetSpacing([s / scale for s in image.GetSpacing()])
    out.SetOrigin(image.GetOrigin())
    out.SetDirection(image.GetDirection())
    sitk.WriteImage(out, out_path)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), int(sys.argv[5]))
