// Fused CPU selective scan (Mamba-1), forward and backward, float32.
//
//   h_t = exp(dt_t * A) * h_{t-1} + (dt_t * x_t) B_t        h: (E, N) per batch row
//   y_t = h_t . C_t                                            (D * x is added in Python)
//
// Shapes (contiguous): x, dt (B, T, E); A (E, N); Bm, Cm (B, T, N); h0 (B, E, N).
// Work is split over (batch row, block of EB channels); each task keeps its block's states in a small
// local array and walks T once.  The forward saves the state every K steps (B, ceil(T/K), E, N); the
// backward recomputes each K-step chunk of states from there and walks it in reverse, so the memory is
// O(B T E N / K) instead of O(B T E N).  Gradients of Bm, Cm and A sum over channels (and rows), so each
// thread accumulates them in its own buffer, and the buffers are summed at the end.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <bit>
#include <cstdint>
#include <type_traits>
#include <cmath>
#include <vector>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

namespace {

constexpr int64_t EB = 16;  // channels per task

struct Dims {
  int64_t B, T, E, N, K, n_chunks, n_blocks;
  int64_t P = 1;  // channels sharing one dt (Mamba-2's head width); dt is (B, T, E / P)
};

Dims dims_of(const torch::Tensor& x, const torch::Tensor& A, int64_t K) {
  Dims d{x.size(0), x.size(1), x.size(2), A.size(1), K, 0, 0};
  d.n_chunks = (d.T + K - 1) / K;
  d.n_blocks = (d.E + EB - 1) / EB;
  return d;
}

// exp(x) = 2^k * 2^f with k = round(x log2 e), |f| <= 1/2, and 2^f from its degree-6 Taylor series
// (relative error < 2e-7).  Inlined, it vectorizes with the loops around it, unlike a call into libm.
inline float fast_exp(float x) {
  x = std::min(std::max(x, -87.0f), 88.0f);
  const float t = x * 1.4426950408889634f;
  const float k = std::nearbyint(t);
  const float f = t - k;
  float p = 1.5403530e-4f;
  p = p * f + 1.3333558e-3f;
  p = p * f + 9.6181291e-3f;
  p = p * f + 5.5504109e-2f;
  p = p * f + 2.4022651e-1f;
  p = p * f + 6.9314718e-1f;
  p = p * f + 1.0f;
  return p * std::bit_cast<float>((static_cast<int32_t>(k) + 127) << 23);
}

void check(const torch::Tensor& t, const char* name, int64_t dim) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor");
  TORCH_CHECK(t.scalar_type() == torch::kFloat32, name, " must be float32, got ", t.scalar_type());
  TORCH_CHECK(t.dim() == dim, name, " must have ", dim, " dims, got ", t.dim());
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
}

}  // namespace

// Task-local layout: the block's EB channels are the fastest dimension, h[n * EB + j], so every inner loop
// runs over the EB channels as whole vectors (lanes past ne hold zeros and are never written back).
struct Block {
  float dt[EB], x[EB], u[EB], gy[EB];
  int64_t head[EB];  // dt column of each lane, (e0 + j) / P, fixed for a task
};

inline void init_block(Block& k, const Dims& d, int64_t e0) {
  for (int64_t j = 0; j < EB; ++j) k.head[j] = std::min(e0 + j, d.E - 1) / d.P;
}

// row = (b * T + t) * E + e0; dt is read at (b * T + t, (e0 + j) / P)
inline void load_block(Block& k, const Dims& d, const float* pdt, const float* px, const float* pgy, int64_t row,
                       int64_t ne) {
  if (d.P == 1) {
    for (int64_t j = 0; j < EB; ++j) k.dt[j] = j < ne ? pdt[row + j] : 0.f;
  } else {
    const float* dt_row = pdt + (row / d.E) * (d.E / d.P);
    for (int64_t j = 0; j < EB; ++j) k.dt[j] = j < ne ? dt_row[k.head[j]] : 0.f;
  }
  for (int64_t j = 0; j < EB; ++j) {
    k.x[j] = j < ne ? px[row + j] : 0.f;
    k.u[j] = k.dt[j] * k.x[j];
    k.gy[j] = pgy != nullptr && j < ne ? pgy[row + j] : 0.f;
  }
}

// state (E, N) rows e0.. <-> task layout (N, EB)
inline void gather(float* __restrict__ dst, const float* __restrict__ src, int64_t ne, int64_t N) {
  for (int64_t n = 0; n < N; ++n)
    for (int64_t j = 0; j < EB; ++j) dst[n * EB + j] = j < ne ? src[j * N + n] : 0.f;
}

inline void scatter(float* __restrict__ dst, const float* __restrict__ src, int64_t ne, int64_t N) {
  for (int64_t j = 0; j < ne; ++j)
    for (int64_t n = 0; n < N; ++n) dst[j * N + n] = src[n * EB + j];
}

