"""The QC report of ``srrecnn bids``: subject pages and the group's sortable index, built
from report entries (no model run), and rendered by headless Chromium when it is there."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from srrecnn_jax.bids import report
from srrecnn_jax.plots import draw_planes

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def entries(out: Path) -> list[report.Entry]:
    """Two outputs of sub-01 and sub-02, and a failed scan of sub-02, with a montage."""
    volume = np.random.default_rng(0).uniform(0, 1, (8, 10, 6)).astype(np.float32)
    figure = "sub-01/figures/sub-01_res-x2_desc-srrecnn_T1w_montage.png"
    (out / figure).parent.mkdir(parents=True)
    draw_planes([("input, cubic spline", volume), ("SR", volume)], out / figure)
    facts = {"SrrecnnModel": "mono-x2", "SrrecnnScale": [2.0, 2.0, 2.0],
             "SrrecnnSelfCheckGainDb": 1.25, "SrrecnnNoisePercent": 0.8,
             "SrrecnnWarnings": ["the model over-sharpened 12 voxels"]}
    return [report.Entry("in/sub-01/anat/sub-01_T1w.nii.gz", "01", None, "T1w", "ok",
                         "sub-01/anat/sub-01_res-x2_desc-srrecnn_T1w.nii.gz", facts,
                         figure=figure),
            report.Entry("in/sub-02/ses-1/anat/sub-02_ses-1_T1w.nii.gz", "02", "1", "T1w", "ok",
                         "sub-02/ses-1/anat/sub-02_ses-1_res-x2_desc-srrecnn_T1w.nii.gz",
                         facts | {"SrrecnnSelfCheckGainDb": -0.5, "SrrecnnWarnings": []}),
            report.Entry("in/sub-02/ses-2/anat/sub-02_ses-2_T1w.nii.gz", "02", "2", "T1w",
                         "error", error="sub-02_ses-2_T1w.nii.gz: not an image")]


def test_the_index_has_a_sortable_header_per_column_and_every_scan(tmp_path):
    page = report.index_page(entries(tmp_path), None)
    assert page.count("<th>") == 9 and "addEventListener('click'" in page
    assert page.count("<tr") == 4 and "not an image" in page and "+1.25" in page


def test_a_subject_page_shows_the_montage_numbers_warnings_and_errors(tmp_path):
    found = entries(tmp_path)
    first, second = report.subject_page("01", found), report.subject_page("02", found)
    assert found[0].figure in first and "over-sharpened 12 voxels" in first
    assert "+1.25" in first and "not an image" in second and "not an image" not in first


def test_a_subject_page_shows_fine_tuning_on_the_scan_in_one_line(tmp_path):
    found = entries(tmp_path)
    found[0].facts["SrrecnnAdapt"] = {
        "BudgetSeconds": 600, "SliceThicknessMm": None, "Seconds": 598.2, "Steps": 512,
        "Kept": True, "FwhmVoxels": 4.0,
        "HeldoutPsnrDb": {"Spline": 31.27, "Start": 32.2, "Adapted": 32.61}}
    page = report.subject_page("01", found)
    assert ("adapted weights used: 512 steps in 598.2 s of a 600 s budget; held-out PSNR "
            "(dB) spline 31.27, start 32.20, adapted 32.61") in page


@pytest.mark.skipif(not any(shutil.which(b) for b in BROWSERS),
                    reason="no chromium, chromium-browser or google-chrome on PATH")
@pytest.mark.parametrize("page", ["index.html", "sub-01.html"])
def test_a_page_renders_in_headless_chromium(tmp_path, page):
    found = entries(tmp_path)
    report.write_index(tmp_path, found, None)
    report.write_subject_pages(tmp_path, found, ["01", "02"])
    browser = next(shutil.which(b) for b in BROWSERS if shutil.which(b))
    png = tmp_path / "shot.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu",
                    f"--screenshot={png}", "--window-size=1000,700",
                    (tmp_path / page).as_uri()], capture_output=True, timeout=120, check=False)
    import matplotlib.image

    pixels = matplotlib.image.imread(png)
    assert pixels.shape[:2] == (700, 1000) and pixels.std() > 0.01
