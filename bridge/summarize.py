"""An extractive summariser: keyword scoring over a topic's week, sentence splitting with
pysbd, French and English stop words. Pure code, no network.

Messages go through twice: :meth:`Summariser.observe` counts keywords (document
frequency), :meth:`Summariser.offer` scores a message against them and keeps the best few
candidates; :meth:`Summariser.key_points` splits only those into sentences. Memory stays
bounded by the number of candidates, not the number of messages.
"""

from __future__ import annotations

import heapq
import itertools
import math
import re
from collections import Counter
from collections.abc import Container, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Generic, TypeVar

if TYPE_CHECKING:
    import pysbd

_STOP_FR_TEXT = """
    alors au aucun aussi autre aux avec avoir avons bon car ce cela ces cet cette ceux
    chaque ci comme comment dans de des doit donc dont du elle elles en encore est et été
    être eu fait faire fois font hors ici il ils je juste la le les leur leurs lui là ma
    mais me même mes moi moins mon ne ni nos notre nous on ont ou où par parce pas peu peut
    plus pour pourquoi qu quand que quel quelle quelles quels qui sa sans se ses seulement
    si sien son sont sous soyez sur ta tandis te tellement tels tes toi ton tous tout toute
    toutes très tu un une vos votre vous vu ça était étaient sera seront ainsi après avant
    bien chez entre jusqu lors merci oui non cest aussi déjà
"""
STOP_FR = frozenset(_STOP_FR_TEXT.split())
_STOP_EN_TEXT = """
    a about above after again against all am an and any are as at be because been before
    being below between both but by can could did do does doing down during each few for
    from further had has have having he her here hers herself him himself his how i if in
    into is it its itself just me more most my myself no nor not now of off on once only or
    other our ours out over own same she should so some such than that the their theirs them
    then there these they this those through to too under until up very was we were what
    when where which while who whom why will with would you your yours also yes thanks thank
    will shall may might must
"""
STOP_EN = frozenset(_STOP_EN_TEXT.split())
STOP_WORDS = STOP_FR | STOP_EN

_WORD = re.compile(r"[^\W\d_]{3,}", re.UNICODE)
MIN_WORDS = 4
_ZEROS = itertools.repeat(0.0)
MAX_CHARS = 280

T = TypeVar("T")


def tokens(text: str) -> list[str]:
    return [w for w in _WORD.findall(text.lower()) if w not in STOP_WORDS]


def keywords(text: str) -> tuple[set[str], int]:
    """The distinct non-stop words of ``text`` and its length in words (fast path)."""
    words = _WORD.findall(text.lower())
    return set(words).difference(STOP_WORDS), len(words)


def language_of(text: str) -> str:
    words = re.findall(r"\w+", text.lower())
    fr = sum(1 for w in words if w in STOP_FR)
    en = sum(1 for w in words if w in STOP_EN)
    return "en" if en > fr else "fr"


@lru_cache(maxsize=4)
def _segmenter(lang: str) -> pysbd.Segmenter:
    import pysbd  # once a digest is built: the service does not hold it meanwhile (0.5 MB)

    return pysbd.Segmenter(language=lang, clean=False)


def sentences(text: str) -> list[str]:
    text = " ".join(text.split())
    if not text:
        return []
    return [s.strip() for s in _segmenter(language_of(text)).segment(text) if s.strip()]


class _Weights(dict[str, float]):
    """Keyword weights (a word without one weighs nothing) and the heaviest, ``top``."""

    top = 0.0

    def __missing__(self, word: str) -> float:
        return 0.0


@dataclass(frozen=True)
class KeyPoint(Generic[T]):
    text: str
    source: T


