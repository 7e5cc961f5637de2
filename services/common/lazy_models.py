"""Models loaded on first use, shared by the model services."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class LazyModels(Generic[T]):
    """Loads each model once, on first request; concurrent first requests share one load.

    A failed load is forgotten, so a later request tries again.
    """

    def __init__(self, load: Callable[[str], Awaitable[T]]):
        self._load = load
        self._models: dict[str, T] = {}
        self._loading: dict[str, asyncio.Task[T]] = {}

    @property
    def loaded(self) -> dict[str, T]:
        return dict(self._models)

    async def get(self, name: str) -> T:
        if name in self._models:
            return self._models[name]
        if name not in self._loading:
            self._loading[name] = asyncio.ensure_future(self._load(name))
        task = self._loading[name]
        try:
            # Shielded: one caller going away must not cancel the load the others wait on.
            model = await asyncio.shield(task)
        finally:
            if task.done():
                self._loading.pop(name, None)
        self._models[name] = model
        return model
