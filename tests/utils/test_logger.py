import logging

from detlib.utils.logger import log_every_n, log_every_n_seconds, log_first_n, setup_logger


def test_rank_zero_logs_to_console_and_file_other_ranks_to_their_own_file(tmp_path, capsys):
    main = setup_logger(str(tmp_path), distributed_rank=0, name="detlib_test_main", color=False, abbrev_name="tm")
    main.getChild("sub").info("hello from rank 0")
    other = setup_logger(str(tmp_path), distributed_rank=1, name="detlib_test_other")
    other.warning("hello from rank 1")
    out = capsys.readouterr().out
    assert "tm.sub INFO: hello from rank 0" in out  # the console abbreviates the logger name
    assert "hello from rank 1" not in out
    assert "detlib_test_main.sub INFO: hello from rank 0" in (tmp_path / "log.txt").read_text()
    assert "hello from rank 1" in (tmp_path / "log.txt.rank1").read_text()
    again = setup_logger(str(tmp_path), distributed_rank=0, name="detlib_test_main", color=False, abbrev_name="tm")
    assert again is main
    assert len(main.handlers) == 2  # a second call adds no duplicate handlers


def test_rate_limited_logging(caplog, monkeypatch):
    with caplog.at_level(logging.INFO):
        for _ in range(5):
            log_first_n(logging.INFO, "first", n=2, name="t.first")
        for _ in range(7):
            log_every_n(logging.INFO, "every", n=3, name="t.every")
        clock = iter([0.0, 0.5, 1.2, 1.3, 2.5])
        monkeypatch.setattr("detlib.utils.logger.time.perf_counter", lambda: next(clock))
        for _ in range(5):
            log_every_n_seconds(logging.INFO, "seconds", n=1.0, name="t.seconds")
    counts = {name: sum(r.name == name for r in caplog.records) for name in ("t.first", "t.every", "t.seconds")}
    assert counts == {"t.first": 2, "t.every": 3, "t.seconds": 3}  # every: calls 1, 4, 7; seconds: 0, 1.2, 2.5
