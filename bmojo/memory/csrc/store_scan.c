/* Exact top-k search of one layer's store index for a few queries (the decode step), in one call, with the
   values of what it finds read from the store's file.

   Layout (bmojo/memory/index.py, LayerIndex): n entries, capacity cap (a multiple of 8), Hk kv heads, Dh wide.
     k32    float32 (Hk, cap, Dh)       the keys, exact (one entry's key is contiguous: the re-score is cheap)
     code   int8    (Hk, cap/8, Dh, 8)  the keys as 8-bit codes, 8 entries side by side: k ~ scale * code
     scale  float32 (Hk, cap/8)         per kv head and block of 8 entries: the block's max |k_d| / 127
     pos, seen, ids  int64 (cap,)       position, running max of positions, entry id
   Query r (of nq) has H = Hk * G heads (head h reads kv head h / G) and sees the entries at positions <= limit[r];
   entries [0, v) are all visible, where v counts the leading entries with seen <= limit (seen is a running max),
   so only [v, n) is checked entry by entry.

   Why it is exact.  The scan reads the 8-bit codes (a quarter of the float32 bytes: the scan is memory bound).
   A code is within half a step of the key, |k_d - scale code_d| <= scale / 2, so the approximate score
   a = scale (q . code), computed in float32, is within e = scale |q|_1 (1/2 + 127 Dh 2^-24) + |a| 2^-23 of
   q . k (1% margin on top).  Each entry gives [a - e, a + e]; t, the k-th largest lower end, is a lower bound on
   the k-th best exact score, so an entry whose upper end is below t cannot be in the top k.  The scan keeps
   every entry whose upper end reaches the running t (which only rises), scores those again from the float32
   keys, and returns the best k: the exact top-k, ties to the older entry.

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
    float bound; /* the heap's minimum once it holds k, -inf before */
    Cand *heap_c; /* the result: the exact top-k */
} Sel;

