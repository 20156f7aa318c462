"""``kaggle-kit features --engine ray``: the same features as the local engine, in the same shards and files; a
worker that dies mid-shard is restarted and the run completes; a killed driver's command resumes; an unreachable
cluster or a node without the data folder is one line.

Ray starts slowly (10-30 s here), so one test cluster (``ray start --head`` on this machine, 2 CPUs, no dashboard,
no usage statistics) serves the whole module and is stopped, with every process it started, at the end. One test
runs the default mode, where the kit starts and stops a Ray of its own."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import SQUEEZENET_H5, make_competition
from kaggle_kit.artifacts import KitError
from kaggle_kit.backbones import get_backbone, resolve_weights
from kaggle_kit.cli import app
from kaggle_kit.data import discover
from kaggle_kit.features import FeatureSettings, extract_features
from kaggle_kit.ray_engine import RaySettings, ShardWorker, plan_workers
from kaggle_kit.store import load_features

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
# Nothing beyond this machine: no usage statistics, no dashboard (ray start --include-dashboard false below).
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_DISABLE_DOCKER_CPU_WARNING": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
ARGS = ["--backbone", "squeezenet", "--weights", str(SQUEEZENET_H5), "--image-size", "227", "--tta", "flip",
        "--batch-size", "4", "--shard-size", "4", "--quiet"]
N_PER_CLASS, N_TEST = 20, 12  # 52 photos: 13 shards of 4

runner = CliRunner()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def settings(ray: RaySettings | None = None) -> FeatureSettings:
    spec = get_backbone("squeezenet")
    return FeatureSettings(backbone=spec, weights=resolve_weights(spec, str(SQUEEZENET_H5)), image_size=227,
                           tta="flip", batch_size=4, shard_size=4, ray=ray)


@pytest.fixture(scope="module")
def comp(tmp_path_factory) -> Path:
    return make_competition(tmp_path_factory.mktemp("ray") / "comp", n_per_class=N_PER_CLASS, n_test=N_TEST)


@pytest.fixture(scope="module")
def reference(comp, tmp_path_factory):
    """The local engine's features of ``comp``: what every Ray run must reproduce."""
    out = tmp_path_factory.mktemp("local") / "squeezenet"
    extract_features(discover(comp), out, settings(), progress=False)
    return load_features(out)


