"""The Ray engine of ``kaggle-kit features --engine ray``: the kit's shards, computed by workers on a Ray cluster.

What stays local: everything but the arithmetic. ``features.extract_features`` lists the unfinished shards
(``engine.pending_shards``), and after this engine has computed them it assembles the arrays, writes the manifest
(through kaggle_kit.store, with this engine's figures as a ``store.ClusterRun``) and cleans up exactly as for the
local engine; a feature set does not depend on the engine that made it (same key,
same files), so a run of one engine resumes from or reuses the shards of the other.

Design decisions:

- **Actors, not Ray Data.** Each worker is an actor (:class:`ShardWorker`) that builds the backbone once, in
  ``__init__``, then turns one shard (a list of image paths) after another into feature arrays, decoding with the
  local engine's own loop (``engine.predict_batches``, with the run's ``--decoder``). Ray Data's ``map_batches``
  with a callable class would build the model once per actor too, but its unit is a block, not the kit's shard:
  resume, the shard files and the per-shard retry would have to be rebuilt on top of it; it keeps rows in order
  only with ``preserve_order``; its streaming executor reserves CPUs for its own read and transfer operators
  (felt on small machines); and its read stage would decode images in separate tasks and move pixels through
  the object store, possibly across nodes. With actors, one call is one shard, workers receive paths and send
  back features, and nothing else moves.
- **The driver writes the shards** (``store.save_shard``, atomically), as each result arrives. The workers only
  read the data folder; the experiment folder, its lock and the one writer of the shard format stay on the driver's
  machine, so the experiment need not be on shared storage (and no worker renames files across a network file
  system). A result is small: shard_size x width float32, 8 MiB for 1,024 images at 2,048 features.
- **Retries are Ray's.** Actors are created with ``max_restarts`` and ``max_task_retries``: a worker whose process
  dies (killed, out of memory, a node lost) is restarted, rebuilds its model, and the shards it held are run
  again. An exception raised by the kit's own code (a missing data folder on a node, a model error) is not retried:
  it would fail the same way again, so it ends the run with one line. Finished shards are always kept: the same
  command resumes.
- **Reaching the cluster.** ``--address HOST:PORT`` (or ``$RAY_ADDRESS``) joins a running cluster, after a TCP
  check of the address: Ray itself keeps retrying an unreachable head for minutes, the kit says so at once. No
  address starts Ray on this machine for the run (no dashboard, no usage statistics) and stops it afterwards.

Each node needs the same Python environment (kaggle-kit, Keras and its backend) and the data folder at the same
path; a ``--weights`` file too (its hash is checked on the worker); with ``--decoder dali``, DALI and a GPU
(checked on the worker). See README.md, "Running on a Ray cluster".
"""

from __future__ import annotations

import collections
import contextlib
import math
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np

from kaggle_kit.artifacts import KitError
from kaggle_kit.engine import EngineRun, Shard, build_predictor, predict_batches
from kaggle_kit.store import DEFAULT_POOL, ClusterRun, save_shard, shard_path

if TYPE_CHECKING:
    from kaggle_kit.features import FeatureSettings

INFLIGHT_PER_WORKER = 2  # shards queued on each worker: the next one starts while the driver writes the last
READY_TIMEOUT_S = 900.0  # workers must have built their model by then (a cluster short of free resources)
CONNECT_TIMEOUT_S = 10.0
INSTALL_HINT = "pip install 'kaggle-kit[ray]'"


@dataclass(frozen=True)
class RaySettings:
    """Where and how wide the Ray engine runs; none of this changes the features.

    ``address``: None (``$RAY_ADDRESS`` if set, else Ray started on this machine for the run), 'auto' (the cluster
    this machine belongs to), 'HOST:PORT' (a head node's GCS port, 6379 by default) or 'ray://HOST:PORT' (Ray
    Client). ``workers``: actors, each with its own model (None: as many as the cluster's CPUs, or GPUs with
    ``gpus_per_worker``, allow). ``cpus_per_worker`` is also the worker's number of decoder threads.
    ``max_retries``: restarts of a worker whose process died, and re-runs of each shard it held.
    ``runtime_env``: merged into the workers' Ray runtime environment (Python API only).
    """

    address: str | None = None
    workers: int | None = None
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    max_retries: int = 3
    runtime_env: dict | None = field(default=None, compare=False)

    def __post_init__(self):
        if self.workers is not None and self.workers < 1:
            raise KitError(f"--workers must be at least 1 with --engine ray, got {self.workers}", code=2)
        if not self.cpus_per_worker > 0:
            raise KitError(f"--cpus-per-worker must be above 0, got {self.cpus_per_worker:g}", code=2)
        if self.gpus_per_worker < 0:
            raise KitError(f"--gpus-per-worker must be 0 or more, got {self.gpus_per_worker:g}", code=2)
        if self.max_retries < 0:
            raise KitError(f"max_retries must be 0 or more, got {self.max_retries}", code=2)