static int sel_offer(Sel *S, float lo, float hi, int64_t j) {
    if (!(hi >= S->bound)) return 0;
    if (S->nheap < S->k) {
        int64_t i = S->nheap++;
        for (; i > 0 && S->heap[(i - 1) / 2] > lo; i = (i - 1) / 2) S->heap[i] = S->heap[(i - 1) / 2];
        S->heap[i] = lo;
        if (S->nheap == S->k) S->bound = S->heap[0];
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
        S->bound = S->heap[0];
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

static inline __attribute__((always_inline)) int offer_lanes(Sel *S, __m256 dot, __m256 sc, __m256 c1,
                                                             int64_t first) {
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    __m256 a = _mm256_mul_ps(dot, sc);
    __m256 e = _mm256_fmadd_ps(_mm256_and_ps(a, absmask), _mm256_set1_ps(0x1.02p-23f), _mm256_mul_ps(sc, c1));
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

/* Scan the full 8-entry blocks [0, nb) of one kv head for G query heads at once, NB blocks per step (G and NB
   are constants after inlining, so the G * NB <= 4 accumulators stay in registers and their FMA chains overlap). */
static inline __attribute__((always_inline)) int scan_blocks(const float *q, const float *c1, int G, int NB,
                                                             int64_t Dh, const int8_t *code, const float *scale,
                                                             int64_t nb, Sel *S) {
    __m256 acc[4];
    int64_t b = 0;
    for (; b < nb; b += NB) {
        int nu = b + NB <= nb ? NB : 1; /* the last blocks go one at a time */
        for (int a = 0; a < G * NB; a++) acc[a] = _mm256_setzero_ps();
        const int8_t *cb = code + b * Dh * 8;
        for (int64_t o = 0; o < NB * Dh * 8; o += 64) /* fetch ahead: the stream comes from memory, not cache */
            _mm_prefetch((const char *)(cb + PREFETCH + o), _MM_HINT_T0);
        for (int64_t d = 0; d < Dh; d++) {
            for (int u = 0; u < NB; u++) {
                if (u >= nu) break;
                __m128i raw = _mm_loadl_epi64((const __m128i *)(cb + (u * Dh + d) * 8));
                __m256 kv = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(raw));
                for (int g = 0; g < G; g++)
                    acc[u * G + g] = _mm256_fmadd_ps(_mm256_set1_ps(q[g * Dh + d]), kv, acc[u * G + g]);
            }
        }
        for (int u = 0; u < nu; u++) {
            __m256 sc = _mm256_set1_ps(scale[b + u]);
            for (int g = 0; g < G; g++)
                if (offer_lanes(&S[g], acc[u * G + g], sc, _mm256_set1_ps(c1[g]), (b + u) * 8)) return -1;
        }
        if (nu < NB) b -= NB - 1;
    }
    return 0;
}

static int scan(const float *q, const float *c1, int G, int64_t Dh, const int8_t *code, const float *scale,
                int64_t nb, Sel *S) {
    switch (G) { /* one specialised loop per group size */
        case 1: return scan_blocks(q, c1, 1, 4, Dh, code, scale, nb, S);
        case 2: return scan_blocks(q, c1, 2, 2, Dh, code, scale, nb, S);
        case 3: return scan_blocks(q, c1, 3, 1, Dh, code, scale, nb, S);
        default: return scan_blocks(q, c1, 4, 1, Dh, code, scale, nb, S);
    }
}

static int64_t upper_bound(const int64_t *a, int64_t n, int64_t x) { /* first index with a[i] > x */
    int64_t lo = 0, hi = n;
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2;
        if (a[mid] <= x) lo = mid + 1; else hi = mid;
    }
    return lo;
}

typedef struct { /* one call's arguments (see bmojo_store_search), its range of tasks, and its results */
    const float *q;
    const int64_t *limit;
    int64_t nq, Hk, G, Dh;
    const int8_t *code;
    const float *scale, *k32;
    const int64_t *pos, *seen, *ids;
    int64_t n, cap, topk;
    const char *vbase;
    int64_t rec, voff, written;
    int64_t *ids_out;
    float *keys_out, *scores_out, *vals_out;
    int64_t task0, task1; /* tasks are (query, kv head) pairs, r * Hk + kh */
    int rc, late;
} Job;

/* One query's heads that read kv head kh: scan, the unsorted rest, the exact top-k, the outputs. */
static int search_task(Job *J, int64_t r, int64_t kh, Sel *S) {
    const int64_t Dh = J->Dh, G = J->G, cap = J->cap, topk = J->topk, n = J->n;
    const float *k32h = J->k32 + kh * Dh * cap;
    int64_t nb = upper_bound(J->seen, n, J->limit[r]) / 8;
    for (int64_t g0 = 0; g0 < G; g0 += 4) {
        int gt = (int)(G - g0 < 4 ? G - g0 : 4);
        const float *qh = J->q + ((r * J->Hk + kh) * G + g0) * Dh;
        float c1[4];
        for (int g = 0; g < gt; g++) {
            float l1 = 0.f;
            for (int64_t d = 0; d < Dh; d++) l1 += fabsf(qh[g * Dh + d]);
            c1[g] = 1.01f * l1 * (0.5f + 127.f * (float)Dh * 0x1p-24f);
            S[g].nheap = S[g].ncand = 0;
            S[g].bound = -INFINITY;
        }
        if (scan(qh, c1, gt, Dh, J->code + kh * cap * Dh, J->scale + kh * (cap / 8), nb, S)) return -1;
        for (int64_t j = nb * 8; j < n; j++) { /* the rest: exact scores, checked positions */
            if (J->pos[j] > J->limit[r]) continue;
            for (int g = 0; g < gt; g++) {
                float sc = dot_exact(qh + g * Dh, k32h + j * Dh, Dh);
                if (sel_offer(&S[g], sc, sc, j)) return -1;
            }
        }
        for (int g = 0; g < gt; g++) { /* re-score the survivors exactly, keep the best */
            int64_t m = best_exact(&S[g], qh + g * Dh, k32h, Dh), h = (r * J->Hk + kh) * G + g0 + g;
            for (int64_t i = 0; i < topk; i++) {
                int64_t o = h * topk + i, j = i < m ? S[g].heap_c[i].j : -1, id = j >= 0 ? J->ids[j] : -1;
                J->ids_out[o] = id;
                J->scores_out[o] = j >= 0 ? S[g].heap_c[i].s : -INFINITY;
                if (j >= 0)
                    memcpy(J->keys_out + o * Dh, k32h + j * Dh, sizeof(float) * Dh);
                else
                    memset(J->keys_out + o * Dh, 0, sizeof(float) * Dh);
                if (!J->vals_out) continue;
                if (J->vbase && id >= 0 && id < J->written)
                    memcpy(J->vals_out + o * Dh, J->vbase + id * J->rec + J->voff + kh * Dh * 4, sizeof(float) * Dh);
                else
                    memset(J->vals_out + o * Dh, 0, sizeof(float) * Dh);
                J->late += id >= J->written;
            }
        }
    }
    return 0;
}

static void run_tasks(Job *J) {
    Sel S[4];
    J->rc = 0;
    for (int g = 0; g < 4; g++) {
        S[g].k = J->topk;
        S[g].heap = malloc(sizeof(float) * J->topk);
        S[g].capcand = 4 * J->topk + 256;
        S[g].cand = malloc(sizeof(Cand) * S[g].capcand);
        S[g].heap_c = malloc(sizeof(Cand) * J->topk);
        if (!S[g].heap || !S[g].cand || !S[g].heap_c) J->rc = -1;
    }
    for (int64_t t = J->task0; t < J->task1 && J->rc == 0; t++) J->rc = search_task(J, t / J->Hk, t % J->Hk, S);
    for (int g = 0; g < 4; g++) {
        free(S[g].heap);
        free(S[g].cand);
        free(S[g].heap_c);
    }
}

#endif /* SIMD */

/* Returns the number of found entries with id >= written (0 without vals_out), -1 when memory ran out, -2
   without SIMD.  Outputs (nq, Hk*G, topk[, Dh]): ids (-1 where fewer entries are visible), keys (zero there),
   exact scores q.k (-inf there), best first.  With vals_out, the values too: entry id's value for kv head h is
   Dh float32 at vbase + id * rec + voff + h * Dh * 4, for ids < written (the records on disk); the values of the
   others (none, or not yet written) are zero, for the caller to fill.  One thread: a second one, measured in the
   decoding loop, made it slower (it competes with PyTorch's own threads for this machine's two cores). */
int bmojo_store_search(const float *q, const int64_t *limit, int64_t nq, int64_t Hk, int64_t G, int64_t Dh,
                       const int8_t *code, const float *scale, const float *k32, const int64_t *pos,
                       const int64_t *seen, const int64_t *ids, int64_t n, int64_t cap, int64_t topk,
                       const char *vbase, int64_t rec, int64_t voff, int64_t written,
                       int64_t *ids_out, float *keys_out, float *scores_out, float *vals_out) {
#if !SIMD
    (void)q; (void)limit; (void)nq; (void)Hk; (void)G; (void)Dh; (void)code; (void)scale; (void)k32; (void)pos;
    (void)seen; (void)ids; (void)n; (void)cap; (void)topk; (void)vbase; (void)rec; (void)voff; (void)written;
    (void)ids_out; (void)keys_out; (void)scores_out; (void)vals_out;
    return -2;
#else
    Job job = {q, limit, nq, Hk, G, Dh, code, scale, k32, pos, seen, ids, n, cap, topk, vbase, rec, voff, written,
               ids_out, keys_out, scores_out, vals_out, 0, nq * Hk, 0, 0};
    run_tasks(&job);
    int rc = job.rc, late = job.late;
    return rc ? rc : late;
#endif
}
