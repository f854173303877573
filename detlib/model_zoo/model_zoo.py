"""Access to the configs that ship with detlib."""
from pathlib import Path

# configs/ sits beside the package in a source checkout (the way detlib is installed: `pip install -e .`).
_CONFIG_ROOT = Path(__file__).resolve().parents[2] / "configs"


def get_config_file(config_path: str) -> str:
    """
    Returns the absolute path of a packaged config, given its path relative to `configs/`,
    e.g. "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml".
    """
    path = _CONFIG_ROOT / config_path
    if not path.is_file():
        available = sorted(str(p.relative_to(_CONFIG_ROOT)) for p in _CONFIG_ROOT.rglob("*.yaml"))
        raise FileNotFoundError(
            f"No packaged config '{config_path}' under {_CONFIG_ROOT}. Available: {', '.join(available)}"
        )
    return str(path)
