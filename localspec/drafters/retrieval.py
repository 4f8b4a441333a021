"""Retrieval drafting over the context with an online suffix automaton (SAM-Decoding).

The automaton holds every token of the request so far (prompt + generated, pending token last).
Appending a token costs amortised O(1) and yields, as a by-product, the *match*: the longest
suffix of the text that also ended at an earlier position, so that what followed it there is
known. The draft is that continuation, `min(budget, max_draft, 1 + 4 * match_length)` tokens.
Where the known text ends first (the match's latest occurrence is just behind, as in a loop),
the drafter by default copies on cyclically, as if its drafts were accepted; `cyclic=False`
cuts the draft at the end of the known text instead.

End positions: each state keeps the most recent end position it has been seen at. Keeping the
exact latest end of every state would mean walking all suffix-link ancestors per token (O(n) per
token on repetitive text), so a new end is written to the matched state and at most
`recency_hops` of its ancestors; with `recency_hops=None` the end is exact (the latest earlier
occurrence of the match), otherwise it is a recent one. Recent occurrences beat the first one for
generation: the model's latest wording of a repeated passage is the best guess for the next.
"""

from __future__ import annotations

import numpy as np

from localspec.drafters.base import with_match
from localspec.sampling import GumbelNoise
from localspec.tree import DraftTree
from localspec.verify import Verdict


class SuffixAutomaton:
    """An online suffix automaton over a token sequence, with the match of the text's end.

    State 0 is the root (the empty string). Transitions are one dict per state, since vocabularies
    run to 150k tokens; links, lengths and end positions are flat lists indexed by state.
    """

    def __init__(self, recency_hops: int | None = 8) -> None:
        self.recency_hops = recency_hops
        self._next: list[dict[int, int]] = [{}]
        self._link: list[int] = [-1]
        self._len: list[int] = [0]
        self._end: list[int] = [-1]  # a (recent) end position of the state's strings
        self._tail = 0  # the state of the whole text
        self._buf = np.zeros(256, np.int32)
        self._n = 0
        self.match_length = 0  # longest suffix of the text that also ends earlier
        self.match_end = -1  # where that earlier occurrence ends (-1: no match)

    def __len__(self) -> int:
        return self._n

    @property
    def text(self) -> np.ndarray:
        """Every token appended so far (a view; do not modify)."""
        return self._buf[:self._n]

    @property
    def n_states(self) -> int:
        return len(self._len)

    def extend(self, tokens: np.ndarray) -> None:
        for token in np.asarray(tokens).tolist():
            self.append(token)

    def append(self, token: int) -> None:
        """Add one token at the end and update the match (Blumer et al.'s online construction)."""
        nxt, link, length, end = self._next, self._link, self._len, self._end
        i = self._push(token)
        cur = len(length)
        nxt.append({})
        link.append(0)
        length.append(length[self._tail] + 1)
        end.append(i)
        p = self._tail
        while p >= 0 and token not in nxt[p]:
            nxt[p][token] = cur
            p = link[p]
        match = 0
        if p >= 0:  # p + token occurred before: that state is the match (cloned if it holds more)
            match = nxt[p][token]
            if length[p] + 1 != length[match]:
                match = self._clone(p, match, token)
            link[cur] = match
        self._tail = cur
        self.match_length = length[match]
        self.match_end = end[match] if match else -1  # read before i is recorded: always < i
        hops = self.recency_hops if self.recency_hops is not None else self._n
        state = match
        while state > 0 and hops > 0:
            end[state] = i
            state = link[state]
            hops -= 1

    def _clone(self, p: int, q: int, token: int) -> int:
        """Split the strings of q no longer than len(p) + 1 into a new state; return it."""
        nxt, link, length = self._next, self._link, self._len
        clone = len(length)
        nxt.append(dict(nxt[q]))
        link.append(link[q])
        length.append(length[p] + 1)
        self._end.append(self._end[q])
        while p >= 0 and nxt[p].get(token) == q:
            nxt[p][token] = clone
            p = link[p]
        link[q] = clone
        return clone

    def _push(self, token: int) -> int:
        if self._n == len(self._buf):
            self._buf = np.concatenate([self._buf, np.zeros_like(self._buf)])
        self._buf[self._n] = token
        self._n += 1
        return self._n - 1

    def continuation(self, max_tokens: int, cyclic: bool = False) -> np.ndarray:
        """Up to `max_tokens` tokens that followed the match's earlier occurrence.

        They stop where the known text ends unless `cyclic`: then the copy reads on into its own
        output (as LZ77 does), repeating the known part. That is what the same rule would draft
        next if every drafted token were accepted, and it keeps drafts full on repetitive text.
        """
        if self.match_end < 0 or max_tokens <= 0:
            return self._buf[:0]
        start = self.match_end + 1
        known = self._buf[start:min(start + max_tokens, self._n)]
        return np.resize(known, max_tokens) if cyclic else known


class SuffixAutomatonDrafter:
    """Drafts the continuation of the longest earlier match of the context's end.

    The automaton persists across steps and across requests whose prompt extends the text it
    holds; anything else starts it afresh. `match_length` lets a policy choose between drafters
    (e.g. use this chain when it is >= 5); call `update(history)` first to bring it up to date.
    """

    name = "retrieval"

    def __init__(self, max_draft: int = 16, recency_hops: int | None = 8, cyclic: bool = True) -> None:
        self.max_draft = max_draft
        self.recency_hops = recency_hops
        self.cyclic = cyclic
        self.automaton = SuffixAutomaton(recency_hops)

    @property
    def match_length(self) -> int:
        return self.automaton.match_length

    def begin(self, prompt: np.ndarray, noise: GumbelNoise | None = None) -> None:
        self.update(prompt)

    def update(self, history: np.ndarray) -> None:
        """Append the tokens of `history` not seen yet; restart if it does not extend the text."""
        sam = self.automaton
        n = len(sam)
        if len(history) < n or not np.array_equal(history[:n], sam.text):
            sam = self.automaton = SuffixAutomaton(self.recency_hops)
            n = 0
        if len(history) > n:
            sam.extend(history[n:])

    def propose(self, history: np.ndarray, budget: int) -> DraftTree:
        self.update(history)
        n_draft = min(budget, self.max_draft, 1 + 4 * self.match_length)
        if self.match_length == 0 or n_draft <= 0:
            return DraftTree.empty(self.name)
        source = with_match(self.name, min(self.match_length, 4))  # 4 = 4 or more
        return DraftTree.chain(self.automaton.continuation(n_draft, self.cyclic).tolist(), source)

    def observe(self, tree: DraftTree, logits: np.ndarray, verdict: Verdict) -> None:
        pass  # accepted tokens arrive with the next history
