"""A terminal progress bar for model imports, fed by (stage, fraction) events: the registry
shows it while it imports the defaults, the command line while ImportModel streams."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from tqdm import tqdm


@contextmanager
def progress_bar(title: str) -> Iterator[Callable[[str, float], None]]:
    """Yields `update(stage, fraction)`; the bar goes to stderr, so stdout stays parseable."""
    with tqdm(
        total=100, desc=title, unit="%", bar_format="{l_bar}{bar}| {elapsed}{postfix}"
    ) as bar:

        def update(stage: str, fraction: float) -> None:
            bar.set_postfix_str(stage)
            bar.update(round(fraction * 100) - bar.n)

        yield update