// One step of the recurrence for the block: h <- exp(dt A) h + u B_t (dA kept in da when given); y = h . C_t.
// SCALAR: A is the same for every state of a channel (Mamba-2's one decay per head), so exp runs once per lane.
template <int64_t NS, bool SCALAR>
inline void step_block(int64_t N, const Block& k, const float* __restrict__ At, const float* __restrict__ Bt,
                       const float* __restrict__ Ct, const float* __restrict__ hp, float* __restrict__ hn,
                       float* __restrict__ da, float* __restrict__ y) {
  float acc[EB] = {}, a0[EB];
  if constexpr (SCALAR)
    for (int64_t j = 0; j < EB; ++j) a0[j] = fast_exp(k.dt[j] * At[j]);
  for (int64_t n = 0; n < (NS > 0 ? NS : N); ++n) {
    for (int64_t j = 0; j < EB; ++j) {
      const float a = SCALAR ? a0[j] : fast_exp(k.dt[j] * At[n * EB + j]);
      if (da != nullptr) da[n * EB + j] = a;
      hn[n * EB + j] = a * hp[n * EB + j] + k.u[j] * Bt[n];
      acc[j] += hn[n * EB + j] * Ct[n];
    }
  }
  if (y != nullptr) std::copy_n(acc, EB, y);
}

// One forward task: batch row b, channels e0 .. e0+ne-1.  NS > 0 fixes the state size at compile time.
template <int64_t NS, bool SCALAR>
void fwd_task(const Dims& d, int64_t b, int64_t e0, int64_t ne, const float* __restrict__ px,
              const float* __restrict__ pdt, const float* __restrict__ pA, const float* __restrict__ pB,
              const float* __restrict__ pC, const float* __restrict__ ph0, float* __restrict__ py,
              float* __restrict__ phT, float* __restrict__ pck, float* __restrict__ h, float* __restrict__ At) {
  const int64_t N = NS > 0 ? NS : d.N, E = d.E, T = d.T, K = d.K;
  gather(At, pA + e0 * N, ne, N);
  gather(h, ph0 + (b * E + e0) * N, ne, N);
  Block k;
  init_block(k, d, e0);
  float y[EB];
  for (int64_t t = 0; t < T; ++t) {
    if (t % K == 0) scatter(pck + ((b * d.n_chunks + t / K) * E + e0) * N, h, ne, N);
    const int64_t row = (b * T + t) * E + e0;
    load_block(k, d, pdt, px, nullptr, row, ne);
    step_block<NS, SCALAR>(N, k, At, pB + (b * T + t) * N, pC + (b * T + t) * N, h, h, nullptr, y);
    std::copy_n(y, ne, py + row);
  }
  scatter(phT + (b * E + e0) * N, h, ne, N);
}

// f(state size (0 = any), scalar decay) with both known at compile time
template <typename F>
void dispatch(int64_t N, bool scalar, F&& f) {
  auto with_n = [&](auto sc) {
    switch (N) {
      case 16: f(std::integral_constant<int64_t, 16>{}, sc); break;
      case 8: f(std::integral_constant<int64_t, 8>{}, sc); break;
      default: f(std::integral_constant<int64_t, 0>{}, sc);
    }
  };
  if (scalar) with_n(std::true_type{}); else with_n(std::false_type{});
}

// -> (y (B, T, E), h_T (B, E, N), checkpoints (B, n_chunks, E, N): the state before each K-step chunk)
std::vector<torch::Tensor> scan_fwd(torch::Tensor x, torch::Tensor dt, torch::Tensor A, torch::Tensor Bm,
                                    torch::Tensor Cm, torch::Tensor h0, int64_t K, bool scalar_decay, int64_t P) {
  check(x, "x", 3); check(dt, "dt", 3); check(A, "A", 2); check(Bm, "B", 3); check(Cm, "C", 3); check(h0, "h0", 3);
  TORCH_CHECK(K > 0, "chunk must be > 0");
  Dims d = dims_of(x, A, K);
  d.P = P;
  TORCH_CHECK(P >= 1 && d.E % P == 0 && dt.size(2) * P == d.E, "dt must have E / P channels");
  auto y = torch::empty({d.B, d.T, d.E}, x.options());
  auto hT = torch::empty({d.B, d.E, d.N}, x.options());
  auto ckpt = torch::empty({d.B, d.n_chunks, d.E, d.N}, x.options());
  const float *px = x.data_ptr<float>(), *pdt = dt.data_ptr<float>(), *pA = A.data_ptr<float>();
  const float *pB = Bm.data_ptr<float>(), *pC = Cm.data_ptr<float>(), *ph0 = h0.data_ptr<float>();
  float *py = y.data_ptr<float>(), *phT = hT.data_ptr<float>(), *pck = ckpt.data_ptr<float>();
  dispatch(d.N, scalar_decay, [&](auto ns, auto sc) {
    at::parallel_for(0, d.B * d.n_blocks, 1, [&](int64_t begin, int64_t end) {
      std::vector<float> h(EB * d.N), At(EB * d.N);
      for (int64_t task = begin; task < end; ++task) {
        const int64_t b = task / d.n_blocks, e0 = (task % d.n_blocks) * EB, ne = std::min(EB, d.E - e0);
        fwd_task<decltype(ns)::value, decltype(sc)::value>(d, b, e0, ne, px, pdt, pA, pB, pC, ph0, py, phT, pck, h.data(), At.data());
      }
    });
  });
  return {y, hT, ckpt};
}