# --------------------------------------------------------------------------------------------- the worker
class ShardWorker:
    """One Ray worker: builds the backbone once, then computes shards. A plain class (Ray wraps it at run time).

    A failure to start (no data folder on this node, another weights file, a missing package) is kept and
    reported by :meth:`info` and :meth:`extract` as one line naming the node: a worker that raised in ``__init__``
    would be a dead actor with a traceback, and restarting it would fail the same way.
    """

    def __init__(self, *, backbone, weights, image_size: int, batch_size: int, tta: str, decode_threads: int,
                 data_root: str, decoder: str = "opencv", layers: tuple = (None,), views: tuple = (),
                 pool: str = DEFAULT_POOL):
        self.settings = {"width": backbone.width, "image_size": image_size, "batch_size": batch_size, "tta": tta,
                         "workers": decode_threads, "decoder": decoder, "views": tuple(views)}
        self.facts = {"pid": os.getpid(), "node": socket.gethostname()}
        self.error = None
        self.predictor = None
        try:
            _check_node(data_root, weights)
            from kaggle_kit.decoders import check_decoder

            check_decoder(decoder)  # DALI and a GPU on this node, for --decoder dali
            self.predictor = build_predictor(backbone, image_size=image_size, weights=weights,
                                             batch_size=batch_size, layers=layers, pool=pool)  # compiled
            self.settings["width"] = self.predictor.width
            self.facts.update(widths=list(self.predictor.widths), build_seconds=self.predictor.build_seconds,
                              warmup_seconds=self.predictor.warmup_seconds,
                              keras_backend=self.predictor.keras_backend, keras_version=self.predictor.keras_version)
        except Exception as exc:  # noqa: BLE001 - reported by info()/extract() as one line
            detail = str(exc) if isinstance(exc, KitError) else f"{type(exc).__name__}: {exc}"
            self.error = f"the Ray worker on node {self.facts['node']} cannot start: {detail}"

    def info(self) -> dict:
        """pid, node, each layer's width, build and warm-up seconds, Keras backend and version, and ``error``
        (None when ready)."""
        return {**self.facts, "error": self.error}

    def extract(self, paths: list[str]) -> dict:
        """Features of one shard: {'arrays': {'feats', 'ok', 'widths'[, 'flip', each view's]}, 'seconds', 'pid'},
        rows in ``paths`` order (the shard's arrays: :func:`kaggle_kit.store.save_shard`)."""
        if self.error:
            raise KitError(self.error)
        t0 = time.perf_counter()
        parts = list(predict_batches(self.predictor.predict, paths, **self.settings))
        arrays = {key: np.concatenate([feats[key] for feats, _ in parts]) for key in parts[0][0]}  # every view
        arrays.update(ok=np.concatenate([ok for _, ok in parts]), widths=np.asarray(self.predictor.widths,
                                                                                   dtype=np.int64))
        return {"arrays": arrays, "seconds": time.perf_counter() - t0, "pid": os.getpid()}


def _check_node(data_root: str, weights) -> None:
    """Refuse a node that cannot see the data folder or holds another weights file than the driver hashed.

    subtle: without this check a node lacking the data folder would 'decode' every image as unreadable, and the
    run would end with zero features and a warning per image instead of one clear error.
    """
    from kaggle_kit.artifacts import sha256_file

    if not Path(data_root).is_dir():
        raise KitError(f"the data folder {data_root} is not there; every node must see it at the same path")
    if weights.kind == "file":
        if not weights.path.is_file():
            raise KitError(f"the weights file {weights.path} is not there; every node must see it at the same path")
        if f"sha256:{sha256_file(weights.path)}" != weights.identity:
            raise KitError(f"the weights file {weights.path} differs from the driver's; copy the same file there")


# --------------------------------------------------------------------------------------------- the driver
def _import_ray():
    try:
        import ray
    except ImportError:
        raise KitError(f"--engine ray needs Ray, which is not installed; {INSTALL_HINT}", code=2) from None
    return ray


