"""Where torchrun and SLURM put a process, read from their variables; failing to join is a named error
within the timeout, not a hang."""

import datetime
import socket
import time

import pytest

from detlib.engine import RendezvousError, launch
from detlib.engine.launch import ClusterPlacement, detect_cluster_placement, first_slurm_host, slurm_tasks_on_node

LAUNCHER_VARIABLES = (
    "RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "LOCAL_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "TORCHELASTIC_RUN_ID",
    "TORCHELASTIC_USE_AGENT_STORE",
    "TORCHELASTIC_RESTART_COUNT",
    "SLURM_PROCID",
    "SLURM_NTASKS",
    "SLURM_LOCALID",
    "SLURM_NODEID",
    "SLURM_TASKS_PER_NODE",
    "SLURM_NTASKS_PER_NODE",
    "SLURM_JOB_NODELIST",
    "SLURM_JOB_ID",
)


@pytest.fixture
def clean_env(monkeypatch):
    for name in LAUNCHER_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_torchrun_variables():
    env = {
        "RANK": "5",
        "LOCAL_RANK": "1",
        "WORLD_SIZE": "8",
        "LOCAL_WORLD_SIZE": "4",
        "MASTER_ADDR": "node7",
        "MASTER_PORT": "29500",
        "TORCHELASTIC_RUN_ID": "job",
    }
    assert detect_cluster_placement(env) == ClusterPlacement("torchrun", 5, 8, 1, 4, "node7", 29500)


def test_slurm_variables_with_rendezvous_on_the_first_node():
    env = {
        "SLURM_PROCID": "6",
        "SLURM_NTASKS": "8",
        "SLURM_LOCALID": "2",
        "SLURM_NODEID": "1",
        "SLURM_TASKS_PER_NODE": "4(x2)",
        "SLURM_JOB_NODELIST": "gpu[007-008],cpu1",
        "SLURM_JOB_ID": "123456",
    }
    placement = detect_cluster_placement(env)
    assert placement == ClusterPlacement("SLURM", 6, 8, 2, 4, "gpu007", 20000 + 123456 % 20000)
    # MASTER_ADDR / MASTER_PORT, when the job script sets them, win over the derived ones.
    env.update(MASTER_ADDR="10.0.0.1", MASTER_PORT="1234")
    placement = detect_cluster_placement(env)
    assert (placement.master_addr, placement.master_port) == ("10.0.0.1", 1234)


@pytest.mark.parametrize(
    "nodelist, first",
    [
        ("node1", "node1"),
        ("a[3-5]", "a3"),
        ("gpu[12,14-15]", "gpu12"),
        ("r[01-02]n[1-4],x", "r01n1"),
        ("h1,h[2-3]", "h1"),
        ("rack-[9-10]-ib", "rack-9-ib"),
    ],
)
def test_first_slurm_host(nodelist, first):
    assert first_slurm_host(nodelist) == first


def test_unreadable_node_list_is_named():
    with pytest.raises(RuntimeError, match="SLURM_JOB_NODELIST='a\\[1-2'"):
        first_slurm_host("a[1-2")


def test_slurm_tasks_per_node():
    assert [slurm_tasks_on_node("4(x2),2,3(x1)", n) for n in range(4)] == [4, 4, 2, 3]
    with pytest.raises(RuntimeError, match="SLURM_NODEID=4"):
        slurm_tasks_on_node("4(x2),2,3(x1)", 4)
    with pytest.raises(RuntimeError, match="SLURM_TASKS_PER_NODE"):
        slurm_tasks_on_node("four", 0)


def test_no_launcher_or_one_slurm_task_means_spawning_ourselves():
    assert detect_cluster_placement({}) is None
    assert detect_cluster_placement({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}) is None


def test_missing_or_bad_variable_is_named():
    with pytest.raises(RuntimeError, match="MASTER_PORT is not set"):
        detect_cluster_placement({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2"})
    with pytest.raises(RuntimeError, match="SLURM_PROCID='x'"):
        detect_cluster_placement(
            {
                "SLURM_PROCID": "x",
                "SLURM_NTASKS": "2",
                "SLURM_NTASKS_PER_NODE": "2",
                "SLURM_JOB_NODELIST": "n1",
                "SLURM_JOB_ID": "1",
                "SLURM_LOCALID": "0",
            }
        )


def _unused_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("launcher", ["torchrun", "slurm"])
@pytest.mark.parametrize("rank", [0, 1])
def test_unreachable_peers_fail_within_the_timeout_naming_address_and_timeout(clean_env, launcher, rank):
    """Rank 1 finds no rendezvous host; rank 0 hosts it but no peer ever comes."""
    port = _unused_port()
    if launcher == "torchrun":
        variables = {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"}
    else:
        variables = {
            "SLURM_PROCID": str(rank),
            "SLURM_LOCALID": str(rank),
            "SLURM_NTASKS": "2",
            "SLURM_NTASKS_PER_NODE": "2",
        }
    for name, value in dict(variables, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)).items():
        clean_env.setenv(name, value)
    ran = []
    start = time.monotonic()
    expected = rf"Rank {rank} of 2 .* at 127\.0\.0\.1:{port} within the timeout of 2 s"
    with pytest.raises(RendezvousError, match=expected):
        launch(lambda: ran.append(1), 1, timeout=datetime.timedelta(seconds=2))
    assert not ran and time.monotonic() - start < 60


def _leave_with(code: int, marker_prefix: str) -> None:
    import atexit

    from detlib.utils import comm

    marker = f"{marker_prefix}.{comm.get_rank()}"  # the rank now: at exit the process group is gone
    atexit.register(lambda: open(marker, "w").close())
    if code:
        raise SystemExit(code)


def test_spawned_workers_run_their_exit_handlers_and_pass_on_exit_codes(tmp_path):
    from detlib.engine import PREEMPTED_EXIT_CODE

    # Workers leave through os._exit (see launch._exit_worker); Python's exit handlers must still run first.
    launch(_leave_with, num_gpus_per_machine=2, args=(0, str(tmp_path / "clean")))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clean.0", "clean.1"]
    with pytest.raises(SystemExit) as stop:
        launch(_leave_with, num_gpus_per_machine=2, args=(PREEMPTED_EXIT_CODE, str(tmp_path / "preempted")))
    assert stop.value.code == PREEMPTED_EXIT_CODE
    assert (tmp_path / "preempted.0").exists() and (tmp_path / "preempted.1").exists()
