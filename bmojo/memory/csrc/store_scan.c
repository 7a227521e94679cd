/* Exact top-k search of one layer's store index for a few queries (the decode step), in one call, with the
   values of what it finds read from the store's file.

   Layout (bmojo/memory/index.py, LayerIndex; the pointers and sizes arrive in one Index struct): n entries,
   capacity cap (a multiple of 8), Hk kv heads, Dh wide, P = ceil(Dh / 2) pairs of dimensions.
     k32    float32 (Hk, cap, Dh)          the keys, exact (one entry's key is contiguous: the re-score is cheap)
     code   int8    (Hk, cap/8, P, 8, 2)   the keys as 8-bit codes, 8 entries side by side, a pair of dimensions
                                           per entry adjacent (a zero pad dimension when Dh is odd): k ~ scale code
     scale  float32 (Hk, cap/8)            per kv head and block of 8 entries: the block's max |k_d| / 127
     pos, seen, ids  int64 (cap,)          position, running max of positions, entry id
   Query r (of nq) has H = Hk * G heads (head h reads kv head h / G) and sees the entries at positions <= limit[r];
   entries [0, v) are all visible, where v counts the leading entries with seen <= limit (seen is a running max),
   so only [v, n) is checked entry by entry.

   Why it is exact.  The scan reads the 8-bit codes (a quarter of the float32 bytes: the scan is memory bound)
   in integers: the query too is coded, q ~ sq qi with 16-bit qi (sq = max |q_d| / QMAX, QMAX = 32767 or less so
   that |qi . code| <= QMAX 127 2P fits an int32), and A = qi . code is an exact int32 sum (the products of a
   pair of dimensions added by one instruction, vpmaddwd).  A code is
   within half a step of the key, |k_d - scale code_d| <= scale / 2, and |q_d - sq qi_d| <= 0.51 sq, so
     q . k - sq scale A = sum_d q_d (k_d - scale code_d) + sum_d (q_d - sq qi_d) scale code_d
   is at most scale (|q|_1 / 2 + 0.51 sq 127 Dh).  The approximate score a = (scale sq) A takes three float32
   roundings (|a| 2^-22 covers them), and the exact score it stands for is itself computed in float32 (Dh fused
   multiply-adds, within 128 Dh 2^-24 scale |q|_1), so e = scale c1 + |a| 2^-22 with
   c1 = 1.01 (|q|_1 (1/2 + 128 Dh 2^-24) + 0.51 sq 127 Dh) bounds |a - score| (1% margin).  Each entry gives
   [a - e, a + e]; t, the k-th largest lower end, is a lower bound on the k-th best exact score, so an entry
   whose upper end is below t cannot be in the top k.  The scan keeps every entry whose upper end reaches the
   running t (which only rises), scores those again from the float32 keys, and returns the best k: the exact
   top-k, ties to the older entry.  A query that is not finite is refused (the caller searches with PyTorch).

   A head starts from a hint: the entries its previous query found (consecutive decoding queries often find
   many of the same entries).
   If k of them are visible, the k-th best of their exact scores, t0, is also a lower bound on the k-th best
   exact score (k entries reach it), so the scan starts at t = t0 instead of -inf and keeps few candidates from
   its very first blocks.  The hint only moves the start: any k visible entries give a valid t0.

   Built on first use by bmojo/memory/kernel.py (cc -O3 -march=native); without AVX2 and FMA it reports
   bmojo_store_simd() == 0 and the caller keeps its PyTorch path. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define SIMD 1
#else
#define SIMD 0
#endif

int bmojo_store_simd(void) { return SIMD; }

enum { PREFETCH = 4096 }; /* bytes of codes fetched ahead of the scan */

#if SIMD

typedef struct {
    float s;   /* the upper end while scanning, the exact score after the re-score */
    int64_t j; /* entry slot */
} Cand;

typedef struct { /* the k largest lower ends seen (a min-heap) and every entry whose upper end reached them */
    float *heap;
    int64_t nheap, k;
    Cand *cand;
    int64_t ncand, capcand;
    float bound; /* the larger of floor and the heap's minimum once it holds k */
    float floor; /* t0, from the hint (-inf without one) */
    Cand *heap_c; /* the result: the exact top-k */
} Sel;

