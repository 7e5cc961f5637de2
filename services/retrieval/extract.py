"""Text out of uploaded files: plain text, Markdown (kept as written) and PDF."""

from __future__ import annotations

import io
import logging
from pathlib import PurePath

from services.common.errors import InvalidArgument

logger = logging.getLogger(__name__)

PLAIN, MARKDOWN, PDF = "text/plain", "text/markdown", "application/pdf"
_BY_EXTENSION = {
    ".txt": PLAIN,
    ".text": PLAIN,
    ".md": MARKDOWN,
    ".markdown": MARKDOWN,
    ".pdf": PDF,
}
SUPPORTED = ", ".join(sorted(_BY_EXTENSION))


def media_type_of(filename: str, declared: str = "") -> str:
    """The declared type when we parse it, else the one the file name's extension implies."""
    declared = declared.split(";")[0].strip().lower()
    if declared in (PLAIN, MARKDOWN, PDF):
        return declared
    media_type = _BY_EXTENSION.get(PurePath(filename).suffix.lower())
    if media_type is None:
        raise InvalidArgument(
            f"Cannot read `{filename}`: supported files are {SUPPORTED}.", param="file"
        )
    return media_type


def extract_text(content: bytes, media_type: str, filename: str) -> str:
    if media_type == PDF:
        text = _pdf_text(content, filename)
    else:
        try:
            text = content.decode("utf-8-sig")
        except UnicodeDecodeError as error:
            raise InvalidArgument(f"`{filename}` is not UTF-8 text.", param="file") from error
    if not text.strip():
        raise InvalidArgument(f"`{filename}` holds no text.", param="file")
    return text


def _pdf_text(content: bytes, filename: str) -> str:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(io.BytesIO(content))
        pages = [page.extract_text() or "" for page in reader.pages]
    except (PdfReadError, ValueError, KeyError) as error:
        raise InvalidArgument(
            f"`{filename}` is not a readable PDF: {error}", param="file"
        ) from error
    # Pages are separated like paragraphs, so chunks prefer to end at page breaks.
    return "\n\n".join(page.strip() for page in pages if page.strip())
