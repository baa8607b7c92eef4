"""Text for a stream of token ids, one token at a time, without decoding the whole output again.

Each new token is decoded together with a few tokens before it (the window starts where the last
emitted text started), and the token's text is what the window's text gained. A token that ends
inside a multi-byte character adds '' until the character completes. Joined, the pieces equal
decode(all ids) for byte-level and SentencePiece tokenizers.
"""
from __future__ import annotations

from typing import Callable


class IncrementalText:
    def __init__(self, decode: Callable[[list[int]], str]):
        self.decode = decode
        self.ids: list[int] = []
        self.prefix = 0  # window start: the tokens whose text was emitted last
        self.read = 0  # tokens whose text has been emitted

    def add(self, token: int) -> str:
        self.ids.append(int(token))
        before = self.decode(self.ids[self.prefix: self.read])
        now = self.decode(self.ids[self.prefix:])
        if now.endswith("\ufffd") or len(now) <= len(before) and not now.startswith(before):
            return ""
        self.prefix, self.read = self.read, len(self.ids)
        return now[len(before):]