static int sel_offer(Sel *S, float lo, float hi, int64_t j) {
    if (!(hi >= S->bound)) return 0;
    if (S->nheap < S->k) {
        int64_t i = S->nheap++;
        for (; i > 0 && S->heap[(i - 1) / 2] > lo; i = (i - 1) / 2) S->heap[i] = S->heap[(i - 1) / 2];
        S->heap[i] = lo;
        if (S->nheap == S->k) S->bound = fmaxf(S->floor, S->heap[0]);
    } else if (lo > S->heap[0]) { /* replace the minimum, sift down */
        int64_t i = 0, n = S->nheap;
        for (;;) {
            int64_t c = 2 * i + 1;
            if (c >= n) break;
            if (c + 1 < n && S->heap[c + 1] < S->heap[c]) c++;
            if (S->heap[c] >= lo) break;
            S->heap[i] = S->heap[c];
            i = c;
        }
        S->heap[i] = lo;
        S->bound = fmaxf(S->floor, S->heap[0]);
    }
    if (S->ncand == S->capcand) { /* drop what the risen bound excludes; grow if that is not enough */
        int64_t m = 0;
        for (int64_t i = 0; i < S->ncand; i++)
            if (S->cand[i].s >= S->bound) S->cand[m++] = S->cand[i];
        S->ncand = m;
        if (2 * m > S->capcand) {
            Cand *c = realloc(S->cand, sizeof(Cand) * 2 * S->capcand);
            if (!c) return -1;
            S->cand = c;
            S->capcand *= 2;
        }
    }
    S->cand[S->ncand].s = hi;
    S->cand[S->ncand].j = j;
    S->ncand++;
    return 0;
}

static int better(Cand x, Cand y) { /* higher score first, ties to the older slot */
    return x.s > y.s || (x.s == y.s && x.j < y.j);
}

static void sift_down(Cand *h, int64_t n, int64_t i) { /* max-heap by `better` */
    Cand x = h[i];
    for (;;) {
        int64_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && better(h[c + 1], h[c])) c++;
        if (!better(h[c], x)) break;
        h[i] = h[c];
        i = c;
    }
    h[i] = x;
}

static float dot_exact(const float *qv, const float *k, int64_t Dh) {
    float s = 0.f;
    for (int64_t d = 0; d < Dh; d++) s = fmaf(qv[d], k[d], s);
    return s;
}

/* The exact top-k among the kept entries, best first, into S->heap_c; returns how many (<= k).  The entries are
   re-scored in order of their upper ends, and the re-scoring stops once the k-th best exact score exceeds the next
   upper end: usually after little more than k of them, so few float32 keys are read. */
static int64_t best_exact(Sel *S, const float *qv, const float *k32h, int64_t Dh) {
    int64_t m = 0, nr = 0, k = S->k;
    for (int64_t i = 0; i < S->ncand; i++)
        if (S->cand[i].s >= S->bound) S->cand[m++] = S->cand[i];
    for (int64_t i = m / 2 - 1; i >= 0; i--) sift_down(S->cand, m, i);
    Cand *R = S->heap_c;
    while (m > 0 && (nr < k || S->cand[0].s >= R[k - 1].s)) {
        Cand batch[8]; /* pop up to 8 at once and fetch their keys together: the reads overlap */
        int nbat = 0;
        while (nbat < 8 && m > 0 && (nr < k || S->cand[0].s >= R[k - 1].s)) {
            batch[nbat] = S->cand[0];
            _mm_prefetch((const char *)(k32h + batch[nbat++].j * Dh), _MM_HINT_T0);
            S->cand[0] = S->cand[--m];
            sift_down(S->cand, m, 0);
        }
        for (int b = 0; b < nbat; b++) {
            Cand c = {dot_exact(qv, k32h + batch[b].j * Dh, Dh), batch[b].j};
            if (nr == k && !better(c, R[k - 1])) continue;
            int64_t i = nr < k ? nr++ : k - 1; /* insert in order */
            for (; i > 0 && better(c, R[i - 1]); i--) R[i] = R[i - 1];
            R[i] = c;
        }
    }
    return nr;
}

