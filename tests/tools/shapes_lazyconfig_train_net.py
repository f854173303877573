"""`tools/lazyconfig_train_net.py` with the small synthetic shapes splits of `shapes_train_net.py`
registered, for end-to-end tests.

    python tests/tools/shapes_lazyconfig_train_net.py --config-file configs/Shapes/mask_rcnn_shapes.py \
        dataloader.train.dataset.names=shapes_mini_train dataloader.test.dataset.names=shapes_mini_val ...
"""

import datetime
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.join(HERE, "..", ".."), os.path.join(HERE, "..", "..", "tools"), HERE]

import lazyconfig_train_net  # noqa: E402
from shapes_train_net import register_mini_shapes  # noqa: E402

from detlib.engine import launch  # noqa: E402


def worker(args):
    # Registered in every process: launched workers do not inherit the parent's catalog.
    register_mini_shapes(os.path.expanduser(os.getenv("DETLIB_DATASETS", "datasets")))
    return lazyconfig_train_net.main(args)


if __name__ == "__main__":
    args = lazyconfig_train_net.argument_parser().parse_args()
    launch(
        worker,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        timeout=datetime.timedelta(seconds=args.dist_timeout),
        args=(args,),
    )
