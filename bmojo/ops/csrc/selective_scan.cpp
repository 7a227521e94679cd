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
#include <cmath>
#include <vector>

namespace {

constexpr int64_t EB = 16;  // channels per task

struct Dims {
  int64_t B, T, E, N, K, n_chunks, n_blocks;
};

Dims dims_of(const torch::Tensor& x, const torch::Tensor& A, int64_t K) {
  Dims d{x.size(0), x.size(1), x.size(2), A.size(1), K, 0, 0};
  d.n_chunks = (d.T + K - 1) / K;
  d.n_blocks = (d.E + EB - 1) / EB;
  return d;
}

void check(const torch::Tensor& t, const char* name, int64_t dim) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor");
  TORCH_CHECK(t.scalar_type() == torch::kFloat32, name, " must be float32, got ", t.scalar_type());
  TORCH_CHECK(t.dim() == dim, name, " must have ", dim, " dims, got ", t.dim());
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
}

}  // namespace

// -> (y (B, T, E), h_T (B, E, N), checkpoints (B, n_chunks, E, N): the state before each K-step chunk)
std::vector<torch::Tensor> scan_fwd(torch::Tensor x, torch::Tensor dt, torch::Tensor A, torch::Tensor Bm,
                                    torch::Tensor Cm, torch::Tensor h0, int64_t K) {
  check(x, "x", 3); check(dt, "dt", 3); check(A, "A", 2); check(Bm, "B", 3); check(Cm, "C", 3); check(h0, "h0", 3);
  TORCH_CHECK(K > 0, "chunk must be > 0");
  const Dims d = dims_of(x, A, K);
  auto y = torch::empty({d.B, d.T, d.E}, x.options());
  auto hT = torch::empty({d.B, d.E, d.N}, x.options());
  auto ckpt = torch::empty({d.B, d.n_chunks, d.E, d.N}, x.options());
  const float *px = x.data_ptr<float>(), *pdt = dt.data_ptr<float>(), *pA = A.data_ptr<float>();
  const float *pB = Bm.data_ptr<float>(), *pC = Cm.data_ptr<float>(), *ph0 = h0.data_ptr<float>();
  float *py = y.data_ptr<float>(), *phT = hT.data_ptr<float>(), *pck = ckpt.data_ptr<float>();
  const int64_t E = d.E, N = d.N, T = d.T;

  at::parallel_for(0, d.B * d.n_blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> h(EB * N), dA(N);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / d.n_blocks, e0 = (task % d.n_blocks) * EB, ne = std::min(EB, E - e0);
      std::copy_n(ph0 + (b * E + e0) * N, ne * N, h.data());
      for (int64_t t = 0; t < T; ++t) {
        if (t % K == 0) std::copy_n(h.data(), ne * N, pck + ((b * d.n_chunks + t / K) * E + e0) * N);
        const float* Bt = pB + (b * T + t) * N;
        const float* Ct = pC + (b * T + t) * N;
        const int64_t row = (b * T + t) * E + e0;
        for (int64_t j = 0; j < ne; ++j) {
          const float dtv = pdt[row + j], u = dtv * px[row + j];
          const float* Ae = pA + (e0 + j) * N;
          float* hj = h.data() + j * N;
          float acc = 0.f;
          for (int64_t n = 0; n < N; ++n) {
            hj[n] = std::exp(dtv * Ae[n]) * hj[n] + u * Bt[n];
            acc += hj[n] * Ct[n];
          }
          py[row + j] = acc;
        }
      }
      std::copy_n(h.data(), ne * N, phT + (b * E + e0) * N);
    }
  });
  return {y, hT, ckpt};
}

