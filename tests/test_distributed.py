"""Multi-process mode on CPU with gloo: the same loop, the same maths."""
import os
import shutil
import socket
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from dvclust import metrics
from dvclust.config import Config
from dvclust.training import Dist
from dvclust.training import DVCModel, assign_all


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _errors(stderr: str) -> str:
    """stderr without DDP's repeated grad-stride warnings, which would push the error out of view."""
    noise = ("stride", "bucket_view", "grad.sizes", "return Variable._execution_engine")
    return "\n".join(ln for ln in stderr.splitlines() if not any(w in ln for w in noise))[-4000:]


def _torchrun_fit(*args: str) -> subprocess.CompletedProcess:
    """`dvclust fit ARGS -q` under torchrun with 2 CPU processes of one thread each."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
           "--master-port", str(_free_port()), "-m", "dvclust", "fit", *args, "-q"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))


def _worker(rank, world, port, images, state, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist = Dist.from_env("cpu")
    model = DVCModel(images.shape[1:], Config(n_clusters=4, latent_dim=3))
    model.load_state_dict(state)
    q, p = assign_all(model, images, dist, "fp32")
    # the shard-local frequencies must sum to the global ones
    rows = dist.shard(len(images))
    out[rank] = (p.numpy(), q.numpy(), rows.start, rows.stop)
    torch.distributed.destroy_process_group()


def test_distributed_target_equals_single_process():
    rng = np.random.default_rng(0)
    images = rng.random((37, 1, 12, 12)).astype(np.float32)  # 37: ranks get unequal shards
    torch.manual_seed(0)
    model = DVCModel((1, 12, 12), Config(n_clusters=4, latent_dim=3))
    model.head.centers.data.normal_()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    q1, p1 = assign_all(model, images, Dist(), "fp32")

    manager = mp.Manager()
    out = manager.dict()
    mp.spawn(_worker, args=(2, _free_port(), images, state, out), nprocs=2, join=True)
    assert out[0][2:] == (0, 19) and out[1][2:] == (19, 37)
    for rank in (0, 1):
        np.testing.assert_allclose(out[rank][1], q1.numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(out[rank][0], p1.numpy(), rtol=1e-5, atol=1e-6)


def _blobs_npz(path, n=300):
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 0.1, size=(n, 16, 16)).astype(np.float32)
    y = np.arange(n) % 3
    for i in range(n):
        r = 2 + 5 * y[i]
        x[i, r:r + 4, r:r + 4] = 0.9
    np.savez(path, images=x, labels=y)
    return y


@pytest.mark.parametrize("method", ["dvc", "dec"])  # DEC: a decoder without gradients under DDP
def test_torchrun_two_processes_end_to_end(tmp_path, method):
    n = 300
    y = _blobs_npz(tmp_path / "blobs.npz", n)

    def fit():
        return _torchrun_fit(str(tmp_path / "blobs.npz"), "-k", "3", "--out", str(tmp_path / "run"),
                             "--set", "pretrain_epochs=4", "--set", "cluster_epochs=3",
                             "--set", "batch_size=32", "--set", "kmeans_n_init=2", "--method", method)

    p = fit()
    if p.returncode != 0 and "terminate called without an active exception" in p.stderr:
        # Known, unexplained: in 2 of 3 fresh CI venvs (2026-11-28) one gloo rank aborted in C++
        # right after the first DDP backward, with no Python error; never in 40 runs otherwise.
        # One retry, reported; a second failure, or any other failure, fails the test.
        warnings.warn(f"torchrun rank aborted in gloo; retrying once:\n{_errors(p.stderr)[-1500:]}")
        shutil.rmtree(tmp_path / "run", ignore_errors=True)
        p = fit()
    assert p.returncode == 0, _errors(p.stderr)
    assert p.stdout.count("clustered 300 images") == 1  # rank 0 alone reports
    import csv
    with open(tmp_path / "run" / "labels.csv") as f:
        labels = [int(r["cluster"]) for r in csv.DictReader(f)]
    assert len(labels) == n
    assert metrics.acc(y, labels) > 0.9


def test_torchrun_pixel_baseline_is_refused_with_one_line(tmp_path):
    """k-means has no network to spread over processes; every rank would redo it."""
    np.savez(tmp_path / "x.npz", images=np.random.default_rng(0).random((20, 8, 8), np.float32))
    p = _torchrun_fit(str(tmp_path / "x.npz"), "-k", "2", "--out", str(tmp_path / "run"),
                      "--method", "kmeans")
    assert p.returncode != 0
    assert "method 'kmeans' trains no network and runs in one process" in p.stderr
    assert "/dvclust/" not in p.stderr  # no traceback through our code (torchrun prints its own)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def _two_nodes(data, out, port, *extra):
    """Two torchrun "nodes" on this machine (separate agents, --nnodes 2, one process each),
    meeting at a c10d rendezvous on 127.0.0.1 as the README's multi-node command does."""
    procs = []
    for node in (0, 1):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node",
               "1", "--rdzv-backend", "c10d", "--rdzv-id", f"dvctest-{port}",
               "--rdzv-endpoint", f"127.0.0.1:{port}", "-m", "dvclust", "fit",
               str(data), "-k", "3", "--out", str(out), "-q", "--set", "pretrain_epochs=6",
               "--set", "cluster_epochs=6", "--set", "batch_size=32", "--set", "kmeans_n_init=2",
               "--set", "tol=0", *extra]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True, start_new_session=True,
                                      env=dict(os.environ, OMP_NUM_THREADS="1")))
    return procs


