"""Run units of work on a pool of Ray actors (``pip install 'hallugraph[distributed]'``).

Each actor builds one worker object with ``factory()`` (it loads the model once) and then runs
units on it one after another; the driver hands a new unit to whichever actor finishes first.
Only small summaries come back through Ray: the workers write their tensors to the run
directory themselves (:mod:`hallugraph.extract.units` says how a unit is marked done).

An actor that dies (killed, out of memory) is restarted by Ray, which loads the model again
and retries the unit it was running (``retries`` times); a unit never marked done is simply
redone, so a retry or a rerun gives the same result. An exception raised by the worker's code
is not retried: the units in flight finish, then :class:`UnitFailed` is raised.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

from hallugraph.config import MALLOC_ENV, heap_env

__all__ = ["RayPool", "UnitFailed", "import_ray"]


class UnitFailed(RuntimeError):
    """A unit of work raised an error (the units already done are kept)."""


def import_ray() -> Any:
    """The ``ray`` module, or an error saying how to install it."""
    try:
        import ray
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "--workers and --ray-address need Ray: pip install 'hallugraph[distributed]'"
        ) from err
    return ray


class _Worker:
    """The Ray actor: one worker object, methods called by name."""

    def __init__(self, factory: Callable[[], Any], threads: int) -> None:
        import torch

        torch.set_num_threads(max(1, threads))
        self.obj = factory()

    def call(self, method: str, *args: Any) -> Any:
        return getattr(self.obj, method)(*args)

    def pid(self) -> int:
        return os.getpid()


class RayPool:
    """``workers`` actors, each holding ``factory()``, on a local Ray started for the pool (when
    Ray is not running yet and no ``address`` is given) or on the cluster at ``address``.

    ``threads`` CPU threads and ``gpus`` GPUs (a fraction shares one) per actor. Use as a
    context manager: actors are ended on exit, and a Ray started here is shut down.
    """

    def __init__(
        self,
        factory: Callable[[], Any],
        workers: int,
        *,
        address: str | None = None,
        gpus: float = 0.0,
        threads: int = 1,
        retries: int = 3,
    ) -> None:
        if workers < 1:
            raise ValueError(f"--workers must be at least 1, not {workers}")
        if gpus < 0:
            raise ValueError(f"--gpus-per-worker must not be negative, not {gpus}")
        self.ray = ray = import_ray()
        self.started = False
        if address is not None:
            ray.init(address=address)
            self.started = True
        elif not ray.is_initialized():
            ray.init(num_cpus=workers * max(1, threads), include_dashboard=False)
            self.started = True
        options: dict[str, Any] = {}
        env = heap_env()
        if env and (address is not None or os.environ.get(MALLOC_ENV) != env[MALLOC_ENV]):
            # workers start with the fixed mmap threshold (hallugraph.config). Only a value
            # the user set stays in the driver's environment for a local cluster to inherit:
            # the CLI's restarted process removes its own (config.restart_with_bounded_heap)
            options["runtime_env"] = {"env_vars": env}
        actor = ray.remote(_Worker).options(
            num_cpus=max(1, threads),
            num_gpus=gpus,
            max_restarts=retries,
            max_task_retries=retries,
            **options,
        )
        self.actors = [actor.remote(factory, threads) for _ in range(workers)]

    def __enter__(self) -> RayPool:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        for a in self.actors:
            self.ray.kill(a)
        self.actors = []
        if self.started:
            self.ray.shutdown()
            self.started = False

    def call_one(self, method: str, *args: Any) -> Any:
        """``method(*args)`` on the first actor, waited for."""
        try:
            return self.ray.get(self.actors[0].call.remote(method, *args))
        except Exception as err:  # noqa: BLE001 - the worker's error, said in one line
            cause = getattr(err, "cause", None) or err
            raise UnitFailed(
                f"a worker failed ({method}): {type(cause).__name__}: {cause}"
            ) from err

    def run(
        self,
        method: str,
        items: Iterable[Any],
        on_result: Callable[[Any, Any], None],
    ) -> None:
        """``method(item)`` for every item, one at a time per actor, in item order as actors
        free up; ``on_result(item, result)`` in the driver as each one finishes. The first
        failure stops new dispatches; it is raised (:class:`UnitFailed`) once the running
        items have finished."""
        ray = self.ray
        todo = list(items)[::-1]
        running: dict[Any, tuple[Any, Any]] = {}
        failure: tuple[Any, BaseException] | None = None
        idle = list(self.actors)
        while todo or running:
            while idle and todo and failure is None:
                a, item = idle.pop(0), todo.pop()
                running[a.call.remote(method, item)] = (a, item)
            if not running:
                break
            done, _ = ray.wait(list(running), num_returns=1)
            a, item = running.pop(done[0])
            idle.append(a)
            try:
                result = ray.get(done[0])
            except Exception as err:  # noqa: BLE001 - reported with the unit it belongs to
                if failure is None:
                    failure = (item, err)
                continue
            on_result(item, result)
        if failure is not None:
            item, err = failure
            cause = getattr(err, "cause", None) or err
            raise UnitFailed(f"{item}: {type(cause).__name__}: {cause}") from err
