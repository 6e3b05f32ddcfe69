"""The data engine on a Ray cluster (the optional extra ``ecso-edge[ray]``).

The input becomes a Ray dataset; ECSO runs in a pool of Ray Data actors (``map_batches`` with an
``ActorPoolStrategy``), each of which loads the model once and then takes records one at a time. The
driver consumes the results as they stream in and hands them to the single-process engine's writer,
so the trace, the SFT JSON, resume and exactly-once behave exactly as without Ray. Ray does all the
scheduling, retrying and placement; nothing here schedules work itself. Ray is imported only when a
Ray run starts, so the rest of ecso-edge works without it."""

from __future__ import annotations

import importlib
import json
import logging
import os
import socket
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Optional, Union

import numpy as np

from ._core import EcsoConfig
from .data_engine import DataEngineSummary, plan_run, process_record, record_entries
from .datasets import Record
from . import errors
from .errors import ConfigError, EcsoError, ModelLoadError
from .session import Model, Session
from .shipped import tiny_pair

__all__ = ["run_data_engine_ray", "EcsoActor", "import_ray"]

PathLike = Union[str, "os.PathLike[str]"]
FATAL = "fatal_error"  # the key of an actor's entry that carries an error which stops the run


def import_ray() -> Any:
    """The `ray` module with Ray Data loaded, or ConfigError telling how to install it."""
    try:
        ray = importlib.import_module("ray")
        importlib.import_module("ray.data")
    except ImportError as e:
        raise ConfigError(f"the Ray data engine needs Ray Data ({e}): pip install 'ecso-edge[ray]'") from e
    return ray


class EcsoActor:
    """One Ray Data actor: loads the model once in its constructor, then runs every record of the
    batches it is given through the single-process engine's `process_record`."""

    def __init__(
        self,
        model_path: str,
        mmproj_path: str,
        model_kwargs: dict[str, Any],
        config: dict[str, Any],
        image_root: str,
        max_tokens: int,
    ) -> None:
        # which process made an entry: the first thing to look at when one node misbehaves
        self._worker = f"{socket.gethostname()}:{os.getpid()}"
        self._image_root = Path(image_root)
        self._max_tokens = max_tokens
        self._session: Optional[Session] = None
        self._load_error: Optional[EcsoError] = None
        try:
            self._session = Session(Model(model_path, mmproj_path, **model_kwargs), EcsoConfig(**config))
        except EcsoError as e:
            # reported with the first record (see __call__): Ray would bury it in an ActorDiedError
            self._load_error = e

    def __call__(self, batch: dict[str, "np.ndarray[Any, Any]"]) -> dict[str, "np.ndarray[Any, Any]"]:
        entries = []
        for id_, image, query in zip(batch["id"], batch["image"], batch["query"]):
            record = Record(id=str(id_), image=str(image), query=str(query))
            try:
                if self._session is None:
                    raise self._load_error or EcsoError("the model was not loaded")
                entry = process_record(self._session, record, self._image_root, self._max_tokens)
            except EcsoError as e:
                # an error that stops the run, as in the single-process engine: it travels as data
                # so that the driver raises it as the same typed error with its own message
                entry = {"id": record.id, FATAL: type(e).__name__, "error": str(e)}
            entry["worker"] = self._worker
            # one JSON string column: trace entries have optional and nested fields that Arrow
            # would otherwise have to reconcile across blocks
            entries.append(json.dumps(entry, ensure_ascii=False))
        return {"entry": np.array(entries, dtype=object)}


