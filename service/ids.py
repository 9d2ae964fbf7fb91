"""What an external id may be: text a person can type, read back and delete.

An id is stored in Unicode NFC, so ``café`` typed with a composed é and with e + a combining
accent is one item, not two that look alike. Characters that are not text a user can type or
see are refused: control characters (CR/LF split headers and logs; ESC drives terminals), format
characters (U+202E reverses what a reader sees, U+FEFF and the zero-width ones are invisible),
line and paragraph separators, lone surrogates, private-use code points, and U+FFFD, which is
what invalid UTF-8 in a URL decodes to. The API normalises (``service.api.schemas.ItemId``);
every writer, the bulk loader included, is checked by ``service.gallery.check_ids``.
"""

from __future__ import annotations

import unicodedata

# Cc control, Cf format, Cs surrogate, Co private use, Zl / Zp line and paragraph separators.
_REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Zl", "Zp"})
_REPLACEMENT = "\ufffd"


def normal_form(value: str) -> str:
    """The one form an id is stored and looked up in (NFC)."""
    return unicodedata.normalize("NFC", value)


def id_problem(value: str) -> str | None:
    """Why ``value`` cannot be a new item's id, or None."""
    for ch in value:
        if ch == _REPLACEMENT:
            return "must be valid UTF-8 text (it contains U+FFFD, what invalid bytes decode to)"
        if unicodedata.category(ch) in _REFUSED_CATEGORIES:
            return f"must be text a user can type: U+{ord(ch):04X} ({unicodedata.category(ch)}) is not allowed"
    if value != normal_form(value):
        return "must be in Unicode normal form NFC"
    return None