static inline __attribute__((always_inline)) int offer_lanes(Sel *S, __m256i acc, float ssq, float sc1,
                                                             int64_t first) {
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    __m256 a = _mm256_mul_ps(_mm256_cvtepi32_ps(acc), _mm256_set1_ps(ssq));
    __m256 e = _mm256_fmadd_ps(_mm256_and_ps(a, absmask), _mm256_set1_ps(0x1p-22f), _mm256_set1_ps(sc1));
    __m256 hi = _mm256_add_ps(a, e);
    int mask = _mm256_movemask_ps(_mm256_cmp_ps(hi, _mm256_set1_ps(S->bound), _CMP_GE_OQ));
    if (!mask) return 0;
    float h[8], l[8];
    _mm256_storeu_ps(h, hi);
    _mm256_storeu_ps(l, _mm256_sub_ps(a, e));
    for (; mask; mask &= mask - 1) {
        int i = __builtin_ctz(mask);
        if (sel_offer(S, l[i], h[i], first + i)) return -1;
    }
    return 0;
}

typedef struct { /* one query head, coded: qp[p] holds (qi[2p], qi[2p+1]) as two int16 in one int32 */
    const int32_t *qp;
    float sq, c1; /* the query's scale and error constant (see the top) */
} QCode;

/* Scan the 8-entry blocks [0, nb) of one kv head for G query heads at once.  G and P are constants after
   inlining, so the loop over P unrolls and the G accumulators stay in registers (integer adds: the chains are
   short, one block at a time is enough). */
static inline __attribute__((always_inline)) int scan_blocks(const QCode *Q, int G, int64_t P, const int8_t *code,
                                                             const float *scale, int64_t nb, Sel *S) {
    for (int64_t b = 0; b < nb; b++) {
        __m256i acc[4];
        for (int g = 0; g < G; g++) acc[g] = _mm256_setzero_si256();
        const int8_t *cb = code + b * P * 16;
        for (int64_t o = 0; o < P * 16; o += 64) /* fetch ahead: the stream comes from memory, not cache */
            _mm_prefetch((const char *)(cb + PREFETCH + o), _MM_HINT_T0);
        for (int64_t p = 0; p < P; p++) {
            __m256i kv = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(cb + p * 16)));
            for (int g = 0; g < G; g++)
                acc[g] = _mm256_add_epi32(acc[g], _mm256_madd_epi16(kv, _mm256_set1_epi32(Q[g].qp[p])));
        }
        for (int g = 0; g < G; g++)
            if (offer_lanes(&S[g], acc[g], scale[b] * Q[g].sq, scale[b] * Q[g].c1, b * 8)) return -1;
    }
    return 0;
}

static inline __attribute__((always_inline)) int scan_p(const QCode *Q, int G, int64_t P, const int8_t *code,
                                                        const float *scale, int64_t nb, Sel *S) {
    switch (G) { /* one specialised loop per group size */
        case 1: return scan_blocks(Q, 1, P, code, scale, nb, S);
        case 2: return scan_blocks(Q, 2, P, code, scale, nb, S);
        case 3: return scan_blocks(Q, 3, P, code, scale, nb, S);
        default: return scan_blocks(Q, 4, P, code, scale, nb, S);
    }
}

static int scan(const QCode *Q, int G, int64_t P, const int8_t *code, const float *scale, int64_t nb, Sel *S) {
    switch (P) { /* and per common head width (16, 32, 64, 128): the loop over pairs of dimensions unrolls */
        case 8: return scan_p(Q, G, 8, code, scale, nb, S);
        case 16: return scan_p(Q, G, 16, code, scale, nb, S);
        case 32: return scan_p(Q, G, 32, code, scale, nb, S);
        case 64: return scan_p(Q, G, 64, code, scale, nb, S);
        default: return scan_p(Q, G, P, code, scale, nb, S);
    }
}

