"""`train_net.py --config-file configs/COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml` loads its
`detectron2://ImageNetPretrained/MSRA/R-50.pkl` from a mirror (`DETLIB_DETECTRON2_URL`, a server on
127.0.0.1) and trains. The Caffe2 R-50 file is written from ResNet-50's published layout."""

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from detlib.checkpoint import load_checkpoint_file

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "tests" / "tools" / "shapes_train_net.py"  # train_net.py + small registered splits
CONFIG = REPO / "configs" / "COCO-InstanceSegmentation" / "mask_rcnn_R_50_FPN_1x.yaml"


def caffe2_resnet50(seed: int = 0) -> dict:
    """Random weights under Detectron's names, shaped as ResNet-50: a 7x7 stem of 64 channels, then
    bottleneck stages res2-res5 of 3, 4, 6, 3 blocks (width 64-512, output 4x the width), a 1x1
    projection shortcut in each stage's first block, and the 1000-way ImageNet classifier."""
    rng = np.random.default_rng(seed)
    blobs = {}

    def conv(name, out_channels, in_channels, k):
        blobs[f"{name}_w"] = rng.standard_normal((out_channels, in_channels, k, k)).astype(np.float32) * 0.01
        norm = "res_conv1" if name == "conv1" else name
        blobs[f"{norm}_bn_s"] = rng.uniform(0.5, 1.5, out_channels).astype(np.float32)
        blobs[f"{norm}_bn_b"] = rng.standard_normal(out_channels).astype(np.float32) * 0.1

    conv("conv1", 64, 3, 7)
    in_channels = 64
    for stage, (blocks, width) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512)), start=2):
        for block in range(blocks):
            prefix = f"res{stage}_{block}"
            if block == 0:
                conv(f"{prefix}_branch1", 4 * width, in_channels, 1)
            conv(f"{prefix}_branch2a", width, in_channels, 1)
            conv(f"{prefix}_branch2b", width, width, 3)
            conv(f"{prefix}_branch2c", 4 * width, width, 1)
            in_channels = 4 * width
    blobs["fc1000_w"] = rng.standard_normal((1000, 2048)).astype(np.float32)
    blobs["fc1000_b"] = np.zeros(1000, dtype=np.float32)
    return blobs


def test_train_net_loads_the_imagenet_backbone_from_a_mirror_and_trains(tmp_path, file_server):
    blobs = caffe2_resnet50()
    file_server.files["/mirror/ImageNetPretrained/MSRA/R-50.pkl"] = pickle.dumps(blobs, protocol=2)
    env = dict(
        os.environ,
        DETLIB_DATASETS=str(tmp_path / "datasets"),
        DETLIB_CACHE=str(tmp_path / "cache"),
        DETLIB_DETECTRON2_URL=file_server.url("/mirror/"),
        OMP_NUM_THREADS="1",
    )
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    output_dir = tmp_path / "out"
    short_run = [
        "MODEL.DEVICE",
        "cpu",
        "DATASETS.TRAIN",
        '("shapes_mini_train",)',
        "DATASETS.TEST",
        "()",
        "SOLVER.MAX_ITER",
        "1",
        "SOLVER.IMS_PER_BATCH",
        "1",
        "DATALOADER.NUM_WORKERS",
        "0",
        "INPUT.MIN_SIZE_TRAIN",
        "(64,)",
        "INPUT.MAX_SIZE_TRAIN",
        "64",
        "OUTPUT_DIR",
        str(output_dir),
    ]
    command = [sys.executable, str(SCRIPT), "--config-file", str(CONFIG), *short_run]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-5000:]
    assert file_server.requests == {"/mirror/ImageNetPretrained/MSRA/R-50.pkl": 1}

    # The stem and res2 are frozen (FREEZE_AT 2), so after training they still hold the file's values.
    final = load_checkpoint_file(str(output_dir / "model_final.pth"))["model"]
    for caffe2, detlib in [
        ("conv1_w", "stem.conv1.weight"),
        ("res_conv1_bn_s", "stem.conv1.norm.weight"),
        ("res2_0_branch1_w", "res2.0.shortcut.weight"),
        ("res2_2_branch2c_bn_b", "res2.2.conv3.norm.bias"),
    ]:
        assert torch.equal(final["backbone.bottom_up." + detlib], torch.from_numpy(blobs[caffe2])), detlib
