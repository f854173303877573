#!/usr/bin/env python
"""
Train or evaluate Mask Scoring R-CNN with detlib's own `tools/train_net.py`, unchanged.

    python projects/MaskScoring/train_net.py --config-file projects/MaskScoring/configs/mask_scoring_R18_FPN_shapes.yaml

Importing `mask_scoring` registers `MaskScoringROIHeads` in `ROI_HEADS_REGISTRY`; everything else
(arguments, config, trainer, writers) is `tools/train_net.py`'s.
"""

import os
import sys

PROJECT_DIR = os.path.dirname(os.path.abspath(__file__))
# Set at import so that processes started by `launch` (which import this file) find both modules.
# tools/ comes first: `import train_net` must find tools/train_net.py, not this file.
sys.path[:0] = [os.path.join(PROJECT_DIR, "..", "..", "tools"), PROJECT_DIR]

import mask_scoring  # noqa: E402,F401  (registers the heads)
import train_net  # noqa: E402  (tools/train_net.py)

from detlib.engine import default_argument_parser, launch  # noqa: E402

if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    launch(
        train_net.main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
