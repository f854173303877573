"""`tools/train_net.py` with two small synthetic shapes splits registered, for end-to-end tests.

    python tests/tools/shapes_train_net.py --config-file configs/Shapes/mask_rcnn_shapes.yaml \
        DATASETS.TRAIN '("shapes_mini_train",)' DATASETS.TEST '("shapes_mini_val",)' ...

The splits are generated on first use under `$DETLIB_DATASETS/shapes_mini/`: `shapes_mini_train`
(MINI_TRAIN_IMAGES images) and `shapes_mini_val` (MINI_VAL_IMAGES), drawn like `shapes_train`.
"""

import os
import sys

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path[:0] = [REPO, os.path.join(REPO, "tools")]

import train_net  # noqa: E402

from detlib.data.datasets.builtin import register_shapes  # noqa: E402
from detlib.data.datasets.shapes import ShapesSpec  # noqa: E402
from detlib.engine import default_argument_parser, launch  # noqa: E402

MINI_TRAIN_IMAGES = 24
MINI_VAL_IMAGES = 8


def register_mini_shapes(root: str) -> None:
    register_shapes(
        "shapes_mini_train", os.path.join(root, "shapes_mini", "train"), ShapesSpec(MINI_TRAIN_IMAGES, seed=0)
    )
    register_shapes("shapes_mini_val", os.path.join(root, "shapes_mini", "val"), ShapesSpec(MINI_VAL_IMAGES, seed=1))


def worker(args):
    # Registered in every process: launched workers do not inherit the parent's catalog.
    register_mini_shapes(os.path.expanduser(os.getenv("DETLIB_DATASETS", "datasets")))
    return train_net.main(args)


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    launch(
        worker,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