class Summariser(Generic[T]):
    """Pick key sentences for one topic."""

    def __init__(self, count: int, candidates: int | None = None) -> None:
        self.count = count
        self.candidates = candidates if candidates is not None else max(10, 4 * count)
        self.df: Counter[str] = Counter()
        self.documents = 0
        self._heap: list[tuple[float, int, str, T]] = []
        self._weight_table: _Weights | None = None
        self._weight_docs = -1
        self._seq = 0

    def observe(self, text: str) -> None:
        self.documents += 1
        self.df.update(keywords(text)[0])

    def _weights(self) -> _Weights:
        if self._weight_table is None or self._weight_docs != self.documents:
            busy = self.documents > 2
            self._weight_table = _Weights(
                (w, math.log1p(df)) for w, df in self.df.items() if df > 1 or not busy
            )
            self._weight_table.top = max(self._weight_table.values(), default=0.0)
            self._weight_docs = self.documents
        return self._weight_table

    def score(self, text: str) -> float:
        words, length = keywords(text)
        if len(words) < 2:
            return 0.0
        get = self._weights().get
        return sum(map(get, words, _ZEROS)) / math.sqrt(length)

    def observe_keywords(self, keyword_texts: Sequence[str]) -> None:
        """:meth:`observe` for many messages from their precomputed keywords (each a
        space-separated string of distinct words): one split and one count per batch."""
        self.documents += len(keyword_texts)
        self.df.update(" ".join(keyword_texts).split())

    def offer_keywords(
        self,
        rows: Sequence[tuple[T, str, int]],
        bonus: Mapping[T, int] | None = None,
        skip: Container[T] = (),
    ) -> None:
        """:meth:`offer` for a batch of messages from their precomputed (source, keywords,
        length in words), once all were observed; ``bonus`` counts reactions, ``skip`` is
        left out. Only the best few are kept, without their text: :meth:`key_points` is
        given the text of the :meth:`candidate_sources` later."""
        if self.count <= 0 or not rows:
            return
        table = self._weights()
        weight, sqrt, top = table.__getitem__, math.sqrt, table.top
        # offered in order (on a tie the earlier message stays): sequence numbers follow
        seq, heap = self._seq, self._heap
        self._seq += len(rows)
        if top <= 0:
            return  # nothing can score
        floor = heap[0][0] if len(heap) >= self.candidates else 0.0
        # A message scores at most ``top`` per keyword: one that cannot pass the floor of
        # a full heap is not split at all (the margin covers rounding).
        reach = floor / top * (1.0 - 1e-9)
        for i, (source, kw, length) in enumerate(rows):
            root = sqrt(length or 1)
            boost = 1.0 + 0.25 * bonus.get(source, 0) if bonus else 1.0
            if (kw.count(" ") + 1) * boost <= reach * root:
                continue
            words = kw.split()
            if len(words) < 2 or source in skip:
                continue
            # :meth:`score` (then the reactions), on the stored keywords
            score = sum(map(weight, words)) / root
            if bonus:
                score *= boost
            if score > floor:
                self._push(score, seq + i + 1, "", source)
                if len(heap) >= self.candidates:
                    floor = heap[0][0]
                    reach = floor / top * (1.0 - 1e-9)

    def candidate_sources(self) -> list[T]:
        return [item[3] for item in self._heap]

    def offer(self, text: str, source: T, bonus: float = 0.0) -> None:
        if self.count <= 0:
            return
        score = self.score(text) * (1.0 + 0.25 * bonus)
        if score > 0:
            self._seq += 1
            self._push(score, self._seq, text, source)

    def _push(self, s: float, seq: int, text: str, source: T) -> None:
        """Keep a candidate if it is among the best (on a tie, the earlier one)."""
        item = (s, -seq, text, source)
        if len(self._heap) < self.candidates:
            heapq.heappush(self._heap, item)
        elif item[:2] > self._heap[0][:2]:
            heapq.heapreplace(self._heap, item)

    def key_points(self, texts: Mapping[T, str] | None = None) -> list[KeyPoint[T]]:
        """The best sentence of each of the best candidates, best first (``texts`` gives
        the text of candidates offered by keywords)."""
        scored: list[tuple[float, int, str, T]] = []
        for _, seq, kept, source in self._heap:
            text = kept or (texts or {}).get(source, "")
            best: tuple[float, str] | None = None
            for sentence in sentences(text):
                if len(sentence.split()) < MIN_WORDS:
                    continue
                s = self.score(sentence)
                if s > 0 and (best is None or s > best[0]):
                    best = (s, sentence)
            if best is not None:
                scored.append((best[0], seq, best[1], source))
        scored.sort(key=lambda x: (x[0], x[1]), reverse=True)
        out: list[KeyPoint[T]] = []
        seen: set[str] = set()
        for _, _, sentence, source in scored:
            if sentence.lower() in seen:
                continue
            seen.add(sentence.lower())
            if len(sentence) > MAX_CHARS:
                sentence = sentence[: MAX_CHARS - 1].rsplit(" ", 1)[0] + "…"
            out.append(KeyPoint(sentence, source))
            if len(out) >= self.count:
                break
        return out
