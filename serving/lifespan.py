"""The service's life: open the store and load the artifact at start-up (or keep
retrying while the store is down), follow the store's log in the background, reload on
``SIGHUP`` or ``POST /v1/admin/reload``, and close everything at shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import faiss
from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from threadpoolctl import threadpool_limits

from serving.metrics import Metrics
from serving.settings import Settings
from serving.state import ServingState, StateHolder
from serving.stores import StateStore, StoreUnavailable, open_store

log = logging.getLogger(__name__)

#: builds a state from the artifact over a store (checks the artifact still fits the app)
LoadState = Callable[[StateStore], ServingState]


def _follow(app: FastAPI, stop: threading.Event) -> None:
    """Apply other replicas' writes; after a failure (the store down, the disk full),
    ready again only once a write commits."""
    settings: Settings = app.state.settings
    holder: StateHolder = app.state.holder
    metrics: Metrics = app.state.metrics
    while not stop.wait(settings.sync_interval_s):
        state = holder.current
        if state is None:
            continue
        try:
            n = state.sync()
            if not app.state.store_ok:
                state.store.probe_write()
                log.warning("state store: writes work again; ready")
            app.state.store_ok = True
            if n:
                metrics.inc("replicated_rows", n)
        except StoreUnavailable as exc:
            if app.state.store_ok:
                log.warning("%s", exc)
            app.state.store_ok = False
        except Exception:  # keep following; the next poll retries
            log.exception("state store: sync failed")


#: how long a periodic snapshot waits for the refits queued before it (seconds)
SNAPSHOT_REFIT_WAIT_S = 30.0


def _snapshots(app: FastAPI, stop: threading.Event) -> None:
    """Write a snapshot of the derived state every ``snapshot_interval_s`` when rows were
    applied since the last one; the capture holds the state's lock for shallow copies
    only, and encoding and storing happen outside it."""
    settings: Settings = app.state.settings
    while not stop.wait(settings.snapshot_interval_s):
        state = app.state.holder.current
        if state is None or state.unsnapshotted < max(settings.snapshot_min_rows, 1):
            continue
        try:
            # Fitted effects rather than pending ones (a restore would redo those): the
            # refits queued so far first, within a bound (a busy replica may never idle).
            state.wait_refitted(SNAPSHOT_REFIT_WAIT_S)
            t0 = time.perf_counter()
            if state.write_snapshot():
                app.state.metrics.inc("snapshots_written")
                log.info("state snapshot written in %.2f s", time.perf_counter() - t0)
                archive_after_snapshot(app, state)
        except StoreUnavailable as exc:
            log.warning("state snapshot not written: %s", exc)
        except Exception:  # keep serving; the next interval retries
            log.exception("state snapshot failed")


def archive_after_snapshot(app: FastAPI, state: ServingState) -> int:
    """With ``archive_keep_impressions`` set, move the impressions the snapshot just
    written covers, all but that many newest, to the archive (``serving.log.archive``)."""
    keep = app.state.settings.archive_keep_impressions
    if keep is None:
        return 0
    t0 = time.perf_counter()
    moved = state.archive_old(keep)
    if moved:
        app.state.metrics.inc("impressions_archived", moved)
        log.info("archived %d impressions in %.2f s", moved, time.perf_counter() - t0)
    return moved


def settle_collector() -> None:
    """Keep the state just loaded out of the cyclic collector's full passes: collect what
    is garbage now (a replaced state's cycles), then freeze everything left, which the
    collector then never walks. At 1M stored impressions a full pass over the loaded
    state took 0.14 s (every request waits on it), none with it frozen. Freezing only
    skips the walks: objects freed by their counts still go. After a reload's swap this
    runs again (the old state thawed and collected, the new one frozen);
    ``thaw_collector`` hands everything back at shutdown."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


def thaw_collector() -> None:
    gc.unfreeze()


def _open_and_load(app: FastAPI, load_state: LoadState) -> tuple[StateStore, ServingState]:
    store = open_store(app.state.settings.store_url())
    try:
        loaded = store, load_state(store)
    except BaseException:
        store.close()
        raise
    settle_collector()
    return loaded


def _load_when_reachable(app: FastAPI, load_state: LoadState, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            app.state.store, app.state.holder.current = _open_and_load(app, load_state)
            app.state.store_ok = True
            log.warning("state store reachable again: loaded")
            return
        except StoreUnavailable:
            stop.wait(1.0)


async def reload_now(app: FastAPI, load_state: LoadState) -> dict[str, Any]:
    """Load the artifact again and swap it in atomically."""
    holder: StateHolder = app.state.holder

    def build() -> ServingState:
        # Writes wait on the reload lock, so none lands between building and swapping.
        with holder.reload_lock:
            if app.state.store is None:
                raise StoreUnavailable("state store unavailable: not loaded yet")
            new = load_state(app.state.store)
            holder.current = new
            holder.reloads += 1
        settle_collector()  # the old state's cycles collected, the new one frozen
        return new

    new = await run_in_threadpool(build)
    app.state.metrics.inc("artifact_reloads")
    return {"status": "reloaded", "artifact_version": new.version, "videos": new.num_videos}


def make_lifespan(load_state: LoadState) -> Callable[[FastAPI], Any]:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # One OpenMP thread per FAISS search: requests run concurrently already, and an
        # OpenMP team per single query stalls when cores are busy (HNSW p50 0.14 ms with
        # one thread vs ~8 ms with two under load, measured here).
        faiss.omp_set_num_threads(1)
        # One BLAS thread too, for the same reason: a request's products are small, and
        # OpenBLAS's second thread spins on the core another request needs (server CPU
        # a recommendation over 1M videos: 10.5 -> see docs/scale.md).
        blas = threadpool_limits(1, user_api="blas")
        stop = threading.Event()
        app.state.store_ok = True
        try:
            app.state.store, app.state.holder.current = await run_in_threadpool(
                _open_and_load, app, load_state
            )
        except StoreUnavailable as exc:
            # Start anyway, not ready, and load as soon as the store answers.
            log.warning("%s; retrying every second", exc)
            app.state.store, app.state.store_ok = None, False
            threading.Thread(
                target=_load_when_reachable, args=(app, load_state, stop), daemon=True
            ).start()
        follower = threading.Thread(
            target=_follow, args=(app, stop), name="state-follower", daemon=True
        )
        follower.start()
        if app.state.settings.snapshot_interval_s > 0:
            threading.Thread(
                target=_snapshots, args=(app, stop), name="state-snapshots", daemon=True
            ).start()
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(
                signal.SIGHUP, lambda: asyncio.ensure_future(reload_now(app, load_state))
            )
        try:
            yield
        finally:
            stop.set()
            follower.join(timeout=5)
            app.state.holder.current = None
            if app.state.store is not None:
                app.state.store.close()
            blas.restore_original_limits()
            thaw_collector()

    return lifespan
