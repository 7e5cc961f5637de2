"""glibc malloc settings for the generation process.

The int8 cache's prefill graph allocates its dequantized past anew on every run (its session
has no memory arena: see onnx_model._int8_prefill_session). With glibc's defaults each such
buffer (MiBs) is mapped fresh and unmapped when freed, so every run faulted its pages in again:
20 prompt tokens after a 2048-token cached prefix took 129 ms, 83-96 ms with the settings
below (an arena: 92 ms, but it held 850 MiB more after one 7.5k-token prompt; these, 190 MiB).
"""

from __future__ import annotations

import ctypes
import logging

logger = logging.getLogger(__name__)

# mallopt() parameters, from glibc's malloc.h.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# Buffers up to this size come from the heap and return to it when freed...
MMAP_THRESHOLD = 64 << 20
# ...which keeps up to this much freed memory for the next run instead of giving it back.
TRIM_THRESHOLD = 256 << 20


def keep_freed_buffers() -> None:
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        logger.info("not glibc: malloc left as it is")
        return
    if not (
        mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    ):
        logger.warning("mallopt refused the buffer settings")
