import json
import time

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from detlib.utils.events import EventStorage, JSONWriter, TensorboardXWriter, get_event_storage


def test_outside_a_storage_what_is_put_is_dropped():
    dropping = get_event_storage()
    dropping.put_scalar("loss", 1.0)
    dropping.put_scalars(a=1.0, b=2.0)
    dropping.put_image("img", np.zeros((3, 4, 4), dtype=np.uint8))
    dropping.put_histogram("h", torch.rand(10))
    assert dropping.histories() == {} and dropping.vis_data == [] and dropping.histograms == []
    with EventStorage() as storage:  # an open storage is unaffected and gets only its own values
        assert get_event_storage() is storage
        storage.put_scalar("loss", 2.0)
    assert storage.history("loss").latest() == 2.0


def test_storages_nest_and_the_innermost_is_current():
    with EventStorage() as outer:
        assert get_event_storage() is outer
        with EventStorage() as inner:
            assert get_event_storage() is inner
        assert get_event_storage() is outer


def test_histories_give_window_statistics_like_numpy():
    values = np.random.RandomState(0).rand(50)
    with EventStorage(start_iter=100) as storage:
        for v in values:
            storage.put_scalar("loss", torch.tensor(v))
            storage.step()
        history = storage.history("loss")
        assert history.median(20) == pytest.approx(np.median(values[-20:]))
        assert history.avg(7) == pytest.approx(values[-7:].mean())
        assert history.global_avg() == pytest.approx(values.mean())
        assert history.latest() == pytest.approx(values[-1])
        assert [it for _, it in history.values()] == list(range(100, 150))
        assert storage.iter == 150


def test_latest_and_smoothing_hints():
    with EventStorage() as storage:
        for i, v in enumerate([1.0, 9.0, 2.0]):
            storage.iter = i
            storage.put_scalars(loss=v, lr=v * 10, smoothing_hint=True)
            storage.put_scalar("ap", v, smoothing_hint=False)
        assert storage.latest()["loss"] == (2.0, 2)
        smoothed = storage.latest_with_smoothing_hint(window_size=3)
        assert smoothed["loss"] == (2.0, 2)  # median of 1, 9, 2
        assert smoothed["ap"] == (2.0, 2)  # no hint: latest value
        storage.put_scalar("loss", 100.0)
        assert storage.latest_with_smoothing_hint(window_size=3)["loss"] == (9.0, 2)
        with pytest.raises(ValueError, match="one hint"):
            storage.put_scalar("ap", 1.0, smoothing_hint=True)
        with pytest.raises(KeyError, match="nothing"):
            storage.history("nothing")


def test_name_scopes_prefix_and_nest():
    with EventStorage() as storage:
        with storage.name_scope("rpn"):
            storage.put_scalar("num_pos", 3)
            with storage.name_scope("level2/"):
                storage.put_scalar("num_pos", 1)
        storage.put_scalar("num_pos", 7)
        assert storage.latest() == {"rpn/num_pos": (3.0, 0), "rpn/level2/num_pos": (1.0, 0), "num_pos": (7.0, 0)}


def test_json_writer_writes_each_iteration_once_and_every_scalar(tmp_path):
    path = tmp_path / "metrics.json"
    writer = JSONWriter(str(path), window_size=2)
    with EventStorage() as storage:
        for i in range(4):
            storage.iter = i
            storage.put_scalar("loss", float(i))
            if i == 2:
                storage.put_scalar("bbox/AP", 50.0, smoothing_hint=False)
            if i % 2 == 1:
                writer.write()
        writer.write()  # nothing new: nothing written
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert records == [
        {"iteration": 1, "loss": 0.5},
        {"iteration": 2, "bbox/AP": 50.0},  # put at iteration 2 and written under it
        {"iteration": 3, "loss": 2.5},
    ]


def test_json_writer_of_a_resumed_run_drops_the_interrupted_runs_later_lines(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text(
        json.dumps({"iteration": 4, "loss": 1.0})
        + "\n"
        + json.dumps({"iteration": 9, "loss": 2.0})
        + "\n"
        + json.dumps({"iteration": 14, "loss": 3.0})
        + "\n"
        + '{"iteration": 19, "lo'  # the process was killed while writing
    )
    writer = JSONWriter(str(path))
    with EventStorage(start_iter=9) as storage:
        storage.iter = 14
        storage.put_scalar("loss", 6.0, smoothing_hint=False)
        writer.write()
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert records == [{"iteration": 4, "loss": 1.0}, {"iteration": 14, "loss": 6.0}]

    with EventStorage(start_iter=0) as storage:  # a run from scratch starts a new file
        storage.put_scalar("loss", 7.0, smoothing_hint=False)
        JSONWriter(str(path)).write()
    assert [json.loads(line) for line in path.read_text().splitlines()] == [{"iteration": 0, "loss": 7.0}]


def test_tensorboard_writer_writes_scalars_images_and_histograms(tmp_path):
    writer = TensorboardXWriter(str(tmp_path), window_size=1)
    values = torch.arange(100, dtype=torch.float32)
    with EventStorage() as storage:
        storage.put_scalar("loss", 0.5)
        storage.put_image("inputs", torch.rand(3, 8, 6))
        storage.put_histogram("weights", values, bins=10)
        writer.write()
        assert storage.vis_data == [] and storage.histograms == []  # consumed
        storage.iter = 1
        storage.put_scalar("loss", 0.25)
        writer.write()
    writer.close()
    accumulator = EventAccumulator(str(tmp_path), size_guidance={"images": 0, "histograms": 0})
    accumulator.Reload()
    assert [(e.step, e.value) for e in accumulator.Scalars("loss")] == [(0, 0.5), (1, 0.25)]
    (image,) = accumulator.Images("inputs")
    assert (image.width, image.height) == (6, 8)
    (histogram,) = accumulator.Histograms("weights")
    assert histogram.histogram_value.num == 100
    assert histogram.histogram_value.sum == pytest.approx(values.sum().item())
    assert histogram.histogram_value.bucket == pytest.approx([10.0] * 10)


def test_put_image_rejects_wrong_layout():
    with EventStorage() as storage:
        with pytest.raises(ValueError, match="C, H, W"):
            storage.put_image("bad", torch.rand(8, 6, 3))


def test_tensorboard_of_a_resumed_run_supersedes_the_interrupted_runs_later_steps(tmp_path):
    previous_file_second = None
    for start, stop, value in [(0, 10, 1.0), (5, 8, 2.0)]:  # interrupted at 9, resumed from 5
        # TensorBoard reads event files in name order: the creation second, then a per-process counter
        # compared as text ("10" < "9"). A real resume is a later process; start it in a later second.
        while previous_file_second is not None and int(time.time()) <= previous_file_second:
            time.sleep(0.05)
        writer = TensorboardXWriter(str(tmp_path), window_size=1)
        previous_file_second = int(time.time())
        with EventStorage(start_iter=start) as storage:
            for i in range(start, stop):
                storage.iter = i
                storage.put_scalar("loss", value)
                writer.write()
        writer.close()
    accumulator = EventAccumulator(str(tmp_path))
    accumulator.Reload()
    assert [(e.step, e.value) for e in accumulator.Scalars("loss")] == [(i, 1.0) for i in range(5)] + [
        (i, 2.0) for i in range(5, 8)
    ]