def run_data_engine_ray(
    records: Iterable[Record],
    out: Path,
    *,
    model_path: Optional[PathLike] = None,
    mmproj_path: Optional[PathLike] = None,
    model_kwargs: Optional[Mapping[str, Any]] = None,
    config: Optional[EcsoConfig] = None,
    actors: int = 2,
    cpus_per_actor: float = 1.0,
    gpus_per_actor: float = 0.0,
    image_root: Optional[Path] = None,
    resume: bool = False,
    limit: Optional[int] = None,
    max_tokens: int = 512,
    ray_address: Optional[str] = None,
    progress: bool = True,
) -> DataEngineSummary:
    """Runs ECSO over `records` on Ray; writes `out` (LLaVA SFT JSON) and `out`.trace.jsonl exactly
    as `run_data_engine` does (SFT examples in the order records finish rather than input order).

    `actors` Ray Data actors each load ``Model(model_path, mmproj_path, **model_kwargs)`` once
    (without paths: the shipped tiny pair) and reserve `cpus_per_actor` CPUs and `gpus_per_actor`
    GPUs (fractions share a GPU; offload with ``model_kwargs={"n_gpu_layers": -1}``). `n_threads`
    defaults to the CPUs reserved. If Ray is already initialised that cluster is used; otherwise
    ``ray.init(address=ray_address)`` connects (``"auto"``: the cluster of this node; None:
    ``RAY_ADDRESS``, this node's cluster, or a new local one) and is shut down at the end. Model files and images
    must be readable at the same paths on every node (relative paths are taken from this process's
    working directory), and ecso-edge installed there."""
    if actors < 1:
        raise ConfigError(f"actors must be at least 1, got {actors}")
    if cpus_per_actor <= 0 or gpus_per_actor < 0:
        raise ConfigError(f"cpus_per_actor must be > 0 and gpus_per_actor >= 0, got {cpus_per_actor}, {gpus_per_actor}")
    if (model_path is None) != (mmproj_path is None):
        raise ConfigError("model_path and mmproj_path go together (without both, the shipped tiny pair runs)")
    ray = import_ray()
    text, mmproj = (Path(model_path), Path(mmproj_path)) if model_path and mmproj_path else tiny_pair()
    for path in (text, mmproj):
        # an actor that cannot load its model would fail only after the cluster has started it
        if not path.is_file():
            raise ModelLoadError(f"model file '{path}' not found (it must exist at this path on every Ray node)")
    kwargs = dict(model_kwargs or {})
    if kwargs.get("n_threads") is None:
        kwargs["n_threads"] = max(1, int(cpus_per_actor))
    actor_args = dict(
        model_path=str(text.resolve()),
        mmproj_path=str(mmproj.resolve()),
        model_kwargs=kwargs,
        config=(config if config is not None else EcsoConfig()).to_dict(),
        image_root=str((image_root if image_root is not None else Path.cwd()).resolve()),
        max_tokens=max_tokens,
    )

    plan = plan_run(records, out, resume=resume, limit=limit)
    if not plan.todo:
        return record_entries(plan, iter(()), out, progress=progress)
    started = not ray.is_initialized()
    if started:
        ray.init(address=ray_address, logging_level=logging.WARNING)
    try:
        entries = _stream_entries(ray, plan.todo, actor_args, actors, cpus_per_actor, gpus_per_actor, progress)
        return record_entries(plan, entries, out, progress=progress)
    finally:
        if started:
            ray.shutdown()


def _stream_entries(
    ray: Any,
    todo: list[Record],
    actor_args: dict[str, Any],
    actors: int,
    cpus_per_actor: float,
    gpus_per_actor: float,
    progress: bool,
) -> Iterator[dict[str, Any]]:
    """The trace entries in the order the actors finish them."""
    context = ray.data.DataContext.get_current()
    ray_bars = context.enable_progress_bars
    if progress:
        # ours shows records/s and the unsafe count; Ray's bars would fight it for the terminal
        context.enable_progress_bars = False
    try:
        dataset = ray.data.from_items([{"id": r.id, "image": r.image, "query": r.query} for r in todo])
        results = dataset.map_batches(
            EcsoActor,
            fn_constructor_kwargs=actor_args,
            batch_size=1,  # each record's entry reaches the driver (and the disk) as soon as it is done
            compute=ray.data.ActorPoolStrategy(size=actors),
            num_cpus=cpus_per_actor,
            num_gpus=gpus_per_actor,
        )
        for row in results.iter_rows():
            entry: dict[str, Any] = json.loads(row["entry"])
            if FATAL in entry:
                raise _typed_error(entry)
            yield entry
    finally:
        context.enable_progress_bars = ray_bars


def _typed_error(entry: dict[str, Any]) -> EcsoError:
    """The ecso_edge exception an actor reported, with the record and the worker named."""
    cls = getattr(errors, str(entry[FATAL]), None)
    if not (isinstance(cls, type) and issubclass(cls, EcsoError)):
        cls = EcsoError
    return cls(f"record '{entry['id']}' on Ray worker {entry['worker']}: {entry['error']}")
