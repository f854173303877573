"""model_zoo.get_config_file resolves the repository's configs/ in a checkout and the packaged copy that
setup.py puts into a built package (detlib/model_zoo/configs)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import detlib
from detlib.model_zoo import get_config_file

REPO = Path(detlib.__file__).resolve().parents[1]
NAME = "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml"


def test_source_checkout_resolves_the_repository_configs():
    assert Path(get_config_file(NAME)) == REPO / "configs" / NAME


def test_unknown_config_lists_the_available_ones():
    with pytest.raises(FileNotFoundError, match="No packaged config 'nope.yaml'.*mask_rcnn_R_50_FPN_1x.yaml"):
        get_config_file("nope.yaml")


def test_built_package_resolves_its_packaged_configs(tmp_path):
    # The layout setup.py's build_py produces, away from the checkout: the package with configs inside.
    package = tmp_path / "site" / "detlib"
    shutil.copytree(REPO / "detlib" / "model_zoo", package / "model_zoo", ignore=shutil.ignore_patterns("configs"))
    shutil.copy(REPO / "detlib" / "__init__.py", package / "__init__.py")
    shutil.copytree(REPO / "configs", package / "model_zoo" / "configs")
    code = f"from detlib.model_zoo import get_config_file; print(get_config_file({NAME!r}))"
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(tmp_path / "site")},
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()) == package / "model_zoo" / "configs" / NAME