/* Code one query head (Dh floats) into qp (P int32 pairs); 0, or -3 when it is not finite. */
static int code_query(const float *qh, int64_t Dh, int64_t P, int32_t *qp, QCode *Q) {
    float mx = 0.f, l1 = 0.f;
    for (int64_t d = 0; d < Dh; d++) {
        mx = fmaxf(mx, fabsf(qh[d]));
        l1 += fabsf(qh[d]);
    }
    if (!isfinite(mx) || !isfinite(l1)) return -3;
    /* |qi . code| <= QMAX 127 (2P) must fit an int32 */
    const float qmax = fminf(32767.f, floorf(2147483647.f / (127.f * 2.f * (float)P)));
    float sq = mx > 0.f ? mx / qmax : 0.f, inv = mx > 0.f ? qmax / mx : 0.f;
    for (int64_t p = 0; p < P; p++) {
        int32_t w[2];
        for (int t = 0; t < 2; t++) {
            float v = 2 * p + t < Dh ? fminf(fmaxf(nearbyintf(qh[2 * p + t] * inv), -qmax), qmax) : 0.f;
            w[t] = (int32_t)v;
        }
        qp[p] = (int32_t)(((uint32_t)(uint16_t)(int16_t)w[1] << 16) | (uint16_t)(int16_t)w[0]);
    }
    Q->qp = qp;
    Q->sq = sq;
    Q->c1 = 1.01f * (l1 * (0.5f + 128.f * (float)Dh * 0x1p-24f) + 0.51f * sq * 127.f * (float)Dh);
    return 0;
}

static int64_t upper_bound(const int64_t *a, int64_t n, int64_t x) { /* first index with a[i] > x */
    int64_t lo = 0, hi = n;
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2;
        if (a[mid] <= x) lo = mid + 1; else hi = mid;
    }
    return lo;
}

#endif /* SIMD */

/* One layer's index as bmojo/memory/index.py keeps it (LayerIndex), with where the store's values are read:
   entry id's value for kv head h is Dh float32 at vbase + id * rec + voff + h * Dh * 4, for ids < written (the
   records on disk).  Python fills it (a ctypes Structure of the same fields) when the index grows. */
typedef struct {
    const int8_t *code;
    const float *scale, *k32;
    const int64_t *pos, *seen, *ids;
    int64_t n, cap, Hk, G, Dh, topk;
    const char *vbase;
    int64_t rec, voff, written;
    int64_t *hint; /* (Hk * G, topk) slots each head found last time (-1: none), or NULL; updated here */
} Index;

#if SIMD

typedef struct { /* one call's outputs (see bmojo_store_search) */
    int64_t *ids;
    float *keys, *scores, *vals;
    int late;
} Out;

