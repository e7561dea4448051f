"""Write the latest checkpoint of a run fine-tuned from the original x2 weights as a model
folder, with the scales and voxel size it trains on (recorded in each checkpoint) and
the original weights' provenance (CeCILL-B: a fine-tuned model is a derivative work of
the original release).

    python checkpoints/export.py runs/thick_slice checkpoints/thick_slice/model

A run that is still training has checkpoints but no final model; this is how its
progress is scored (``checkpoints/evaluate.py``) and carried to the next session
(``--init`` from the folder written here).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from srrecnn_jax.checkpoint import checkpoint_steps, load_model, save_model

ORIGINAL = {"file": "SRReCNN3D_10Layers_IsoScalex2.caffemodel",
            "sha256": "2438b3686c47c233bf50186a7923fb243b516d54e31d528761bdeebcb9a87d18",
            "source": "github.com/rousseau/deepBrain, SRReCNN3D/Monomodal/Test/caffe_model",
            "licence": "CeCILL-B",
            "authors": "Chi-Hieu Pham, Carlos Tor-Diez, Helene Meunier, Nathalie Bednarek, "
                       "Ronan Fablet, Nicolas Passat, Francois Rousseau",
            "citation": "Pham et al., Multiscale brain MRI super-resolution using deep 3D "
                        "convolutional networks, Computerized Medical Imaging and Graphics 77, "
                        "101647 (2019)"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="the training run folder")
    parser.add_argument("out", type=Path, help="model folder to write (replaced)")
    parser.add_argument("--earlier-steps", type=int, default=0, metavar="N",
                        help="steps of the earlier runs this one was initialised from "
                             "(--init), so that the folder records the steps in all")
    args = parser.parse_args()
    steps = checkpoint_steps(args.run)
    if not steps:
        parser.error(f"{args.run}: no checkpoint yet")
    loaded = load_model(args.run)
    loaded.origin = {"kind": "srrecnn-jax fine-tuning", "run": str(args.run),
                     "step": steps[-1], "steps_in_all": args.earlier_steps + steps[-1],
                     "fine_tuned_from": ORIGINAL}
    save_model(args.out, loaded, force=True)
    print(f"{args.out}: step {steps[-1]}, scales {loaded.trained_scales}, "
          f"spacing {loaded.trained_spacing} mm")


if __name__ == "__main__":
    main()
