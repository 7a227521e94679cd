"""The eidetic memory op (bmojo.ops.eidetic): the memory each block sees is a prefix top-M (decay 1), carries
over exactly across calls, respects causal visibility, the fifo / decay rules do what they say, ties go to the
older entry, and the loop-free fast path equals the chunk-loop reference everywhere (hypothesis)."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bmojo.ops.eidetic import Entries, eidetic_memory, eidetic_memory_ref
from bmojo.layers.scorers import make_scorer
from bmojo.layers.scorers.position import position_scores
from tests.helpers import seeded

OPS = [pytest.param(eidetic_memory, id="fast"), pytest.param(eidetic_memory_ref, id="ref")]


def _run(scores, chunk, M, op=eidetic_memory, **kw):
    B = scores.shape[0]
    out = op(scores, start=0, chunk=chunk, memory=Entries.empty(B, M, "cpu"), pending=Entries.empty(B, 0, "cpu"),
             src_offset=0, **kw)
    return out.blocks, out.memory, out.pending


def _update(mem, cand, start, chunk, **kw):
    """One update: memory `mem` and one chunk of candidates `cand` (Entries; src = the candidate's pool index)
    at positions start .. start+chunk-1."""
    n = chunk - 1
    pend = Entries(cand.score[:, :n], cand.pos[:, :n], cand.src[:, :n])
    return eidetic_memory(cand.score[:, n:], start=start + n, chunk=chunk, memory=mem, pending=pend,
                          src_offset=int(cand.src[0, n]), **kw)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("T,C,M", [(7, 4, 3), (8, 4, 3), (37, 4, 6), (37, 5, 40), (16, 1, 2)])
def test_chunk_loop_equals_prefix_topk(T, C, M, op):
    scores = torch.rand(3, T, generator=seeded(T))
    blocks, mem, pend = _run(scores, C, M, op)
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
        mem2 = eidetic_memory(scores[:, t:], start=t, chunk=C, memory=mem1, pending=pend1, src_offset=t).memory
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
    new = _update(mem, cand, 4, 2).memory
    assert new.score.shape == (2, 3)
    assert new.pos[0].tolist()[:2] == [5, 4] and new.pos[0, 2] == -1


@pytest.mark.parametrize("op", OPS)
def test_ties_go_to_the_older_entry(op):
    """Equal scores (common: `norm` scores of repeated tokens) are kept in the same order on every device."""
    s = torch.tensor([[1.0, 3.0, 3.0, 2.0, 3.0]])
    assert _run(s, 5, 2, op)[1].pos.tolist() == [[1, 2]]
    assert _run(s, 5, 4, op)[1].pos.tolist() == [[1, 2, 4, 3]]


def test_memory_update_keeps_the_older_of_equal_entries():
    mem = Entries(torch.tensor([[5.0, 2.0]]), torch.tensor([[3, 1]]), torch.tensor([[0, 1]]))
    cand = Entries(torch.tensor([[2.0, 5.0, 2.0]]), torch.tensor([[9, 10, 11]]), torch.tensor([[2, 3, 4]]))
    out = _update(mem, cand, 9, 3, rule="topk")  # (a chunk starts at a multiple of the chunk size)
    assert out.memory.pos.tolist() == [[3, 10]]  # 5.0 at positions 3 and 10: both kept; the 2.0 ties lose
    mem = Entries(torch.tensor([[5.0, 2.0, 1.0]]), torch.tensor([[3, 1, 0]]), torch.tensor([[0, 1, 2]]))
    cand = Entries(cand.score, cand.pos, cand.src + 1)
    out = _update(mem, cand, 9, 3, rule="topk")
    assert out.memory.pos.tolist() == [[3, 10, 1]]  # of the three 2.0s, the oldest (position 1) stays
    assert out.evicted_at.tolist() == [[-1, -1, 0, 0, -1, 0]]  # the pool [memory | chunk]: who left at update 0


def _same(a, b):
    for part in ("blocks", "memory", "pending", "pool"):
        for f in ("score", "pos", "src"):
            x, y = getattr(getattr(a, part), f), getattr(getattr(b, part), f)
            assert torch.equal(x, y), f"{part}.{f}: fast {x.tolist()} != reference {y.tolist()}"
    assert torch.equal(a.evicted_at, b.evicted_at), f"evicted_at: {a.evicted_at.tolist()} != {b.evicted_at.tolist()}"


@st.composite
def memory_cases(draw):
    C, M, rule = draw(st.integers(1, 7)), draw(st.integers(0, 9)), draw(st.sampled_from(["topk", "fifo"]))
    k = draw(st.sampled_from([d for d in range(1, C + 1) if M % d == 0] or [1])) if rule == "fifo" else 1
    if rule == "fifo" and M % k:
        M = 0
    return dict(T=draw(st.integers(0, 40)), split=draw(st.integers(0, 40)), chunk=C, M=M, rule=rule, per_chunk=k,
                decay=draw(st.sampled_from([1.0, 0.5, 0.9, 0.25])), ties=draw(st.booleans()),
                batch=draw(st.integers(1, 3)), seed=draw(st.integers(0, 99)))


@settings(max_examples=60, deadline=None, derandomize=True)
@given(case=memory_cases())
def test_fast_equals_reference(case):
    """Over random lengths, chunks, memory sizes, decays, rules, ties (scores from a handful of values, negative
    and zero included) and a continuation from a state, the loop-free op equals the chunk loop exactly: every
    block's memory, the final memory and pending candidates, and when each entry was evicted."""
    B, T, M, g = case["batch"], case["T"], case["M"], seeded(case["seed"])
    kw = {k: case[k] for k in ("chunk", "rule", "per_chunk", "decay")}
    s = (torch.randint(-2, 3, (B, T), generator=g).float() / 2) if case["ties"] else torch.randn(B, T, generator=g)
    empty, none = Entries.empty(B, M, "cpu"), Entries.empty(B, 0, "cpu")
    _same(eidetic_memory(s, start=0, memory=empty, pending=none, src_offset=M, **kw),
          eidetic_memory_ref(s, start=0, memory=empty, pending=none, src_offset=M, **kw))
    t = min(case["split"], T)  # continue from the state after t tokens
    first = eidetic_memory(s[:, :t], start=0, memory=empty, pending=none, src_offset=0, **kw)
    args = dict(start=t, memory=first.memory, pending=first.pending, src_offset=t, **kw)
    _same(eidetic_memory(s[:, t:], **args), eidetic_memory_ref(s[:, t:], **args))


@pytest.mark.parametrize("op", OPS)
def test_bad_arguments_are_named(op):
    s, m = torch.rand(1, 8), Entries.empty(1, 4, "cpu")
    with pytest.raises(ValueError, match="memory rule"):
        op(s, start=0, chunk=4, memory=m, pending=Entries.empty(1, 0, "cpu"), src_offset=0, rule="lru")
    with pytest.raises(ValueError, match="pending holds 0"):
        op(s, start=2, chunk=4, memory=m, pending=Entries.empty(1, 0, "cpu"), src_offset=0)
    with pytest.raises(ValueError, match="decay"):
        op(s, start=0, chunk=4, memory=m, pending=Entries.empty(1, 0, "cpu"), src_offset=0, decay=0.0)


def test_scorers():
    u, f = torch.randn(2, 5, 6), torch.randn(2, 5, 6)
    pos = torch.arange(100)
    norm = make_scorer("norm", 6)
    assert torch.allclose(norm(u, f, pos[:5])[0], (u - f).pow(2).mean(-1)) and norm(u, f, pos[:5])[1] is None
    inn = make_scorer("innovation", 6).train()
    P = torch.randn(6, 6)
    with torch.no_grad():
        inn.predictor.weight.copy_(P)
    s, aux, state = inn(u, f, pos[:5])
    assert torch.allclose(s, (u - f @ P.t()).pow(2).mean(-1)) and not s.requires_grad
    assert aux is not None and aux.requires_grad and inn.eval()(u, f, pos[:5])[1] is None  # training only
    assert state is None and inn.init_state(2) is None
    r = position_scores("random", pos, 2)
    assert r.shape == (2, 100) and 0 <= r.min() and r.max() < 1 and r[0].unique().numel() == 100
    assert torch.equal(position_scores("random", pos[50:], 1)[0], r[0, 50:])  # a pure function of position
    assert torch.equal(position_scores("recency", pos, 1)[0], pos.float())
    assert torch.equal(make_scorer("recency", 6)(u[:1], None, pos)[0][0], pos.float())
    with pytest.raises(ValueError, match="random"):
        position_scores("bogus", pos, 1)
    with pytest.raises(ValueError, match="selector"):
        make_scorer("bogus", 6)
