"""Where work runs: in this process, on a local Dask cluster, or on an existing Dask scheduler.

``scheduler`` is the one way to choose, shared by the commands (``--scheduler``) and the API:

* ``None``: in this process, one task after another, exactly as without Dask (never imported);
* ``"local:N"``: a ``distributed.LocalCluster`` of N worker processes with one thread each,
  started for the run and closed after it (a laptop or one big machine); ``"local:1"`` is one
  worker *thread* in this process (:data:`LOCAL_ONE_IN_PROCESS`);
* an address such as ``"tcp://host:8786"``: an existing Dask scheduler (``dask scheduler`` plus
  ``dask worker``, dask-jobqueue on an HPC queue, dask-kubernetes, ...); its workers must see the
  files the tasks read and write;
* a connected ``distributed.Client`` (API only; it is used, not closed).

:func:`map_tasks` runs a pure function over a list of items there, results in submission order,
with an optional object computed once per group of items and shared by their tasks (a kernel for
the images of one size, the data of a cross-validation). Dask needs the ``[dask]`` extra
(``pip install 'ntk-completion[dask]'``); every problem with ``scheduler`` is one line, raised
before any work.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import re
import warnings

INSTALL_HINT = "pip install 'ntk-completion[dask]'"
CONNECT_TIMEOUT_S = 10
_ADDRESS = re.compile(r"^(tcp|tls|ucx)://[^\s/:]+(:\d+)?$")
_LOCAL = re.compile(r"^local:(\d+)$")
# local:1 runs its one worker as a thread of this process: a worker process would run the same
# tasks one at a time but add its start (2-12 s), its own import of torch (8-23 s) and its
# close (4.2-4.5 s: the nanny waits for a process holding torch to exit), measured at load
# averages 7.6-8.5 on 2 cores (benchmarks/RESULTS.md, "`local:1` as one worker thread"); what it
# gives up is a crash isolated from the client (a task that kills its process is not retried).
# Two or more workers are processes.
LOCAL_ONE_IN_PROCESS = True


def check_scheduler(scheduler):
    """Return ``scheduler`` unchanged after checking it names a place to run: ``None``,
    ``"local:N"`` (N >= 1), a scheduler address (``tcp://``, ``tls://``, ``ucx://``) or a
    ``distributed.Client``. Raises ``ValueError`` for a bad spelling and ``ImportError`` (with
    the install command) when Dask is needed but not installed."""
    if scheduler is None:
        return None
    if isinstance(scheduler, str):
        local = _LOCAL.match(scheduler.strip())
        if not (local and int(local.group(1)) >= 1) and not _ADDRESS.match(scheduler.strip()):
            raise ValueError(f"scheduler must be local:N (N >= 1 worker processes) or a Dask "
                             f"scheduler address such as tcp://host:8786, got {scheduler!r}")
    try:
        import distributed
    except ImportError as err:
        raise ImportError(f"scheduler={scheduler!r} needs Dask: {INSTALL_HINT}") from err
    if not isinstance(scheduler, (str, distributed.Client)):
        raise ValueError(f"scheduler must be None, 'local:N', an address or a distributed.Client, "
                         f"got {type(scheduler).__name__}")
    return scheduler


@contextlib.contextmanager
def connect(scheduler):
    """Yield a ``distributed.Client`` for ``scheduler`` (``None`` for in-process): a LocalCluster
    for ``local:N`` (one worker thread here for ``local:1``; :func:`_local_config`), a connection
    for an address (``ConnectionError`` in one line when it cannot be reached within
    ``CONNECT_TIMEOUT_S``), a given Client as is. What is opened here is closed on exit."""
    scheduler = check_scheduler(scheduler)
    if scheduler is None:
        yield None
        return
    import dask
    from distributed import Client, LocalCluster
    if isinstance(scheduler, Client):
        yield scheduler
        return
    spec = scheduler.strip()
    local = _LOCAL.match(spec)
    if local:
        workers = int(local.group(1))
        with dask.config.set(_local_config(workers)), warnings.catch_warnings():
            # the scheduler's HTTP server (no dashboard here) moves off a busy port 8787 by itself
            warnings.filterwarnings("ignore", message="Port 8787 is already in use")
            cluster = LocalCluster(n_workers=workers, threads_per_worker=1,
                                   processes=workers > 1 or not LOCAL_ONE_IN_PROCESS,
                                   dashboard_address=None, silence_logs=logging.ERROR)
        with cluster, Client(cluster) as client:
            yield client
        return
    try:
        client = Client(spec, timeout=f"{CONNECT_TIMEOUT_S}s")
    except (OSError, TimeoutError) as err:
        raise ConnectionError(f"cannot reach the Dask scheduler at {spec} within "
                              f"{CONNECT_TIMEOUT_S} s: is `dask scheduler` running there? "
                              f"({type(err).__name__})") from None
    with client:
        yield client


def _local_config(workers) -> dict:
    """Dask settings for a LocalCluster of ``workers`` workers. It has no dashboard, so nothing
    reads its statistical profiler (every 10 ms) or its system monitor (500 ms); with the event
    loop's 20 ms blocking check and work stealing they cost an idle ``local:1`` cluster 0.70 CPU
    s in 10 s, 0.14 with these settings (benchmarks/RESULTS.md). One worker has nobody to steal
    from. Worker processes start with :func:`_worker_environment`."""
    return {"distributed.nanny.pre-spawn-environ": _worker_environment(),
            "distributed.worker.profile.enabled": False,
            "distributed.admin.system-monitor.interval": "5s",
            "distributed.admin.tick.interval": "1s",
            "distributed.scheduler.work-stealing": workers > 1}


def _worker_environment() -> dict:
    """Dask's environment for new worker processes (one BLAS/OpenMP thread each) without its
    ``MALLOC_TRIM_THRESHOLD_=65536``: returning every freed block over 64 KiB to the system makes
    the kernel computation, which allocates large temporaries, 1.7x slower (measured on the
    default kernel at 160 x 160: 3.8 s -> 6.7 s)."""
    import dask
    environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ"))
    environ.pop("MALLOC_TRIM_THRESHOLD_", None)
    return environ


def map_tasks(fn, items, *, scheduler=None, shared=None, prepare=None, group=None,
              on_done=None, return_exceptions=False, progress=False, desc="tasks"):
    """``[fn(item) for item in items]`` run where ``scheduler`` says, in submission order.

    With ``shared``, each task is ``fn(item, shared)``: on Dask the object is scattered to every
    worker once per call; give the ``Future`` of an earlier ``client.scatter`` to reuse it across
    calls (only with that client). With ``prepare``, each task is
    ``fn(item, prepare(group(item)))``: ``prepare`` runs once per distinct key (on a worker; Dask
    hands its result to the workers whose tasks need it, so a group's object is computed once and
    shared), a key of ``None`` gives ``fn(item, None)`` (nothing shared: the task computes its
    own). ``group`` defaults to one group for all items.

    ``on_done(index, item, outcome)`` is called in this process as each task finishes (in
    submission order in-process, in completion order on Dask); ``outcome`` is the result or the
    exception. A failing task raises its exception here (the others are cancelled) unless
    ``return_exceptions``, where its exception takes its place in the list. A task whose worker
    dies is rerun by Dask on another worker, so ``fn`` must be safe to run twice (write its
    outputs atomically). ``progress`` shows a bar on stderr.

    The functions and items must be picklable (module-level functions, dataclasses) when a
    scheduler is given; ``fn`` must be pure for results identical to the in-process run.

    >>> map_tasks(lambda pair: pair[0] * pair[1], [(1, 2), (3, 4)])
    [2, 12]
    >>> map_tasks(lambda x, offset: x + offset, [1, 2, 3], prepare=lambda key: 10 * key,
    ...           group=lambda x: x % 2)
    [11, 2, 13]
    """
    from tqdm.auto import tqdm

    items = list(items)
    if shared is not None and prepare is not None:
        raise ValueError("map_tasks takes shared or prepare, not both")
    if prepare is not None and group is None:
        group = lambda item: 0  # noqa: E731 - one object shared by every task
    with tqdm(total=len(items), desc=desc, unit="task", disable=not progress) as bar:
        def finish(index, outcome):
            bar.update()
            if on_done is not None:
                on_done(index, items[index], outcome)

        with connect(scheduler) as client:
            run = _run_here if client is None else _run_on_dask
            tasks = items
            if shared is not None:
                fn = functools.partial(_with_shared, fn)
                tasks = [(item, shared) for item in items] if client is None else \
                    _paired(client, items, shared)
            return run(client, fn, tasks, prepare, group, finish, return_exceptions)


def _with_shared(fn, pair):
    """``fn(item, shared)`` for ``pair = (item, shared)``."""
    return fn(*pair)


def _paired(client, items, shared):
    """(item, the scattered ``shared``) pairs: Dask resolves a Future inside a task's tuple."""
    from distributed import Future

    ref = shared if isinstance(shared, Future) else scatter(client, shared)
    return [(item, ref) for item in items]


def scatter(client, obj):
    """``obj`` sent to every worker of ``client`` as one object (a tuple or dict too, which
    ``client.scatter`` would split) under a key of its own (not its content's hash, which two
    calls with equal data would share, the first release then losing the second's data)."""
    return client.scatter([obj], broadcast=True, hash=False)[0]


def _run_here(client, fn, items, prepare, group, finish, return_exceptions):
    """In this process, in order; each group's object prepared when first needed."""
    prepared = {}
    results = []
    for index, item in enumerate(items):
        try:
            if prepare is None:
                outcome = fn(item)
            else:
                key = group(item)
                if key is not None and key not in prepared:
                    prepared[key] = _outcome(prepare, key)
                shared = prepared.get(key)
                if isinstance(shared, Exception):
                    raise shared
                outcome = fn(item, shared)
        except Exception as err:
            if not return_exceptions:
                raise
            outcome = err
        results.append(outcome)
        finish(index, outcome)
    return results


def _outcome(fn, *args):
    """``fn(*args)`` or the exception it raised."""
    try:
        return fn(*args)
    except Exception as err:
        return err


def _run_on_dask(client, fn, items, prepare, group, finish, return_exceptions):
    """Submit everything (a group's object as one task its items depend on, released when the
    group's last item is done), gather results as they come."""
    from collections import Counter

    from distributed import as_completed

    keys = [None if prepare is None else group(item) for item in items]
    shared, futures = {}, []
    for item, key in zip(items, keys):
        if prepare is None:
            futures.append(client.submit(fn, item, pure=False))
            continue
        if key is not None and key not in shared:
            shared[key] = client.submit(prepare, key, pure=False)
        futures.append(client.submit(fn, item, shared.get(key), pure=False))
    waiting = Counter(keys)
    position = {future.key: index for index, future in enumerate(futures)}
    results = [None] * len(futures)
    try:
        for future in as_completed(futures):
            index = position[future.key]
            try:
                outcome = future.result()
            except Exception as err:
                if not return_exceptions:
                    raise
                outcome = err
            results[index] = outcome
            waiting[keys[index]] -= 1
            if waiting[keys[index]] == 0:
                shared.pop(keys[index], None)  # the last reference: Dask frees it on the workers
            finish(index, outcome)
    except BaseException:
        client.cancel(futures + list(shared.values()))
        raise
    return results