@pytest.fixture(scope="module")
def ray_cluster():
    """``HOST:PORT`` of a Ray cluster on this machine (2 CPUs) with tests/ on its workers' path; stopped at the end."""
    port = free_port()
    temp = tempfile.mkdtemp(prefix="kkray-")  # short: Ray's socket paths live under it
    env = {**os.environ, **RAY_ENV,
           "PYTHONPATH": os.pathsep.join([str(REPO), str(TESTS), os.environ.get("PYTHONPATH", "")])}
    ray_bin = Path(sys.executable).parent / "ray"
    log = open(Path(temp) / "ray-start.log", "w+")
    proc = subprocess.Popen(
        [str(ray_bin), "start", "--head", "--block", "--port", str(port), "--num-cpus", "2", "--num-gpus", "0",
         "--include-dashboard", "false", "--disable-usage-stats", "--node-ip-address", "127.0.0.1",
         "--temp-dir", temp],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while "Ray runtime started" not in Path(log.name).read_text():
            assert proc.poll() is None, Path(log.name).read_text()[-3000:]
            assert time.monotonic() < deadline, "the test Ray cluster did not start within 180 s"
            time.sleep(0.5)
        yield f"127.0.0.1:{port}"
    finally:
        # 'ray start --block' started everything in its own session: end exactly that process group.
        for sig, wait in ((signal.SIGTERM, 8), (signal.SIGKILL, 5)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue
        deadline = time.monotonic() + 10
        while _group_alive(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # anything of the group still there (e.g. Ray's agents)
        except ProcessLookupError:
            pass
        log.close()
        import shutil

        shutil.rmtree(temp, ignore_errors=True)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def assert_same_features(result_dir: Path, reference) -> None:
    got = load_features(result_dir)
    assert got.train_ids == reference.train_ids and got.test_ids == reference.test_ids
    assert got.key == reference.key
    for logical in ("train", "test", "train_flip", "test_flip"):
        np.testing.assert_allclose(got.arrays[logical], reference.arrays[logical], rtol=1e-5, atol=1e-5)
    assert not (result_dir / ".partial").exists()


# ------------------------------------------------------------------------------------------- fast: no Ray
def test_importing_the_cli_and_the_engine_loads_no_ray():
    code = ("import sys, kaggle_kit.cli, kaggle_kit.features, kaggle_kit.ray_engine; "
            "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"


def test_an_unreachable_cluster_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    data = make_competition(tmp_path / "comp", n_per_class=3, n_test=2, empty=True)
    monkeypatch.chdir(tmp_path)
    port = free_port()  # nothing listens there
    t0 = time.monotonic()
    result = runner.invoke(app, ["features", *ARGS, "--data", str(data), "--engine", "ray", "--address",
                                 f"127.0.0.1:{port}"])
    assert time.monotonic() - t0 < 30, "an unreachable head must be reported at once, not after Ray's retries"
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: cannot reach a Ray cluster at 127.0.0.1:{port} (")
    assert result.stderr.count("\n") == 1
    assert "'ray start --head'" in result.stderr and "leave out --address" in result.stderr
    assert not list(tmp_path.glob("experiments/default/features/*/manifest.json"))

    bad = runner.invoke(app, ["features", *ARGS, "--data", str(data), "--engine", "ray", "--address", "head-node"])
    assert bad.exit_code == 2 and bad.stderr.count("\n") == 1 and "is not HOST:PORT" in bad.stderr
    local = runner.invoke(app, ["features", *ARGS, "--data", str(data), "--address", f"127.0.0.1:{port}"])
    assert local.exit_code == 2
    assert local.stderr == "error: --address, --cpus-per-worker and --gpus-per-worker apply to --engine ray only\n"


def test_plan_workers_fills_the_cluster_and_refuses_what_cannot_be_placed():
    cpus16_gpus4 = {"CPU": 16.0, "GPU": 4.0, "memory": 1e11}
    assert plan_workers(cpus16_gpus4, RaySettings()) == 16
    assert plan_workers(cpus16_gpus4, RaySettings(cpus_per_worker=4)) == 4
    assert plan_workers(cpus16_gpus4, RaySettings(cpus_per_worker=2, gpus_per_worker=1)) == 4  # GPUs bind
    assert plan_workers(cpus16_gpus4, RaySettings(cpus_per_worker=2, gpus_per_worker=0.5)) == 8  # shared GPUs
    assert plan_workers(cpus16_gpus4, RaySettings(workers=3, cpus_per_worker=2, gpus_per_worker=1)) == 3
    with pytest.raises(KitError, match=r"5 Ray worker\(s\) x 1 GPU need more than the cluster's 4 GPUs"):
        plan_workers(cpus16_gpus4, RaySettings(workers=5, gpus_per_worker=1))
    with pytest.raises(KitError, match=r"3 Ray worker\(s\) x 1 CPU need more than the cluster's 2 CPUs"):
        plan_workers({"CPU": 2.0}, RaySettings(workers=3))
    with pytest.raises(KitError, match="need more than the cluster's 0 GPUs"):
        plan_workers({"CPU": 8.0}, RaySettings(gpus_per_worker=1))
    with pytest.raises(KitError, match="--cpus-per-worker must be above 0"):
        RaySettings(cpus_per_worker=0)


def test_a_worker_refuses_a_node_without_the_data_folder_or_with_another_weights_file(tmp_path):
    spec = get_backbone("squeezenet")
    common = dict(backbone=spec, image_size=227, batch_size=4, tta="none", decode_threads=1)
    worker = ShardWorker(weights=resolve_weights(spec, "none"), data_root=str(tmp_path / "nowhere"), **common)
    error = worker.info()["error"]
    assert error == (f"the Ray worker on node {socket.gethostname()} cannot start: the data folder "
                     f"{tmp_path / 'nowhere'} is not there; every node must see it at the same path")
    with pytest.raises(KitError, match="cannot start: the data folder"):
        worker.extract([str(tmp_path / "a.jpg")])

    weights = tmp_path / "w.h5"
    weights.write_bytes(b"driver's file")
    choice = resolve_weights(spec, str(weights))
    weights.write_bytes(b"this node's file")  # the same path, another file
    worker = ShardWorker(weights=choice, data_root=str(tmp_path), **common)
    assert worker.info()["error"].endswith(f"the weights file {weights} differs from the driver's; copy the same "
                                           "file there")


@pytest.mark.slow  # runs a Keras backbone over photos
def test_a_worker_computes_every_asked_layer_side_by_side_and_refuses_an_unknown_one(small_comp):
    """The worker Ray runs, called here: --layer reaches each worker's model, and its shard carries the widths."""
    from kaggle_kit.engine import build_predictor

    spec = get_backbone("efficientnet_lite0")
    common = dict(backbone=spec, image_size=32, batch_size=4, tta="flip", decode_threads=1,
                  data_root=str(small_comp), weights=resolve_weights(spec, "none"))
    worker = ShardWorker(layers=("block2", None), views=("rot90",), **common)
    assert worker.info()["error"] is None and worker.info()["widths"] == [24, 1280]
    paths = [str(p) for p in discover(small_comp).train_paths()[:6]]
    arrays = worker.extract(paths)["arrays"]
    assert arrays["feats"].shape == arrays["flip"].shape == (6, 24 + 1280) and arrays["widths"].tolist() == [24, 1280]
    assert arrays["rot90"].shape == arrays["rot90_flip"].shape == (6, 24 + 1280)  # --views reach the workers
    alone = build_predictor(spec, image_size=32, weights=common["weights"], batch_size=4, layers=("block2",))
    from kaggle_kit.images import decode_image

    photos = np.stack([decode_image(p, 32) for p in paths])
    np.testing.assert_allclose(arrays["feats"][:, :24], alone.predict(photos)[:6], rtol=1e-5, atol=1e-6)
    from kaggle_kit.views import apply_view

    np.testing.assert_allclose(arrays["rot90"][:, :24], alone.predict(apply_view(photos, "rot90"))[:6], rtol=1e-5,
                               atol=1e-6)
    bad = ShardWorker(layers=("block9",), **common)
    assert "cannot start: unknown layer 'block9' of efficientnet_lite0" in bad.info()["error"]
    assert "\n" not in bad.info()["error"]
    pooled = ShardWorker(layers=("block2",), pool="avgmax", **common)  # --pool reaches the workers
    assert pooled.info()["widths"] == [48]
    both = build_predictor(spec, image_size=32, weights=common["weights"], batch_size=4, layers=("block2",),
                           pool="avgmax")
    np.testing.assert_allclose(pooled.extract(paths)["arrays"]["feats"], both.predict(photos)[:6], rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(both.predict(photos)[:6, :24], alone.predict(photos)[:6], rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------- slow: real Ray runs
@pytest.mark.slow
def test_ray_engine_started_here_equals_the_local_engine(comp, reference, tmp_path):
    import ray

    out = tmp_path / "squeezenet"
    result = extract_features(discover(comp), out, settings(RaySettings(workers=2)), progress=False)
    assert not ray.is_initialized(), "the Ray the kit started for the run is stopped"
    fs, cluster = result.features, result.features.cluster
    assert (fs.engine, cluster.workers, cluster.address, cluster.worker_restarts) == ("ray", 2, "local", 0)
    assert fs.manifest["images_computed"] == 2 * N_PER_CLASS + N_TEST
    assert len(cluster.shard_seconds) == 13 and all(s > 0 for s in cluster.shard_seconds)
    m = fs.manifest  # the figures are the manifest's keys of the same names (store.ClusterRun.fields)
    assert (m["engine"], m["workers"], m["ray_address"], len(m["shard_seconds"])) == ("ray", 2, "local", 13)
    assert_same_features(out, reference)
    # A feature set does not depend on its engine: the local engine takes it as its own cache.
    again = extract_features(discover(comp), out, settings(), progress=False)
    assert again.cached


@pytest.mark.slow
def test_a_worker_that_dies_mid_shard_is_restarted_and_the_run_completes(comp, reference, ray_cluster, tmp_path):
    marker = tmp_path / "died"
    fault = {"worker_process_setup_hook": "ray_faults.die_once_on_image",
             "env_vars": {"KK_FAULT_IMAGE": "dog.3.jpg", "KK_FAULT_MARKER": str(marker)}}
    out = tmp_path / "squeezenet"
    result = extract_features(discover(comp), out, settings(RaySettings(address=ray_cluster, workers=2,
                                                                        runtime_env=fault)), progress=False)
    assert marker.exists(), "the fault was never injected: nothing was tested"
    fs, cluster = result.features, result.features.cluster
    assert cluster.worker_restarts == 1 and cluster.workers == 2 and cluster.address == ray_cluster
    assert fs.manifest["images_computed"] == 2 * N_PER_CLASS + N_TEST  # every shard, the lost one included
    assert fs.unreadable("train") == fs.unreadable("test") == frozenset()
    assert_same_features(out, reference)


@pytest.mark.slow
def test_sigkill_of_the_driver_then_the_same_command_resumes(comp, reference, ray_cluster, tmp_path):
    command = [sys.executable, "-m", "kaggle_kit", "features", *ARGS, "--data", str(comp), "--engine", "ray",
               "--address", ray_cluster, "--workers", "2"]
    env = {**os.environ, **RAY_ENV}
    out = tmp_path / "experiments" / "default" / "features" / "squeezenet"
    proc = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 300
    while len(list(out.glob(".partial/*/*.npz"))) < 2:
        assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read()[-2000:]}"
        assert time.monotonic() < deadline, "the run never wrote two shards"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "manifest.json").exists() and not list(out.glob("*.npy"))
    finished = len(list(out.glob(".partial/*/*.npz")))
    assert 2 <= finished < 13

    again = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"on 2 Ray worker(s) at {ray_cluster}" in again.stdout
    fs = load_features(out)
    assert fs.manifest["images_computed"] <= 2 * N_PER_CLASS + N_TEST - 4 * finished  # finished shards reused
    assert fs.engine == "ray"
    assert_same_features(out, reference)