/* One query's heads that read kv head kh: scan, the unsorted rest, the exact top-k, the outputs. */
static int search_task(const Index *X, const float *q, int64_t limit, int64_t r, int64_t kh, Sel *S, int32_t *qp,
                       Out *O) {
    const int64_t Dh = X->Dh, G = X->G, cap = X->cap, topk = X->topk, n = X->n, P = (Dh + 1) / 2;
    const float *k32h = X->k32 + kh * Dh * cap;
    int64_t nb = upper_bound(X->seen, n, limit) / 8;
    for (int64_t g0 = 0; g0 < G; g0 += 4) {
        int gt = (int)(G - g0 < 4 ? G - g0 : 4);
        const float *qh = q + ((r * X->Hk + kh) * G + g0) * Dh;
        QCode Q[4];
        for (int g = 0; g < gt; g++) {
            if (code_query(qh + g * Dh, Dh, P, qp + g * P, &Q[g])) return -3;
            S[g].nheap = S[g].ncand = 0;
            S[g].floor = -INFINITY;
            if (X->hint) { /* t0: the k-th best exact score of the last top-k, when all k are visible */
                const int64_t *hj = X->hint + (kh * G + g0 + g) * topk;
                float t0 = INFINITY;
                int64_t have = 0;
                for (int64_t i = 0; i < topk; i++)
                    if (hj[i] >= 0 && hj[i] < n && X->pos[hj[i]] <= limit) {
                        t0 = fminf(t0, dot_exact(qh + g * Dh, k32h + hj[i] * Dh, Dh));
                        have++;
                    }
                if (have == topk) S[g].floor = t0;
            }
            S[g].bound = S[g].floor;
        }
        if (scan(Q, gt, P, X->code + kh * (cap / 8) * P * 16, X->scale + kh * (cap / 8), nb, S)) return -1;
        for (int64_t j = nb * 8; j < n; j++) { /* the rest: exact scores, checked positions */
            if (X->pos[j] > limit) continue;
            for (int g = 0; g < gt; g++) {
                float sc = dot_exact(qh + g * Dh, k32h + j * Dh, Dh);
                if (sel_offer(&S[g], sc, sc, j)) return -1;
            }
        }
        for (int g = 0; g < gt; g++) { /* re-score the survivors exactly, keep the best */
            int64_t m = best_exact(&S[g], qh + g * Dh, k32h, Dh), h = (r * X->Hk + kh) * G + g0 + g;
            if (X->hint) /* where this head's next scan starts */
                for (int64_t i = 0; i < topk; i++)
                    X->hint[(kh * G + g0 + g) * topk + i] = i < m ? S[g].heap_c[i].j : -1;
            for (int64_t i = 0; i < topk; i++) {
                int64_t o = h * topk + i, j = i < m ? S[g].heap_c[i].j : -1, id = j >= 0 ? X->ids[j] : -1;
                O->ids[o] = id;
                if (O->scores) O->scores[o] = j >= 0 ? S[g].heap_c[i].s : -INFINITY;
                if (j >= 0)
                    memcpy(O->keys + o * Dh, k32h + j * Dh, sizeof(float) * Dh);
                else
                    memset(O->keys + o * Dh, 0, sizeof(float) * Dh);
                if (!O->vals) continue;
                if (X->vbase && id >= 0 && id < X->written)
                    memcpy(O->vals + o * Dh, X->vbase + id * X->rec + X->voff + kh * Dh * 4, sizeof(float) * Dh);
                else
                    memset(O->vals + o * Dh, 0, sizeof(float) * Dh);
                O->late += id >= X->written;
            }
        }
    }
    return 0;
}

#endif /* SIMD */

/* The exact top-k of the nq queries q (nq, Hk*G, Dh) float32, query r seeing the entries at positions
   <= limit[r].  Outputs (nq, Hk*G, topk[, Dh]), best first: ids (-1 where fewer entries are visible), keys
   (zero there), exact scores q.k (-inf there; optional: NULL skips them), and with vals the values (zero for
   the ids >= written, and where there is none, for the caller to fill).  Returns how many found ids are
   >= written (0 without vals), -1 when memory ran out, -2 without SIMD, -3 for a query that is not finite.
   One thread: in the decoding loop the scan streams the codes from memory, and a second core, measured, did
   not make it faster (the bandwidth is shared), while handing it work cost tens of microseconds. */
int bmojo_store_search(const Index *X, const float *q, const int64_t *limit, int64_t nq, int64_t *ids_out,
                       float *keys_out, float *scores_out, float *vals_out) {
#if !SIMD
    (void)X; (void)q; (void)limit; (void)nq; (void)ids_out; (void)keys_out; (void)scores_out; (void)vals_out;
    return -2;
#else
    Out O = {ids_out, keys_out, scores_out, vals_out, 0};
    const int64_t P = (X->Dh + 1) / 2;
    Sel S[4];
    int rc = 0;
    int32_t *qp = malloc(sizeof(int32_t) * 4 * P);
    if (!qp) rc = -1;
    for (int g = 0; g < 4; g++) {
        S[g].k = X->topk;
        S[g].heap = malloc(sizeof(float) * X->topk);
        S[g].capcand = 4 * X->topk + 256;
        S[g].cand = malloc(sizeof(Cand) * S[g].capcand);
        S[g].heap_c = malloc(sizeof(Cand) * X->topk);
        if (!S[g].heap || !S[g].cand || !S[g].heap_c) rc = -1;
    }
    for (int64_t t = 0; t < nq * X->Hk && rc == 0; t++)
        rc = search_task(X, q, limit[t / X->Hk], t / X->Hk, t % X->Hk, S, qp, &O);
    for (int g = 0; g < 4; g++) {
        free(S[g].heap);
        free(S[g].cand);
        free(S[g].heap_c);
    }
    free(qp);
    return rc ? rc : O.late;
#endif
}
