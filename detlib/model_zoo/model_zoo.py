"""Access to the configs that ship with detlib."""
from pathlib import Path


def _config_root() -> Path:
    """
    Where the configs are: inside the package in an installed wheel (setup.py copies the repository's
    configs/ there at build time), else the repository's configs/ beside the package (a source checkout or
    `pip install -e .`).
    """
    packaged = Path(__file__).resolve().parent / "configs"
    return packaged if packaged.is_dir() else Path(__file__).resolve().parents[2] / "configs"


_CONFIG_ROOT = _config_root()


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
