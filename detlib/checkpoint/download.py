"""Weights by URL: `http(s)://`, `detectron2://` and `catalog://` paths, downloaded once into a local cache.

`detectron2://X` means `$DETLIB_DETECTRON2_URL` + X (default: Detectron2's public file server), so a
cluster without internet access can point it at a mirror. `catalog://ImageNetPretrained/<name>` names one of
Detectron's ImageNet backbones as Detectron2's model catalog does (e.g. `FAIR/R-50-GN`), under
`$DETLIB_DETECTRON_URL` (default: Detectron's public file server). Files go to `$DETLIB_CACHE` (default
`~/.cache/detlib`), one directory per URL; a cached file is used without any network access. A
download is written to a temporary file and renamed only once it is complete and, when the URL ends
in `#sha256=<hex>`, verified, so an interrupted download never leaves a file a later run would use.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import urllib.error
import urllib.parse
import urllib.request
from typing import Optional

from tqdm import tqdm

from detlib.utils.atomic_write import atomic_write

__all__ = ["DownloadError", "is_url", "resolve_url", "cache_dir", "cached_path", "download"]

logger = logging.getLogger(__name__)

DETECTRON2_PREFIX = "detectron2://"
DETECTRON2_URL_ENV = "DETLIB_DETECTRON2_URL"
DETECTRON2_DEFAULT_URL = "https://dl.fbaipublicfiles.com/detectron2/"
CATALOG_PREFIX = "catalog://ImageNetPretrained/"
DETECTRON_URL_ENV = "DETLIB_DETECTRON_URL"
DETECTRON_DEFAULT_URL = "https://dl.fbaipublicfiles.com/detectron/"
# Detectron2's catalog of Detectron's ImageNet backbones: name -> file under Detectron's file server.
_IMAGENET_CATALOG = {
    "MSRA/R-50": "ImageNetPretrained/MSRA/R-50.pkl",
    "MSRA/R-101": "ImageNetPretrained/MSRA/R-101.pkl",
    "FAIR/R-50-GN": "ImageNetPretrained/47261647/R-50-GN.pkl",
    "FAIR/R-101-GN": "ImageNetPretrained/47592356/R-101-GN.pkl",
    "FAIR/X-101-32x8d": "ImageNetPretrained/20171220/X-101-32x8d.pkl",
    "FAIR/X-101-64x4d": "ImageNetPretrained/FBResNeXt/X-101-64x4d.pkl",
    "FAIR/X-152-32x8d-IN5k": "ImageNetPretrained/25093814/X-152-32x8d-IN5k.pkl",
}
CACHE_ENV = "DETLIB_CACHE"
_CHUNK = 1 << 20


class DownloadError(OSError):
    """A URL that could not be fetched completely; the message names the URL and what failed."""


def is_url(path: str) -> bool:
    return path.startswith((DETECTRON2_PREFIX, CATALOG_PREFIX, "http://", "https://"))


def resolve_url(path: str) -> str:
    """The http(s) URL that `path` names (`detectron2://` and `catalog://` resolved as the module says)."""
    if path.startswith(DETECTRON2_PREFIX):
        base = os.environ.get(DETECTRON2_URL_ENV) or DETECTRON2_DEFAULT_URL
        return base.rstrip("/") + "/" + path[len(DETECTRON2_PREFIX) :].lstrip("/")
    if path.startswith(CATALOG_PREFIX):
        name = path[len(CATALOG_PREFIX) :]
        if name not in _IMAGENET_CATALOG:
            raise ValueError(f"Unknown catalog model '{path}'; the catalog has {sorted(_IMAGENET_CATALOG)}")
        base = os.environ.get(DETECTRON_URL_ENV) or DETECTRON_DEFAULT_URL
        return base.rstrip("/") + "/" + _IMAGENET_CATALOG[name]
    return path


def cache_dir() -> str:
    return os.path.expanduser(os.environ.get(CACHE_ENV) or os.path.join("~", ".cache", "detlib"))


def _split_checksum(url: str) -> tuple[str, Optional[str]]:
    address, _, fragment = url.partition("#")
    params = urllib.parse.parse_qs(fragment)
    return address, (params["sha256"][0].lower() if "sha256" in params else None)


def _cache_file(address: str) -> str:
    # One directory per URL (a hash: URLs may hold any character), the file keeping its own name so
    # that its extension still says how to read it.
    key = hashlib.sha256(address.encode()).hexdigest()[:16]
    name = os.path.basename(urllib.parse.urlparse(address).path) or "download"
    return os.path.join(cache_dir(), key, name)


def cached_path(path: str, timeout: float = 60.0) -> str:
    """A local file for `path`: `path` itself when it is not a URL, else the cached download,
    fetched first when it is not in the cache yet."""
    if not is_url(path):
        return path
    address, sha256 = _split_checksum(resolve_url(path))
    local = _cache_file(address)
    if os.path.isfile(local):
        logger.info("Using %s from the cache: %s", address, local)
        return local
    download(address, local, sha256=sha256, timeout=timeout)
    return local


def download(url: str, destination: str, sha256: Optional[str] = None, timeout: float = 60.0) -> None:
    """Fetch `url` into `destination` atomically, with a progress bar; verify `sha256` if given.

    Raises:
        DownloadError: naming the URL and the HTTP status, timeout, short read or checksum mismatch.
    """
    logger.info("Downloading %s to %s", url, destination)
    with atomic_write(destination) as out:
        digest = _fetch(url, out, timeout)
        # Raised inside the block: the partial file goes, `destination` never appears.
        if sha256 is not None and digest != sha256:
            raise DownloadError(f"Download of {url} has SHA-256 {digest}, but the URL asks for {sha256}")


def _fetch(url: str, out, timeout: float) -> str:
    """Stream `url` into `out`; return the SHA-256 of what was written."""
    digest = hashlib.sha256()
    received = 0
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            expected = int(length) if length is not None else None
            with tqdm(total=expected, unit="B", unit_scale=True, desc=os.path.basename(url), disable=None) as bar:
                while True:
                    chunk = response.read(_CHUNK)
                    if not chunk:
                        break
                    out.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as error:
        raise DownloadError(f"Download of {url} failed: HTTP {error.code} {error.reason}") from None
    except http.client.IncompleteRead as error:
        got = received + len(error.partial)
        raise DownloadError(f"Download of {url} failed: short read, the connection closed after {got} bytes") from None
    except TimeoutError as error:
        raise DownloadError(f"Download of {url} failed: timed out after {timeout:g} s ({error})") from None
    except urllib.error.URLError as error:
        raise DownloadError(f"Download of {url} failed: {error.reason}") from None
    except (OSError, http.client.HTTPException) as error:
        raise DownloadError(f"Download of {url} failed after {received} bytes: {error}") from None
    if expected is not None and received != expected:
        raise DownloadError(f"Download of {url} failed: short read, {received} of {expected} bytes")
    return digest.hexdigest()
