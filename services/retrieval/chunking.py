"""Cuts text into overlapping chunks of at most N tokens of the embedding model.

Works on the model's own tokens (with character offsets), so every chunk fits the model.
Chunks end, where the window allows, before a Markdown heading (so a heading stays with its
section), else at a paragraph break, else at a sentence end, else at a word boundary; they
start at a word boundary too, so re-tokenizing a chunk gives its tokens.
"""

from __future__ import annotations

from services.common.domain import TokenSpans

_SENTENCE_ENDS = frozenset(".!?;:。！？")
_PARAGRAPH_RANK = 3
_BEST_RANK = 4
# A break is only looked for in the last part of the window, so chunks stay near full size.
_BREAK_SEARCH_FRACTION = 0.5


def _is_cjk(char: str) -> bool:
    """Ideographs, which tokenizers split one by one, so any of them starts a word."""
    code = ord(char)
    return (
        0x4E00 <= code <= 0x9FFF
        or 0x3400 <= code <= 0x4DBF
        or 0xF900 <= code <= 0xFAFF
        or 0x20000 <= code <= 0x2FA1F
    )


def _word_start(text: str, spans: TokenSpans, token: int) -> bool:
    """Token starts a word: a cut before it leaves both sides tokenized as they were."""
    if token == 0:
        return True
    start = spans.starts[token]
    if start > spans.ends[token - 1]:
        return True  # whitespace (or dropped characters) in between
    before, after = text[start - 1], text[start]
    return not (before.isalnum() and after.isalnum()) or _is_cjk(before) or _is_cjk(after)


def _break_rank(text: str, spans: TokenSpans, token: int) -> int:
    """How good a chunk end is just before `token`: 4 heading, 3 paragraph, 2 sentence, 1 word,
    0 none."""
    gap = text[spans.ends[token - 1] : spans.starts[token]]
    if "\n" in gap and text[spans.starts[token]] == "#":
        return 4
    if "\n\n" in gap:
        return 3
    if not _word_start(text, spans, token):
        return 0
    if text[spans.ends[token - 1] - 1] in _SENTENCE_ENDS or "\n" in gap:
        return 2
    return 1


def _best_end(text: str, spans: TokenSpans, start: int, end: int) -> tuple[int, int]:
    """The best place to end a chunk of tokens start..end, and its rank."""
    lowest = start + max(1, int((end - start) * (1 - _BREAK_SEARCH_FRACTION)))
    best, best_rank = end, 0
    for token in range(end, lowest - 1, -1):
        rank = _break_rank(text, spans, token)
        if rank > best_rank:
            best, best_rank = token, rank
            if rank == _BEST_RANK:
                break
    return best, best_rank


def _next_start(text: str, spans: TokenSpans, start: int, end: int, overlap: int) -> int:
    """Start of the next chunk: `overlap` tokens back from `end`, moved to a word start."""
    candidate = max(start + 1, end - overlap)
    for token in range(candidate, end):
        if _word_start(text, spans, token):
            return token
    return end


def chunk_text(text: str, spans: TokenSpans, chunk_tokens: int, overlap_tokens: int) -> list[str]:
    """Chunks of `text` given its tokens; empty when the text has no tokens."""
    if chunk_tokens < 1 or not 0 <= overlap_tokens < chunk_tokens:
        raise ValueError("need chunk_tokens >= 1 and 0 <= overlap_tokens < chunk_tokens")
    count = len(spans.ids)
    chunks: list[str] = []
    start = 0
    while start < count:
        end, rank = min(start + chunk_tokens, count), 0
        if end < count:
            end, rank = _best_end(text, spans, start, end)
        chunks.append(text[spans.starts[start] : spans.ends[end - 1]])
        if end == count:
            break
        # Overlap carries context across a cut in running text, not across a section break.
        start = (
            end if rank >= _PARAGRAPH_RANK else _next_start(text, spans, start, end, overlap_tokens)
        )
    return chunks
