"""
DESIGN.md's layering, checked on what importing each low-level package really loads: `utils` holds base
pieces only, and `layers` uses torch, torchvision, `detlib.utils` and `detlib._C`, never `structures`,
the models, or reporting code (plots, drawing, image libraries).
"""

import subprocess
import sys
import textwrap

import pytest

# For each package: the detlib packages and third-party modules its modules may not load, directly or not.
FORBIDDEN = {
    "detlib.utils": ["detlib.layers", "detlib.structures", "detlib.modeling", "detlib.data", "detlib.visualization"],
    "detlib.layers": [
        "detlib.structures",
        "detlib.modeling",
        "detlib.data",
        "detlib.engine",
        "detlib.evaluation",
        "detlib.visualization",
        "matplotlib",
        "cv2",
    ],
    "detlib.structures": ["detlib.modeling", "detlib.data", "detlib.engine", "detlib.visualization", "matplotlib"],
}


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_loads_nothing_above_it(package):
    script = textwrap.dedent(
        f"""
        import importlib, pkgutil, sys
        package = importlib.import_module({package!r})
        skip = set()
        if package.__name__ == "detlib.layers" and package._extension.KERNELS.extension is None:
            # The operators' fake kernels register onto detlib._C's operators: nothing to load without it.
            skip.add("detlib.layers.operators")
        for info in pkgutil.walk_packages(package.__path__, {package!r} + "."):
            if info.name not in skip:
                importlib.import_module(info.name)
        print("\\n".join(sorted(sys.modules)))
        """
    )
    loaded = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True).stdout.split()
    reached = sorted(name for name in loaded for bad in FORBIDDEN[package] if name == bad or name.startswith(bad + "."))
    assert not reached, f"importing every module of {package} loads {reached}"