// out[n] += sum over the EB lanes of row n of m (N x EB).  With AVX2, eight rows at a time through a tree of
// horizontal adds instead of one full horizontal reduction per row.
inline void add_row_sums(const float* __restrict__ m, int64_t N, float* __restrict__ out) {
  int64_t n = 0;
#if defined(__AVX2__)
  static_assert(EB == 16, "the AVX2 path reads two 8-lane halves per row");
  for (; n + 8 <= N; n += 8) {
    __m256 s[8];
    for (int r = 0; r < 8; ++r)
      s[r] = _mm256_add_ps(_mm256_loadu_ps(m + (n + r) * EB), _mm256_loadu_ps(m + (n + r) * EB + 8));
    const __m256 a = _mm256_hadd_ps(_mm256_hadd_ps(s[0], s[1]), _mm256_hadd_ps(s[2], s[3]));
    const __m256 b = _mm256_hadd_ps(_mm256_hadd_ps(s[4], s[5]), _mm256_hadd_ps(s[6], s[7]));
    const __m256 sums = _mm256_add_ps(_mm256_permute2f128_ps(a, b, 0x20), _mm256_permute2f128_ps(a, b, 0x31));
    _mm256_storeu_ps(out + n, _mm256_add_ps(_mm256_loadu_ps(out + n), sums));
  }
#endif
  for (; n < N; ++n) {
    float acc = 0.f;
    for (int64_t j = 0; j < EB; ++j) acc += m[n * EB + j];
    out[n] += acc;
  }
}

// One backward task (same split as the forward).  gB_me, gC_me, gA_me are this thread's partial sums.
template <int64_t NS, bool SCALAR>
void bwd_task(const Dims& d, int64_t b, int64_t e0, int64_t ne, const float* __restrict__ px,
              const float* __restrict__ pdt, const float* __restrict__ pA, const float* __restrict__ pB,
              const float* __restrict__ pC, const float* __restrict__ pck, const float* __restrict__ pgy,
              const float* __restrict__ pghT, float* __restrict__ pgx, float* __restrict__ pgdt,
              float* __restrict__ pgh0, float* __restrict__ gB_me, float* __restrict__ gC_me,
              float* __restrict__ gA_me, float* __restrict__ hs, float* __restrict__ dAs, float* __restrict__ G,
              float* __restrict__ At, float* __restrict__ gA, float* __restrict__ pb, float* __restrict__ pc) {
  const int64_t N = NS > 0 ? NS : d.N, E = d.E, T = d.T, K = d.K, S = EB * N;
  gather(At, pA + e0 * N, ne, N);
  gather(G, pghT + (b * E + e0) * N, ne, N);  // dL/dh after the last step
  std::fill_n(gA, S, 0.f);
  Block k;
  init_block(k, d, e0);
  for (int64_t c = d.n_chunks - 1; c >= 0; --c) {
    const int64_t t0 = c * K, L = std::min(K, T - t0);
    // 1. recompute the chunk: hs[0] = state before it, hs[l + 1] = state after step t0 + l
    gather(hs, pck + ((b * d.n_chunks + c) * E + e0) * N, ne, N);
    for (int64_t l = 0; l < L; ++l) {
      const int64_t t = t0 + l;
      load_block(k, d, pdt, px, nullptr, (b * T + t) * E + e0, ne);
      step_block<NS, SCALAR>(N, k, At, pB + (b * T + t) * N, pC + (b * T + t) * N, hs + l * S, hs + (l + 1) * S,
                     dAs + l * S, nullptr);
    }
    // 2. walk it backwards; G holds dL/dh_t from the steps after t
    for (int64_t l = L - 1; l >= 0; --l) {
      const int64_t t = t0 + l, row = (b * T + t) * E + e0;
      const float* __restrict__ Bt = pB + (b * T + t) * N;
      const float* __restrict__ Ct = pC + (b * T + t) * N;
      float* __restrict__ gBt = gB_me + (b * T + t) * N;
      float* __restrict__ gCt = gC_me + (b * T + t) * N;
      const float* __restrict__ hp = hs + l * S;
      const float* __restrict__ hn = hs + (l + 1) * S;
      const float* __restrict__ da = dAs + l * S;
      load_block(k, d, pdt, px, pgy, row, ne);
      float g_u[EB] = {}, g_dt[EB] = {};
      for (int64_t n = 0; n < N; ++n) {
        for (int64_t j = 0; j < EB; ++j) {
          const int64_t i = n * EB + j;
          const float g = G[i] + k.gy[j] * Ct[n];  // total dL/dh_t
          pc[i] = k.gy[j] * hn[i];  // per-lane terms of dL/dC_t and dL/dB_t, summed over lanes below
          pb[i] = g * k.u[j];
          g_u[j] += g * Bt[n];
          const float g_log = g * da[i] * hp[i];  // dL/d(dt A) at (t, n, j)
          g_dt[j] += g_log * At[i];
          gA[i] += g_log * k.dt[j];
          G[i] = g * da[i];  // dL/dh_{t-1} through the recurrence
        }
      }
      add_row_sums(pb, N, gBt);
      add_row_sums(pc, N, gCt);
      for (int64_t j = 0; j < ne; ++j) {
        pgdt[row + j] = g_dt[j] + g_u[j] * k.x[j];
        pgx[row + j] = g_u[j] * k.dt[j];
      }
    }
  }
  scatter(pgh0 + (b * E + e0) * N, G, ne, N);
  for (int64_t j = 0; j < ne; ++j)
    for (int64_t n = 0; n < N; ++n) gA_me[(e0 + j) * N + n] += gA[n * EB + j];
}