def check_reachable(address: str, *, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Raise a one-line KitError unless something accepts TCP connections at ``address`` ('[ray://]HOST:PORT')."""
    target = address.removeprefix("ray://")
    host, sep, port = target.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise KitError(f"--address {address!r} is not HOST:PORT (e.g. 10.0.0.5:6379), 'auto' or ray://HOST:PORT",
                       code=2)
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise KitError(f"cannot reach a Ray cluster at {address} ({reason}); start its head there with "
                       "'ray start --head', or leave out --address to run Ray on this machine") from None


@contextlib.contextmanager
def ray_session(settings: RaySettings) -> Iterator[tuple[object, str]]:
    """Yield ``(ray, where)`` connected to the cluster of ``settings`` (see :class:`RaySettings`); disconnect at the
    end, which also stops a Ray that this call started. A session the caller already opened is used as it is."""
    import logging

    ray = _import_ray()
    if ray.is_initialized():
        yield ray, "the caller's Ray session"
        return
    address = settings.address or os.environ.get("RAY_ADDRESS") or None
    if address and address != "auto":
        check_reachable(address)
    if address is None:
        # A Ray started for one run reports nothing anywhere (users can still opt in by setting the variable).
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        # subtle: address None would make Ray join a cluster that 'ray start' left on this machine; 'local' always
        # starts a new one. Worker output goes to Ray's log files (log_to_driver=False): errors come back as
        # exceptions, and a terminal full of prefixed TensorFlow start-up lines from every worker helps no one.
        ray.init(address=address or "local", include_dashboard=False if address is None else None,
                 logging_level=logging.ERROR if address is None else logging.WARNING, log_to_driver=False,
                 namespace="kaggle-kit", runtime_env=settings.runtime_env)
    except Exception as exc:  # noqa: BLE001 - Ray raises many kinds (connection, authentication, version): one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise KitError(f"cannot connect to Ray at {address or 'this machine'}: {first}") from None
    try:
        yield ray, address or "local"
    finally:
        ray.shutdown()


def plan_workers(resources: dict, settings: RaySettings) -> int:
    """How many workers to start on a cluster with ``resources`` (``ray.cluster_resources()``); KitError if the
    requested ones could never all be placed."""
    cpus, gpus = resources.get("CPU", 0.0), resources.get("GPU", 0.0)
    fit = math.floor(cpus / settings.cpus_per_worker + 1e-9)
    if settings.gpus_per_worker > 0:
        fit = min(fit, math.floor(gpus / settings.gpus_per_worker + 1e-9))
    n = settings.workers or max(fit, 1)
    if n * settings.cpus_per_worker > cpus + 1e-9:
        raise KitError(f"{n} Ray worker(s) x {settings.cpus_per_worker:g} CPU need more than the cluster's "
                       f"{cpus:g} CPUs; lower --workers or --cpus-per-worker (fractions are allowed)", code=2)
    if settings.gpus_per_worker > 0 and n * settings.gpus_per_worker > gpus + 1e-9:
        raise KitError(f"{n} Ray worker(s) x {settings.gpus_per_worker:g} GPU need more than the cluster's "
                       f"{gpus:g} GPUs; lower --workers or --gpus-per-worker", code=2)
    return n


def _worker_env(cpus_per_worker: float) -> dict[str, str]:
    """Environment variables of the workers (one on another node does not inherit the driver's): the driver's
    Keras backend and log level, and TensorFlow's compute threads limited to the CPUs the worker reserved.

    subtle: TensorFlow sizes its thread pool by the machine's cores, not by Ray's reservation (Ray limits only
    OMP_NUM_THREADS), so N workers on one machine would each run a pool as wide as the machine.
    """
    env = {"TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"),
           "TF_NUM_INTRAOP_THREADS": os.environ.get("TF_NUM_INTRAOP_THREADS", str(max(1, math.ceil(cpus_per_worker))))}
    if os.environ.get("KERAS_BACKEND"):
        env["KERAS_BACKEND"] = os.environ["KERAS_BACKEND"]
    return env


def _last_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


def _wait_ready(ray, actors: list, settings: RaySettings, resources: dict) -> list[dict]:
    """Block until every worker has built its model; return their :meth:`ShardWorker.info`."""
    refs = [a.info.remote() for a in actors]
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        ready, pending = ray.wait(refs, num_returns=len(refs), timeout=1.0)
        if not pending:
            break
        if time.monotonic() > deadline:
            raise KitError(
                f"{len(pending)} of {len(actors)} Ray workers did not start within {READY_TIMEOUT_S:.0f} s (each needs "
                f"{settings.cpus_per_worker:g} CPU and {settings.gpus_per_worker:g} GPU; the cluster has "
                f"{resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} GPUs in all, some may be busy); "
                "lower --workers or free the cluster")
    try:
        infos = ray.get(refs)
    except ray.exceptions.RayError as exc:
        raise KitError(f"a Ray worker died while starting: {_last_line(exc)}") from None
    for info in infos:
        if info["error"]:
            raise KitError(info["error"])
    versions = {(i["keras_backend"], i["keras_version"]) for i in infos}
    if len(versions) > 1:
        raise KitError(f"the Ray workers run different Keras backends or versions {sorted(versions)}; install the "
                       "same environment on every node")
    return infos


def run_on_ray(settings: FeatureSettings, paths: dict[str, list[Path]], partial: Path, todo: list[Shard], *,
               data_root: Path, layers: tuple = (None,),
               on_images: Callable[[int], None] = lambda n: None) -> EngineRun:
    """Compute the shards in ``todo`` (``engine.pending_shards``) on Ray workers and write each as it arrives.

    ``layers``: the layers each worker's model outputs side by side (``engine.build_predictor``); an unknown
    layer stops the run when the workers start, as one line.

    ``settings``: the ``features.FeatureSettings`` with ``settings.ray`` set. Returns an ``engine.EngineRun``
    whose ``seconds`` run from the moment every worker has built its model to the last shard written.
    """
    rs: RaySettings = settings.ray
    if not todo:  # every shard finished by an interrupted run: nothing to start a cluster for
        return EngineRun(engine="ray", images=0, seconds=0.0)
    t_start = time.perf_counter()
    with ray_session(rs) as (ray, where):
        resources = ray.cluster_resources()
        n_workers = min(plan_workers(resources, rs), len(todo))
        worker_cls = ray.remote(ShardWorker).options(
            num_cpus=rs.cpus_per_worker, num_gpus=rs.gpus_per_worker, max_restarts=rs.max_retries,
            max_task_retries=rs.max_retries, runtime_env={"env_vars": _worker_env(rs.cpus_per_worker)},
        )
        actors = [
            worker_cls.remote(backbone=settings.backbone, weights=settings.weights, image_size=settings.image_size,
                              batch_size=settings.batch_size, tta=settings.tta,
                              decode_threads=max(1, math.ceil(rs.cpus_per_worker)), data_root=str(data_root),
                              decoder=settings.decoder, layers=tuple(layers), views=settings.views,
                              pool=settings.pool)
            for _ in range(n_workers)
        ]
        try:
            infos = _wait_ready(ray, actors, rs, resources)
            width = sum(infos[0]["widths"])
            startup = time.perf_counter() - t_start
            pids = [{info["pid"]} for info in infos]  # every process each worker ran in: restarts are the extras
            queue = collections.deque(todo)
            inflight: dict = {}
            shard_seconds, write_seconds = [], 0.0

            def submit(worker: int) -> None:
                split, index, a, b = shard = queue.popleft()
                ref = actors[worker].extract.remote([str(p) for p in paths[split][a:b]])
                inflight[ref] = (worker, shard)

            t0 = time.perf_counter()
            for _ in range(INFLIGHT_PER_WORKER):
                for worker in range(n_workers):
                    if queue:
                        submit(worker)
            n_images = 0
            while inflight:
                done, _ = ray.wait(list(inflight), num_returns=1, timeout=1.0)
                for ref in done:
                    worker, (split, index, a, b) = inflight.pop(ref)
                    try:
                        result = ray.get(ref)
                    except ray.exceptions.RayTaskError as exc:  # the kit's own code raised: not retried
                        cause = exc.cause if exc.cause is not None else exc
                        detail = str(cause) if isinstance(cause, KitError) else _last_line(exc)
                        raise KitError(f"shard {split}-{index} failed on a Ray worker: {detail}") from None
                    except ray.exceptions.RayError as exc:
                        raise KitError(
                            f"shard {split}-{index} failed: its Ray worker died {rs.max_retries + 1} times "
                            f"({_last_line(exc)}); finished shards are kept, run the same command to resume"
                        ) from None
                    t_write = time.perf_counter()
                    arrays = result["arrays"]
                    if arrays["feats"].shape != (b - a, width):
                        raise KitError(f"shard {split}-{index} came back with shape {arrays['feats'].shape}, "
                                       f"expected ({b - a}, {width})")
                    save_shard(shard_path(partial, split, index), arrays)
                    write_seconds += time.perf_counter() - t_write
                    shard_seconds.append(round(result["seconds"], 3))
                    pids[worker].add(result["pid"])
                    n_images += b - a
                    on_images(b - a)
                    if queue:
                        submit(worker)
            seconds = time.perf_counter() - t0
        finally:
            for actor in actors:
                ray.kill(actor)
    cluster = ClusterRun(
        address=where,
        workers=n_workers,
        nodes=len({info["node"] for info in infos}),
        cpus_per_worker=rs.cpus_per_worker,
        gpus_per_worker=rs.gpus_per_worker,
        worker_restarts=sum(len(p) - 1 for p in pids),
        startup_seconds=round(startup, 2),
        shard_seconds=tuple(shard_seconds),
        shard_write_seconds=round(write_seconds, 2),
    )
    return EngineRun(engine="ray", images=n_images, seconds=seconds, widths=tuple(infos[0]["widths"]),
                     build_seconds=max(info["build_seconds"] for info in infos),
                     warmup_seconds=max(info["warmup_seconds"] for info in infos),
                     keras_backend=infos[0]["keras_backend"], keras_version=infos[0]["keras_version"],
                     cluster=cluster)