def _kill_nodes(procs):
    """SIGKILL each node's whole process group (agent and workers)."""
    import signal

    for p in procs:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _finish(procs, timeout=300):
    """Wait for both nodes; on a timeout kill both process groups (they run in sessions of their
    own and would go on loading the machine) and fail with what both printed."""
    import time

    deadline = time.time() + timeout
    try:
        outs = [p.communicate(timeout=max(1.0, deadline - time.time())) for p in procs]
    except subprocess.TimeoutExpired:
        _kill_nodes(procs)
        errs = [_errors(p.communicate()[1])[-1500:] for p in procs]
        raise AssertionError(f"the nodes did not finish within {timeout} s:\n" +
                             "\n".join(f"node {i}: {e}" for i, e in enumerate(errs))) from None
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, _errors(err)
    return outs


def _labels(run):
    import csv
    with open(run / "labels.csv") as f:
        return [int(r["cluster"]) for r in csv.DictReader(f)]


def _losses(run):
    """The history's per-epoch losses: equal only if every epoch replayed bit for bit."""
    import csv
    with open(run / "history.csv") as f:
        return [(r["phase"], r["epoch"], r["loss"], r["recon"], r["kl"], r["clustering"])
                for r in csv.DictReader(f) if r["loss"]]


def _process_tree(pid):
    """pid and every process below it (from /proc): a torchrun agent and its workers."""
    children = {}
    for d in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = open(f"/proc/{d}/stat").read()
        except OSError:
            continue
        children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(d))
    tree, todo = [], [pid]
    while todo:
        tree.append(todo.pop())
        todo += children.get(tree[-1], [])
    return tree


def _wait_for_rows(run, phase, n, procs, timeout=300):
    """Until the history (written with each epoch's checkpoint) has n rows of `phase`."""
    import time
    t0 = time.time()
    while time.time() - t0 < timeout:
        hist = run / "history.csv"
        if hist.exists() and sum(ln.startswith(phase + ",") for ln in hist.read_text().splitlines()) >= n:
            return
        if any(p.poll() is not None for p in procs):
            raise AssertionError("a node ended early: " + _errors(procs[0].communicate()[1]))
        time.sleep(0.02)
    raise AssertionError(f"no {phase} epoch {n} within {timeout} s")


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds a node's processes through /proc")
def test_two_nodes_fit_and_resume_after_losing_a_node(tmp_path):
    """Multi-node for real (issue 19): two torchrun agents, each its own node, fit end to end
    with the quality of one process. Then node 1 (its agent and its worker) is killed in phase 3;
    node 0 fails rather than hangs, and `--resume` on both replays the rest bit for bit: the
    labels and every epoch's losses of the uninterrupted run."""
    import signal

    y = _blobs_npz(tmp_path / "b.npz", n=1200)  # epochs long enough to kill a node mid-run
    _finish(_two_nodes(tmp_path / "b.npz", tmp_path / "whole", _free_port()))
    whole = tmp_path / "whole"
    assert metrics.acc(y, _labels(whole)) > 0.9

    procs = _two_nodes(tmp_path / "b.npz", tmp_path / "cut", _free_port())
    _wait_for_rows(tmp_path / "cut", "cluster", 2, procs)  # targets and two epochs checkpointed
    for pid in _process_tree(procs[1].pid):
        os.kill(pid, signal.SIGKILL)
    try:
        procs[0].communicate(timeout=120)  # its next collective fails
    except subprocess.TimeoutExpired:
        os.killpg(procs[0].pid, signal.SIGKILL)
        procs[0].communicate()
        raise AssertionError("node 0 hung for 120 s after node 1 was lost")
    procs[1].communicate()
    assert procs[0].returncode != 0 and not (tmp_path / "cut" / "labels.csv").exists()
    assert len(_losses(tmp_path / "cut")) < len(_losses(whole))  # cut mid-run

    _finish(_two_nodes(tmp_path / "b.npz", tmp_path / "cut", _free_port(), "--resume"))
    assert _losses(tmp_path / "cut") == _losses(whole)
    assert _labels(tmp_path / "cut") == _labels(whole)


def test_a_restart_resumes_only_the_run_its_own_job_started(tmp_path, monkeypatch):
    """torchrun --max-restarts reruns the command without --resume: a worker of the job that
    started the run resumes it; any other fit still needs --resume. (End to end this hangs on
    torchrun's re-rendezvous in some trials on a 2-core machine, README "Scaling out": not a
    CI test.)"""
    from dvclust.rundir import JOB_FILE, restarted_job

    (tmp_path / "checkpoint.pt").write_bytes(b"")
    (tmp_path / JOB_FILE).write_text("job-a")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-a")
    assert restarted_job(tmp_path)
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-b")  # another job: --resume is the user's call
    assert not restarted_job(tmp_path)
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "none")   # a job without an id of its own
    (tmp_path / JOB_FILE).write_text("none")
    assert not restarted_job(tmp_path)
    monkeypatch.delenv("RANK")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-a")
    (tmp_path / JOB_FILE).write_text("job-a")
    assert not restarted_job(tmp_path)                    # not under torchrun
