"""Weights by URL: downloads from a server the test runs on 127.0.0.1, the cache, and failures."""

import hashlib
import pickle
import socket

import numpy as np
import pytest
import torch
from torch import nn

from detlib.checkpoint import DetectionCheckpointer, DownloadError
from detlib.checkpoint.download import download, resolve_url


def _weights_pickle(seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    state = {"weight": rng.standard_normal((2, 3)).astype(np.float32), "bias": np.arange(2, dtype=np.float32)}
    return pickle.dumps({"model": state, "__author__": "test"})


def _cached_files(cache):
    return sorted(p.name for p in cache.rglob("*") if p.is_file()) if cache.exists() else []


def test_a_url_downloads_once_and_then_loads_from_the_cache_without_network(file_server, weights_cache):
    file_server.files["/zoo/model.pkl"] = _weights_pickle()
    url = file_server.url("/zoo/model.pkl")
    expected = pickle.loads(file_server.files["/zoo/model.pkl"])["model"]

    model = nn.Linear(3, 2)
    DetectionCheckpointer(model).load(url)
    assert torch.equal(model.weight.detach(), torch.from_numpy(expected["weight"]))
    assert file_server.requests["/zoo/model.pkl"] == 1
    assert _cached_files(weights_cache) == ["model.pkl"]

    file_server.close()  # from now on any network access would fail
    again = nn.Linear(3, 2)
    DetectionCheckpointer(again).load(url)
    assert torch.equal(again.bias.detach(), torch.from_numpy(expected["bias"]))


def test_detectron2_urls_follow_the_mirror_variable(file_server, weights_cache, monkeypatch):
    file_server.files["/mirror/ImageNetPretrained/MSRA/tiny.pkl"] = _weights_pickle(1)
    monkeypatch.setenv("DETLIB_DETECTRON2_URL", file_server.url("/mirror/"))
    model = nn.Linear(3, 2)
    DetectionCheckpointer(model).load("detectron2://ImageNetPretrained/MSRA/tiny.pkl")
    assert file_server.requests == {"/mirror/ImageNetPretrained/MSRA/tiny.pkl": 1}
    assert torch.equal(model.bias.detach(), torch.tensor([0.0, 1.0]))


def test_detectron2_urls_default_to_detectron2s_file_server(monkeypatch):
    monkeypatch.delenv("DETLIB_DETECTRON2_URL", raising=False)
    assert resolve_url("detectron2://ImageNetPretrained/MSRA/R-50.pkl") == (
        "https://dl.fbaipublicfiles.com/detectron2/ImageNetPretrained/MSRA/R-50.pkl"
    )


def test_a_download_cut_in_the_middle_fails_by_name_leaves_nothing_and_is_fetched_again(file_server, weights_cache):
    file_server.files["/w/model.pkl"] = _weights_pickle()
    file_server.cut.add("/w/model.pkl")
    url = file_server.url("/w/model.pkl")
    with pytest.raises(DownloadError, match="short read") as error:
        DetectionCheckpointer(nn.Linear(3, 2)).load(url)
    assert url in str(error.value)
    assert _cached_files(weights_cache) == []  # neither a truncated file nor a temporary one

    file_server.cut.clear()
    model = nn.Linear(3, 2)
    DetectionCheckpointer(model).load(url)
    assert file_server.requests["/w/model.pkl"] == 2
    assert torch.equal(model.bias.detach(), torch.tensor([0.0, 1.0]))


def test_an_http_error_names_the_url_and_the_status(file_server, weights_cache):
    url = file_server.url("/missing/model.pkl")
    with pytest.raises(DownloadError, match="HTTP 404") as error:
        DetectionCheckpointer(nn.Linear(3, 2)).load(url)
    assert url in str(error.value)
    assert _cached_files(weights_cache) == []


def test_a_checksum_in_the_url_is_verified(file_server, weights_cache):
    body = _weights_pickle()
    file_server.files["/w/model.pkl"] = body
    good = hashlib.sha256(body).hexdigest()
    bad = hashlib.sha256(b"something else").hexdigest()
    with pytest.raises(DownloadError, match=bad):
        DetectionCheckpointer(nn.Linear(3, 2)).load(file_server.url(f"/w/model.pkl#sha256={bad}"))
    assert _cached_files(weights_cache) == []
    DetectionCheckpointer(nn.Linear(3, 2)).load(file_server.url(f"/w/model.pkl#sha256={good}"))
    assert _cached_files(weights_cache) == ["model.pkl"]


def test_a_server_that_does_not_answer_times_out_by_name(tmp_path):
    with socket.socket() as listener:  # accepts connections (the backlog) but never replies
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/model.pkl"
        with pytest.raises(DownloadError, match="timed out") as error:
            download(url, str(tmp_path / "model.pkl"), timeout=0.3)
    assert url in str(error.value)
    assert list(tmp_path.iterdir()) == []


def test_catalog_urls_name_detectrons_imagenet_backbones(file_server, weights_cache, monkeypatch):
    # Detectron2's ModelCatalog: FAIR/R-50-GN is ImageNetPretrained/47261647/R-50-GN.pkl on Detectron's server.
    monkeypatch.delenv("DETLIB_DETECTRON_URL", raising=False)
    assert resolve_url("catalog://ImageNetPretrained/FAIR/R-50-GN") == (
        "https://dl.fbaipublicfiles.com/detectron/ImageNetPretrained/47261647/R-50-GN.pkl"
    )
    file_server.files["/d1/ImageNetPretrained/25093814/X-152-32x8d-IN5k.pkl"] = _weights_pickle(1)
    monkeypatch.setenv("DETLIB_DETECTRON_URL", file_server.url("/d1/"))
    model = nn.Linear(3, 2)
    DetectionCheckpointer(model).load("catalog://ImageNetPretrained/FAIR/X-152-32x8d-IN5k")
    assert file_server.requests == {"/d1/ImageNetPretrained/25093814/X-152-32x8d-IN5k.pkl": 1}
    with pytest.raises(ValueError, match="Unknown catalog model.*FAIR/R-101-GN"):
        resolve_url("catalog://ImageNetPretrained/FAIR/R-18")
