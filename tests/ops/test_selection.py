"""Eidetic selection: the chunk loop equals a prefix top-M (decay 1), carries over exactly across calls,
respects causal visibility, and the fifo / decay rules do what they say."""
import pytest
import torch

from bmojo.ops.selection import Entries, innovation_scores, memory_update, position_scores, select_memory
from tests.helpers import seeded


def _run(scores, chunk, M, **kw):
    B = scores.shape[0]
    return select_memory(scores, start=0, chunk=chunk, mem=Entries.empty(B, M, "cpu"),
                         pending=Entries.empty(B, 0, "cpu"), src_offset=0, **kw)


@pytest.mark.parametrize("T,C,M", [(7, 4, 3), (8, 4, 3), (37, 4, 6), (37, 5, 40), (16, 1, 2)])
def test_chunk_loop_equals_prefix_topk(T, C, M):
    scores = torch.rand(3, T, generator=seeded(T))
    blocks, mem, pend = _run(scores, C, M)
    for b in range(blocks.pos.shape[1]):
        end = b * C
        got = sorted(p for p in blocks.pos[0, b].tolist() if p >= 0)
        want = sorted(scores[0, :end].topk(min(M, end)).indices.tolist()) if end else []
        assert got == want, f"block {b}: memory {got}, prefix top-{M} {want}"
    assert pend.pos.shape[1] == T % C


def test_split_calls_equal_one_call():
    """Selection over [0, T) equals selection over [0, t) then [t, T) with the carried memory and pending."""
    T, C, M = 29, 4, 5
    scores = torch.rand(2, T, generator=seeded(1))
    _, mem_all, _ = _run(scores, C, M)
    for t in (1, 3, 4, 13):
        _, mem1, pend1 = _run(scores[:, :t], C, M)
        _, mem2, _ = select_memory(scores[:, t:], start=t, chunk=C, mem=mem1, pending=pend1, src_offset=t)
        assert torch.equal(mem2.pos, mem_all.pos) and torch.equal(mem2.src, mem_all.src), f"split at {t}"


def test_memory_is_causal():
    """Changing a score at position p changes no memory seen by blocks that start at or before p."""
    T, C, M = 32, 4, 3
    s = torch.rand(1, T, generator=seeded(2))
    base, _, _ = _run(s, C, M)
    for p in (0, 5, 17, 30):
        s2 = s.clone()
        s2[0, p] = 10.0
        blocks, _, _ = _run(s2, C, M)
        first_after = p // C + 1  # the first block that may see position p
        assert torch.equal(blocks.pos[:, :first_after], base.pos[:, :first_after]), f"position {p} leaked"
        if first_after < blocks.pos.shape[1]:
            assert p in blocks.pos[0, first_after].tolist(), "a top score must enter the memory after its chunk"


def test_fifo_keeps_topk_per_chunk_for_R_chunks():
    T, C, k, M = 24, 4, 2, 6  # R = 3 chunks
    s = torch.rand(1, T, generator=seeded(3))
    _, mem, _ = _run(s, C, M, rule="fifo", per_chunk=k)
    want = []
    for c in range(T // C - M // k, T // C):
        want += (c * C + s[0, c * C:(c + 1) * C].topk(k).indices).tolist()
    assert sorted(mem.pos[0].tolist()) == sorted(want)


def test_decay_ages_entries():
    """With a strong decay an old high score is replaced by a newer lower one."""
    s = torch.tensor([[5.0, 0, 0, 0, 1.0, 0, 0, 0]])
    _, keep, _ = _run(s, 4, 1, decay=1.0)
    _, aged, _ = _run(s, 4, 1, decay=0.1)
    assert keep.pos.tolist() == [[0]] and aged.pos.tolist() == [[4]]


def test_memory_update_shapes_and_empty_slots():
    mem = Entries.empty(2, 3, "cpu")
    cand = Entries(torch.tensor([[0.1, 0.5], [0.3, 0.2]]), torch.tensor([[4, 5], [4, 5]]), torch.tensor([[7, 8], [7, 8]]))
    new = memory_update(mem, cand)
    assert new.prio.shape == (2, 3)
    assert new.pos[0].tolist()[:2] == [5, 4] and new.pos[0, 2] == -1


def test_scorers():
    u, f = torch.randn(2, 5, 6), torch.randn(2, 5, 6)
    assert torch.allclose(innovation_scores(u, f), (u - f).pow(2).mean(-1))
    P = torch.randn(6, 6)
    assert torch.allclose(innovation_scores(u, f, P), (u - f @ P.t()).pow(2).mean(-1))
    pos = torch.arange(100)
    r = position_scores("random", pos, 2)
    assert r.shape == (2, 100) and 0 <= r.min() and r.max() < 1 and r[0].unique().numel() == 100
    assert torch.equal(position_scores("random", pos[50:], 1)[0], r[0, 50:])  # a pure function of position
    assert torch.equal(position_scores("recency", pos, 1)[0], pos.float())
    with pytest.raises(ValueError, match="random"):
        position_scores("bogus", pos, 1)