// -> (gx, gdt, gA, gB, gC, gh0)
std::vector<torch::Tensor> scan_bwd(torch::Tensor x, torch::Tensor dt, torch::Tensor A, torch::Tensor Bm,
                                    torch::Tensor Cm, torch::Tensor ckpt, torch::Tensor gy, torch::Tensor ghT,
                                    int64_t K) {
  check(gy, "grad y", 3); check(ghT, "grad h_T", 3); check(ckpt, "checkpoints", 4);
  const Dims d = dims_of(x, A, K);
  const int64_t E = d.E, N = d.N, T = d.T;
  const int64_t n_threads = at::get_num_threads();
  auto gx = torch::empty_like(x), gdt = torch::empty_like(dt), gh0 = torch::empty({d.B, E, N}, x.options());
  // per-thread partial sums of the gradients that add up over channels or rows
  auto gB_t = torch::zeros({n_threads, d.B, T, N}, x.options());
  auto gC_t = torch::zeros({n_threads, d.B, T, N}, x.options());
  auto gA_t = torch::zeros({n_threads, E, N}, x.options());
  const float *px = x.data_ptr<float>(), *pdt = dt.data_ptr<float>(), *pA = A.data_ptr<float>();
  const float *pB = Bm.data_ptr<float>(), *pC = Cm.data_ptr<float>(), *pck = ckpt.data_ptr<float>();
  const float *pgy = gy.data_ptr<float>(), *pghT = ghT.data_ptr<float>();
  float *pgx = gx.data_ptr<float>(), *pgdt = gdt.data_ptr<float>(), *pgh0 = gh0.data_ptr<float>();
  float *pgB = gB_t.data_ptr<float>(), *pgC = gC_t.data_ptr<float>(), *pgA = gA_t.data_ptr<float>();

  at::parallel_for(0, d.B * d.n_blocks, 1, [&](int64_t begin, int64_t end) {
    const int64_t tid = at::get_thread_num();
    float* gB_me = pgB + tid * d.B * T * N;
    float* gC_me = pgC + tid * d.B * T * N;
    float* gA_me = pgA + tid * E * N;
    std::vector<float> hs((K + 1) * EB * N), dAs(K * EB * N), G(EB * N);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / d.n_blocks, e0 = (task % d.n_blocks) * EB, ne = std::min(EB, E - e0);
      std::copy_n(pghT + (b * E + e0) * N, ne * N, G.data());  // dL/dh after the last step
      for (int64_t c = d.n_chunks - 1; c >= 0; --c) {
        const int64_t t0 = c * K, L = std::min(K, T - t0);
        // 1. recompute the chunk: hs[0] = state before it, hs[l + 1] = state after step t0 + l
        std::copy_n(pck + ((b * d.n_chunks + c) * E + e0) * N, ne * N, hs.data());
        for (int64_t l = 0; l < L; ++l) {
          const int64_t t = t0 + l, row = (b * T + t) * E + e0;
          const float* Bt = pB + (b * T + t) * N;
          for (int64_t j = 0; j < ne; ++j) {
            const float dtv = pdt[row + j], u = dtv * px[row + j];
            const float* Ae = pA + (e0 + j) * N;
            const float* hp = hs.data() + (l * EB + j) * N;
            float* hn = hs.data() + ((l + 1) * EB + j) * N;
            float* da = dAs.data() + (l * EB + j) * N;
            for (int64_t n = 0; n < N; ++n) {
              da[n] = std::exp(dtv * Ae[n]);
              hn[n] = da[n] * hp[n] + u * Bt[n];
            }
          }
        }
        // 2. walk it backwards; G holds dL/dh_t from the steps after t
        for (int64_t l = L - 1; l >= 0; --l) {
          const int64_t t = t0 + l, row = (b * T + t) * E + e0;
          const float* Bt = pB + (b * T + t) * N;
          const float* Ct = pC + (b * T + t) * N;
          float* gBt = gB_me + (b * T + t) * N;
          float* gCt = gC_me + (b * T + t) * N;
          for (int64_t j = 0; j < ne; ++j) {
            const float dtv = pdt[row + j], xv = px[row + j], u = dtv * xv, gyv = pgy[row + j];
            const float* Ae = pA + (e0 + j) * N;
            const float* hp = hs.data() + (l * EB + j) * N;
            const float* hn = hs.data() + ((l + 1) * EB + j) * N;
            const float* da = dAs.data() + (l * EB + j) * N;
            float* Gj = G.data() + j * N;
            float* gAe = gA_me + (e0 + j) * N;
            float g_u = 0.f, g_dt = 0.f;
            for (int64_t n = 0; n < N; ++n) {
              const float g = Gj[n] + gyv * Ct[n];  // total dL/dh_t
              gCt[n] += gyv * hn[n];
              gBt[n] += g * u;
              g_u += g * Bt[n];
              const float g_log = g * da[n] * hp[n];  // dL/d(dt A) at (t, n)
              g_dt += g_log * Ae[n];
              gAe[n] += g_log * dtv;
              Gj[n] = g * da[n];  // dL/dh_{t-1} through the recurrence
            }
            pgdt[row + j] = g_dt + g_u * xv;
            pgx[row + j] = g_u * dtv;
          }
        }
      }
      std::copy_n(G.data(), ne * N, pgh0 + (b * E + e0) * N);
    }
  });
  return {gx, gdt, gA_t.sum(0), gB_t.sum(0), gC_t.sum(0), gh0};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("scan_fwd", &scan_fwd, "fused selective scan forward (CPU, float32)");
  m.def("scan_bwd", &scan_bwd, "fused selective scan backward (CPU, float32), recomputing states");
}
