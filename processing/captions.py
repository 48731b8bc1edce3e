"""Caption sub-sampling (METHOD §4.4) and the left/right swap that goes with a horizontal flip.

InstVL captions hold several sentences. In epoch `e` a caption contributes sentence `(e + offset) mod n`, where `n` is
its number of sentences and `offset` is fixed per caption (a hash of a seed and a key such as the sample id), so
that over `n` epochs every sentence is seen once and different samples start at different sentences.
"""

from __future__ import annotations

import hashlib
import re

__all__ = ["caption_offset", "select_caption_sentence", "split_sentences", "swap_left_right"]

# A sentence ends at ., ! or ? followed by white space. Abbreviations such as "e.g. the" are rare in InstVL-style
# captions and would only make a sentence shorter, never lose text.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def split_sentences(caption: str) -> list[str]:
    """Splits a caption into its sentences; a caption without sentence marks is one sentence."""
    sentences = [sentence.strip() for sentence in _SENTENCE_END.split(caption.strip())]
    return [sentence for sentence in sentences if sentence] or [caption.strip()]


def caption_offset(seed: int, key: str) -> int:
    """The fixed per-caption offset: a 32-bit hash of `(seed, key)`, identical on every rank and worker."""
    digest = hashlib.blake2b(f"{seed}\x1f{key}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little")


def select_caption_sentence(caption: str, epoch: int, offset: int) -> str:
    """Returns sentence `(epoch + offset) mod n` of `caption`."""
    sentences = split_sentences(caption)
    return sentences[(int(epoch) + int(offset)) % len(sentences)]


_LEFT_RIGHT = re.compile(r"\b(left|right)(most|ward|wards)?\b", flags=re.IGNORECASE)


def swap_left_right(text: str) -> str:
    """Swaps "left" and "right" (and "leftmost", "rightward", ...) keeping the case of the first letter.

    A horizontal flip mirrors the scene; without this swap a caption such as "the dog on the left" would describe
    the wrong instance after the flip.
    """

    def replace(match: re.Match) -> str:
        word, suffix = match.group(1), match.group(2) or ""
        swapped = "right" if word.lower() == "left" else "left"
        if word.isupper():
            swapped = swapped.upper()
        elif word[0].isupper():
            swapped = swapped.capitalize()
        return swapped + suffix

    return _LEFT_RIGHT.sub(replace, text)