// -> (gx, gdt, gA, gB, gC, gh0)
std::vector<torch::Tensor> scan_bwd(torch::Tensor x, torch::Tensor dt, torch::Tensor A, torch::Tensor Bm,
                                    torch::Tensor Cm, torch::Tensor ckpt, torch::Tensor gy, torch::Tensor ghT,
                                    int64_t K, bool scalar_decay, int64_t P) {
  check(gy, "grad y", 3); check(ghT, "grad h_T", 3); check(ckpt, "checkpoints", 4);
  Dims d = dims_of(x, A, K);
  d.P = P;
  const int64_t E = d.E, N = d.N, T = d.T;
  const int64_t n_threads = at::get_num_threads();
  // gdt per channel; the caller sums it over the P channels that share a dt
  auto gx = torch::empty_like(x), gdt = torch::empty_like(x), gh0 = torch::empty({d.B, E, N}, x.options());
  // per-thread partial sums of the gradients that add up over channels or rows
  auto gB_t = torch::zeros({n_threads, d.B, T, N}, x.options());
  auto gC_t = torch::zeros({n_threads, d.B, T, N}, x.options());
  auto gA_t = torch::zeros({n_threads, E, N}, x.options());
  const float *px = x.data_ptr<float>(), *pdt = dt.data_ptr<float>(), *pA = A.data_ptr<float>();
  const float *pB = Bm.data_ptr<float>(), *pC = Cm.data_ptr<float>(), *pck = ckpt.data_ptr<float>();
  const float *pgy = gy.data_ptr<float>(), *pghT = ghT.data_ptr<float>();
  float *pgx = gx.data_ptr<float>(), *pgdt = gdt.data_ptr<float>(), *pgh0 = gh0.data_ptr<float>();
  float *pgB = gB_t.data_ptr<float>(), *pgC = gC_t.data_ptr<float>(), *pgA = gA_t.data_ptr<float>();
  dispatch(N, scalar_decay, [&](auto ns, auto sc) {
    at::parallel_for(0, d.B * d.n_blocks, 1, [&](int64_t begin, int64_t end) {
      const int64_t tid = at::get_thread_num();
      std::vector<float> hs((K + 1) * EB * N), dAs(K * EB * N), G(EB * N), At(EB * N), gA(EB * N), pb(EB * N),
          pc(EB * N);
      for (int64_t task = begin; task < end; ++task) {
        const int64_t b = task / d.n_blocks, e0 = (task % d.n_blocks) * EB, ne = std::min(EB, E - e0);
        bwd_task<decltype(ns)::value, decltype(sc)::value>(d, b, e0, ne, px, pdt, pA, pB, pC, pck, pgy, pghT, pgx, pgdt, pgh0,
                                      pgB + tid * d.B * T * N, pgC + tid * d.B * T * N, pgA + tid * E * N,
                                      hs.data(), dAs.data(), G.data(), At.data(), gA.data(), pb.data(), pc.data());
      }
    });
  });
  return {gx, gdt, gA_t.sum(0), gB_t.sum(0), gC_t.sum(0), gh0};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("scan_fwd", &scan_fwd, "fused selective scan forward (CPU, float32)");
  m.def("scan_bwd", &scan_bwd, "fused selective scan backward (CPU, float32), recomputing states");
}
