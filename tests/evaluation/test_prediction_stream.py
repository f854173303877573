"""PredictionStream: the result file written image by image holds what `merge` gives."""

import json

from detlib.evaluation.prediction_stream import PredictionStream


def test_write_merged_writes_the_merged_array_and_nothing_when_empty(tmp_path):
    stream = PredictionStream(str(tmp_path), "results")
    path = tmp_path / "merged.json"
    stream.write_merged(str(path), distributed=False)
    assert not path.exists()  # nothing appended

    stream.append(1, json.dumps([{"a": 1}, {"a": 2}]))
    stream.append(2, "[]")
    stream.append(1, json.dumps([{"a": 9}]))  # processed twice: counted once
    stream.append("x", json.dumps([{"b": 3}]))
    stream.write_merged(str(path), distributed=False)
    image_ids, merged = stream.merge(distributed=False)
    assert image_ids == [1, 2, "x"]
    assert json.loads(path.read_text()) == json.loads(merged) == [{"a": 1}, {"a": 2}, {"b": 3}]
