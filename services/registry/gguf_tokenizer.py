"""Gemma tokenizers rebuilt from a GGUF file's vocabulary.

transformers 4.57 reads a Gemma GGUF's vocabulary (`tokenizer.ggml.model` = `llama`: a
SentencePiece BPE model, each piece scored by minus its merge rank) into a Unigram model, which
takes those ranks for log-probabilities and so prefers short, early pieces: "The capital of
France is" becomes 10 tokens (`▁c`, `ap`, `it`, `al`, ...) instead of Gemma's 5 (transformers
issue 41494). Rebuilt here as what Gemma's own tokenizer.json is: BPE whose merges follow the
pieces' scores, byte fallback, spaces as `▁`, the control and user-defined pieces as added tokens
matched whole, and BOS prepended. On Gemma 3 270M's GGUF this gives the merges of Gemma 3's
tokenizer.json exactly (514,906) and its ids on 800k tokens of code, prose and CJK text.
"""

from __future__ import annotations

from pathlib import Path

# Checkpoint model types whose GGUF vocabulary transformers reads as Unigram (its
# GGUFGemmaConverter): their tokenizer is rebuilt here instead.
GEMMA_MODEL_TYPES = frozenset({"gemma2", "gemma3_text"})
# SentencePiece piece types, as llama.cpp writes them to `tokenizer.ggml.token_type`.
_NORMAL, _CONTROL, _USER_DEFINED = 1, 3, 4
_SPACE = "▁"


def _field(fields, key: str):
    field = fields.get(key)
    return field.contents() if field is not None and field.data else None


def _merges(pieces: list[str], types: list[int], scores: list[float]) -> list[tuple[str, str]]:
    """Every split of a piece into two pieces, in merge order: the user-defined pieces (runs of
    spaces, newlines, tabs) longest first, as SentencePiece matches them, then the others by
    descending score; the splits of one piece by their halves' ids."""
    ids = {piece: index for index, piece in enumerate(pieces)}

    def order(index: int) -> tuple[int, float]:
        if types[index] == _USER_DEFINED:
            return (0, -len(pieces[index]))
        return (1, -scores[index])

    mergeable = [i for i, kind in enumerate(types) if kind in (_NORMAL, _USER_DEFINED)]
    merges: list[tuple[str, str]] = []
    for index in sorted(mergeable, key=order):
        piece = pieces[index]
        splits = [
            (piece[:cut], piece[cut:])
            for cut in range(1, len(piece))
            if piece[:cut] in ids and piece[cut:] in ids
        ]
        splits.sort(key=lambda pair: (ids[pair[0]], ids[pair[1]]))
        merges.extend(splits)
    return merges


def gemma_tokenizer(gguf: Path):
    """The GGUF's Gemma tokenizer as a transformers fast tokenizer (save_pretrained writes its
    tokenizer.json and tokenizer_config.json)."""
    from gguf import GGUFReader
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from tokenizers.processors import TemplateProcessing
    from transformers import GemmaTokenizerFast

    fields = GGUFReader(gguf).fields
    tokens = _field(fields, "tokenizer.ggml.tokens")
    scores = _field(fields, "tokenizer.ggml.scores")
    types = _field(fields, "tokenizer.ggml.token_type")
    # Runs of spaces are `▁` runs in the model's vocabulary, as in Gemma's tokenizer.json.
    pieces = [_SPACE * len(t) if t and not t.strip(" ") else t for t in tokens]
    vocab = {piece: index for index, piece in enumerate(pieces)}
    bos, eos, unk, pad = (
        pieces[_field(fields, f"tokenizer.ggml.{name}_token_id")]
        for name in ("bos", "eos", "unknown", "padding")
    )

    tokenizer = Tokenizer(
        models.BPE(
            vocab,
            _merges(pieces, types, scores),
            unk_token=unk,
            fuse_unk=True,
            byte_fallback=True,
        )
    )
    tokenizer.normalizer = normalizers.Replace(" ", _SPACE)
    tokenizer.pre_tokenizer = pre_tokenizers.Split(" ", "merged_with_previous")
    tokenizer.decoder = decoders.Sequence(
        [decoders.Replace(_SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
    )
    tokenizer.add_tokens(
        [
            AddedToken(piece, normalized=False, special=False)
            for piece, kind in zip(pieces, types, strict=True)
            if kind == _USER_DEFINED
        ]
    )
    # Control pieces (<bos>, <start_of_turn>, <unusedN>, ...) are dropped from decoded text.
    tokenizer.add_special_tokens(
        [
            AddedToken(piece, normalized=False, special=True)
            for piece, kind in zip(pieces, types, strict=True)
            if kind == _CONTROL
        ]
    )
    add_bos = _field(fields, "tokenizer.ggml.add_bos_token")
    if add_bos is None or add_bos:
        tokenizer.post_processor = TemplateProcessing(
            single=f"{bos} $A",
            pair=f"{bos} $A {bos} $B",
            special_tokens=[(bos, vocab[bos])],
        )
    return GemmaTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=bos,
        eos_token=eos,
        unk_token=unk,
        pad_token=pad,
        add_bos_token=add_bos is None or bool(add_bos),
        add_eos_token=bool(_field(fields, "tokenizer.ggml.add_eos_token")),
    )
