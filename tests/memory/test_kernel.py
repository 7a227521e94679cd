"""The C store search (bmojo.memory.kernel): an 8-bit integer scan (the query coded in 16 bits) with an error
bound, then an exact re-score.  It must
return exactly what a brute-force float32 search returns, including where 8-bit codes cannot tell keys apart."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from bmojo.memory import Store, StoreConfig, kernel
from bmojo.memory.index import LayerIndex
from bmojo.memory.disk import make_spec

pytestmark = pytest.mark.skipif(not kernel.available(), reason=f"C store search unavailable: {kernel.error()}")


def brute_force(keys, pos, ids, q, limit, k):
    """keys (n, Hk, Dh), q (H, Dh), entries with pos <= limit -> per head the top-k (ids, scores), ties to the
    entry added first, -1 / -inf past the visible ones."""
    n, Hk, Dh = keys.shape
    H = q.shape[0]
    out_i = torch.full((H, k), -1, dtype=torch.long)
    out_s = torch.full((H, k), float("-inf"))
    vis = (pos <= limit).nonzero()[:, 0]
    for h in range(H):
        s = keys[vis, h // (H // Hk)].double() @ q[h].double()
        order = sorted(range(len(vis)), key=lambda i: (-float(s[i]), int(vis[i])))[:k]
        out_i[h, :len(order)] = ids[vis[order]]
        out_s[h, :len(order)] = s[order].float()
    return out_i, out_s


def _index(keys, pos, ids, parts=3):
    ix = LayerIndex(keys.shape[1], keys.shape[2], StoreConfig())
    for chunk in np.array_split(np.arange(len(pos)), parts):  # several adds: capacity growth on the way
        ix.add(keys[chunk], pos[chunk], ids[chunk])
    assert ix.code is not None and ix.searches_in_c(1)
    return ix


def _check(ix, keys, pos, ids, q, limit, k, window=4):
    """The C search's top-k equals brute force: the same ids, or, where float32 rounding makes exact scores
    tie, ids whose exact scores are the same top-k scores."""
    got_i, got_k, got_s = ix.search(q[None], torch.tensor([limit + window]), window, k)
    got_i, got_k, got_s = got_i[0], got_k[0], got_s[0]
    want_i, want_s = brute_force(keys, pos, ids, q, limit, k)
    ok = want_i >= 0
    assert torch.equal(got_i >= 0, ok)
    torch.testing.assert_close(got_s[ok], want_s[ok], rtol=1e-5, atol=1e-5)  # the same top-k scores (float32), in order
    assert (got_s[~ok] == float("-inf")).all() and (got_k[~ok] == 0).all()
    row = {int(e): j for j, e in enumerate(ids)}
    G = q.shape[0] // keys.shape[1]
    for h in range(q.shape[0]):
        for j in range(k):
            if ok[h, j]:  # each returned entry: its own key, and its exact score is the one reported
                key = keys[row[int(got_i[h, j])], h // G]
                assert torch.equal(got_k[h, j], key)
                assert abs(float(key.double() @ q[h].double()) - float(got_s[h, j])) <= 1e-5 * max(1, abs(float(got_s[h, j])))
    return got_i, want_i


@pytest.mark.parametrize("Hk,G,Dh,n", [(4, 1, 16, 3000), (2, 2, 16, 2500), (1, 3, 32, 1000), (2, 5, 8, 777),
                                       (3, 4, 64, 400), (1, 1, 16, 5), (2, 1, 7, 600), (1, 2, 24, 500),
                                       (1, 1, 128, 300)])
def test_c_search_equals_brute_force(Hk, G, Dh, n):
    g = torch.Generator().manual_seed(n + Dh)
    keys = torch.randn(n, Hk, Dh, generator=g) * torch.rand(n, 1, 1, generator=g) * 3  # norms vary by entry
    pos = torch.randperm(n, generator=g) * 2  # not in order: the visible prefix and the checked rest both matter
    ids = torch.arange(n) + 7
    ix = _index(keys, pos, ids)
    q = torch.randn(Hk * G, Dh, generator=g)
    for limit in (2 * n, n, n // 3, 0, -1):  # all, part, a few, one, none visible
        for k in (1, 16):
            got, want = _check(ix, keys, pos, ids, q, limit, k)
            assert torch.equal(got, want)  # random keys: no ties, the very same entries


def test_c_search_is_exact_where_8_bit_codes_tie():
    """Near-copies of one key (1e-3 apart, below the 8-bit step) rank by their exact scores, which the 8-bit scan
    cannot separate; a key with one huge component next to tiny ones (a coarse scale) and a zero key too."""
    g = torch.Generator().manual_seed(0)
    n, copies, Dh = 3000, 300, 16
    base = torch.randn(Dh, generator=g)
    keys = torch.randn(n, 1, Dh, generator=g)
    keys[:copies, 0] = base + 1e-3 * torch.randn(copies, Dh, generator=g)
    keys[n - 5, 0] = 1e-3
    keys[n - 5, 0, 3] = 1e4  # one huge component: the code of every other component is zero
    keys[n - 11] = 0.0  # scale 0
    pos, ids = torch.randperm(n, generator=g), torch.arange(n)
    ix = _index(keys, pos, ids)
    for q in (base, -base, torch.randn(Dh, generator=g), torch.eye(Dh)[3]):
        exact = keys[:copies, 0] @ q
        step = float(ix.scale[0, :copies // 8].min()) * float(q.abs().sum()) / 2  # the 8-bit error bound, at least
        if q is base:
            assert float(exact.max() - exact.min()) < step, "the copies' scores should be closer than the 8-bit bound"
        for k in (4, 16, 64):
            _check(ix, keys, pos, ids, q[None].clone(), n, k)


def test_c_search_is_exact_whatever_its_hint():
    """Each head's scan starts from the entries its previous query found (the hint): any hint, stale, invisible
    to the new query, random or the very answer, leaves the result exact."""
    g = torch.Generator().manual_seed(2)
    n, Hk, G, Dh, k = 3000, 2, 2, 16, 16
    keys, pos, ids = torch.randn(n, Hk, Dh, generator=g), torch.randperm(n, generator=g), torch.arange(n)
    ix = _index(keys, pos, ids)
    q = torch.randn(Hk * G, Dh, generator=g)
    for limit in (n, n // 2, 40, n, n):  # the hint of a query that saw more, then less, then the same query
        got, want = _check(ix, keys, pos, ids, q + 0.1 * torch.randn(Hk * G, Dh, generator=g), limit, k)
        assert torch.equal(got, want)
    assert (ix._hint >= 0).all()
    for trial in range(5):  # random hints of visible entries (slot j holds entry j): they set where the scan starts
        limit = int(torch.randint(n // 4, n, (1,), generator=g))
        seen = (pos <= limit).nonzero()[:, 0]
        ix._hint.copy_(torch.stack([seen[torch.randperm(len(seen), generator=g)[:k]] for _ in range(Hk * G)]))
        got, want = _check(ix, keys, pos, ids, torch.randn(Hk * G, Dh, generator=g), limit, k)
        assert torch.equal(got, want)


def test_c_search_is_exact_for_queries_of_wide_range():
    """The query is coded in 16 bits (q ~ sq qi): a query with one huge component next to tiny ones (whose codes
    are 0) and one with tiny components still get the exact top-k; a query that is not finite is left to
    PyTorch, which gives the same answer as with the kernel off."""
    g = torch.Generator().manual_seed(1)
    n, Hk, Dh = 2000, 2, 16
    keys, pos, ids = torch.randn(n, Hk, Dh, generator=g), torch.randperm(n, generator=g), torch.arange(n)
    ix = _index(keys, pos, ids)
    wide = torch.randn(Hk, Dh, generator=g) * 1e-3
    wide[:, 5] = 1e3
    for q in (wide, torch.randn(Hk, Dh, generator=g) * 1e-20, torch.randn(Hk, Dh, generator=g) * 1e6):
        for k in (1, 16):
            _check(ix, keys, pos, ids, q, n, k)
    bad = torch.randn(1, Hk, Dh, generator=g)
    bad[0, 1, 3] = float("nan")
    assert ix.search_c(bad, torch.tensor([n + 4]), 4, 8) is None  # refused: PyTorch answers
    got = ix.search(bad, torch.tensor([n + 4]), 4, 8)
    code, ix.code = ix.code, None
    want = ix.search(bad, torch.tensor([n + 4]), 4, 8)
    ix.code = code
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)


def test_non_finite_keys_turn_the_c_search_off():
    ix = LayerIndex(1, 4, StoreConfig())
    ix.add(torch.randn(10, 1, 4), torch.arange(10), torch.arange(10))
    assert ix.searches_in_c(1)
    bad = torch.randn(3, 1, 4)
    bad[1, 0, 2] = float("inf")
    ix.add(bad, torch.arange(10, 13), torch.arange(10, 13))
    assert not ix.searches_in_c(1)  # the PyTorch search still answers
    ids, _, _ = ix.search(torch.randn(1, 1, 4), torch.tensor([100]), 4, 5)
    assert (ids >= 0).all()


def test_store_search_reads_values_from_the_file_and_the_queue(tmp_path):
    """LayerStore.search: the C path reads values from the file's map, and values not yet written from the
    queue; both equal what was added."""
    g = torch.Generator().manual_seed(0)
    Hk, Dh, n = 2, 8, 600
    k, v = torch.randn(n, Hk, Dh, generator=g), torch.randn(n, Hk, Dh, generator=g)
    with Store.open(tmp_path / "s", make_spec("x", {0: (Hk, Dh)})) as s:
        ls = s.layer(0)
        ls.add(0, torch.arange(400), k[:400], v[:400])
        s.flush()
        ls.add(0, torch.arange(400, n), k[400:], v[400:])  # may still be queued
        q = torch.randn(1, 2 * Hk, Dh, generator=g)
        for limit in (n - 1, 399, 50):
            keys, vals, found = ls.search(0, q, torch.tensor([limit + 4]), 4, 24)
            ids, _, _ = ls.index[0].search(q, torch.tensor([limit + 4]), 4, 24)
            assert found.all()
            head = (torch.arange(2 * Hk) // 2)[:, None]
            torch.testing.assert_close(vals[0], v[ids[0], head], rtol=0, atol=0)
            torch.testing.assert_close(keys[0], k[ids[0], head], rtol=0, atol=0)


def test_the_kernel_can_be_switched_off():
    """BMOJO_STORE_KERNEL=0: no C search (the reason is given), and the index answers with PyTorch."""
    code = ("from bmojo.memory import kernel; from bmojo.memory.index import LayerIndex; "
            "from bmojo.memory.store import StoreConfig; import torch\n"
            "assert not kernel.available() and 'BMOJO_STORE_KERNEL' in kernel.error()\n"
            "ix = LayerIndex(1, 4, StoreConfig()); ix.add(torch.randn(9, 1, 4), torch.arange(9), torch.arange(9))\n"
            "assert ix.code is None and not ix.searches_in_c(1)\n"
            "print(int((ix.search(torch.randn(1, 1, 4), torch.tensor([20]), 4, 3)[0] >= 0).sum()))")
    env = {**os.environ, "BMOJO_STORE_KERNEL": "0"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "3"
