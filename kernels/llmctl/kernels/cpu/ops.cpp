// CPU kernels of the engine's memory-bound ops, registered as torch.ops.llmctl_cpu.*.
//
// Same signatures and results as kernels/reference.py (the oracle, tested side by side): fp32 math,
// one rounding to the tensor's dtype per output, like the Triton kernels. Plain loops over fp32 rows
// that the compiler vectorises (-O3 -march=native); at::parallel_for over rows or (sequence, KV head).
// Built on first use by kernels/cpu/__init__.py; shapes and dtypes are checked there, in Python.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

namespace {

// -- dtype <-> fp32 rows ------------------------------------------------------------------------
inline float bf16_to_float(uint16_t bits) {
  uint32_t u = static_cast<uint32_t>(bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

inline uint16_t float_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);  // NaN stays NaN
  u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest even
  return static_cast<uint16_t>(u >> 16);
}

template <typename T>
struct Io;

template <>
struct Io<float> {
  static void load(const float* src, float* dst, int64_t n) { std::memcpy(dst, src, n * sizeof(float)); }
  static void store(const float* src, float* dst, int64_t n) { std::memcpy(dst, src, n * sizeof(float)); }
};

template <>
struct Io<c10::BFloat16> {
  static void load(const c10::BFloat16* src, float* dst, int64_t n) {
    const uint16_t* s = reinterpret_cast<const uint16_t*>(src);
    for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_float(s[i]);
  }
  static void store(const float* src, c10::BFloat16* dst, int64_t n) {
    uint16_t* d = reinterpret_cast<uint16_t*>(dst);
    for (int64_t i = 0; i < n; ++i) d[i] = float_to_bf16(src[i]);
  }
};

template <>
struct Io<c10::Half> {
  static void load(const c10::Half* src, float* dst, int64_t n) {
    for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<float>(src[i]);
  }
  static void store(const float* src, c10::Half* dst, int64_t n) {
    for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<c10::Half>(src[i]);
  }
};

// Round a fp32 row through T and back (the reference rounds intermediate results to the tensor's dtype).
template <typename T>
inline void round_through(float* row, int64_t n) {
  if constexpr (!std::is_same_v<T, float>) {
    std::vector<T> tmp(n);
    Io<T>::store(row, tmp.data(), n);
    Io<T>::load(tmp.data(), row, n);
  }
}

#define LLMCTL_DISPATCH(dtype, ...)                                                   \
  [&] {                                                                               \
    switch (dtype) {                                                                  \
      case at::kFloat: { using scalar_t = float; return __VA_ARGS__(); }              \
      case at::kBFloat16: { using scalar_t = c10::BFloat16; return __VA_ARGS__(); }   \
      case at::kHalf: { using scalar_t = c10::Half; return __VA_ARGS__(); }           \
      default: TORCH_CHECK(false, "llmctl_cpu: unsupported dtype ", dtype);           \
    }                                                                                 \
  }()

// -- rms_norm -----------------------------------------------------------------------------------
// out = weight * round(normalise(x + residual)); new_residual = round(x + residual). x, residual, out,
// new_residual: [T, N] contiguous in one dtype; weight [N] in that dtype.
void rms_norm(const at::Tensor& x, const std::optional<at::Tensor>& residual, const at::Tensor& weight,
              double eps, at::Tensor& out, const std::optional<at::Tensor>& new_residual) {
  const int64_t rows = x.size(0), n = x.size(1);
  LLMCTL_DISPATCH(x.scalar_type(), [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* rp = residual ? residual->const_data_ptr<scalar_t>() : nullptr;
    scalar_t* np = new_residual ? new_residual->mutable_data_ptr<scalar_t>() : nullptr;
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    std::vector<float> w(n);
    Io<scalar_t>::load(weight.const_data_ptr<scalar_t>(), w.data(), n);
    at::parallel_for(0, rows, 64, [&](int64_t begin, int64_t end) {
      std::vector<float> h(n), r(n);
      for (int64_t row = begin; row < end; ++row) {
        Io<scalar_t>::load(xp + row * n, h.data(), n);
        if (rp) {
          Io<scalar_t>::load(rp + row * n, r.data(), n);
          for (int64_t i = 0; i < n; ++i) h[i] += r[i];
          Io<scalar_t>::store(h.data(), np + row * n, n);
          round_through<scalar_t>(h.data(), n);
        }
        float ss = 0.f;
        for (int64_t i = 0; i < n; ++i) ss += h[i] * h[i];
        const float inv = 1.f / std::sqrt(ss / static_cast<float>(n) + static_cast<float>(eps));
        for (int64_t i = 0; i < n; ++i) h[i] *= inv;
        round_through<scalar_t>(h.data(), n);
        for (int64_t i = 0; i < n; ++i) h[i] *= w[i];
        Io<scalar_t>::store(h.data(), op + row * n, n);
      }
    });
  });
}

// -- rotary embedding, in place -----------------------------------------------------------------
// qk: [T, heads, D] rows of stride `row_stride` elements (the q and k heads of a fused qkv row);
// cos/sin: [T, D] in qk's dtype. Neox style: x * cos + rotate_half(x) * sin.
void rotary_embedding(at::Tensor& qkv, int64_t row_stride, int64_t heads, int64_t head_dim,
                      const at::Tensor& cos, const at::Tensor& sin) {
  const int64_t rows = cos.size(0), d = head_dim, half = head_dim / 2;
  LLMCTL_DISPATCH(qkv.scalar_type(), [&] {
    scalar_t* base = qkv.mutable_data_ptr<scalar_t>();
    const scalar_t* cp = cos.const_data_ptr<scalar_t>();
    const scalar_t* sp = sin.const_data_ptr<scalar_t>();
    at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
      std::vector<float> c(d), s(d), x(d), y(d);
      for (int64_t t = begin; t < end; ++t) {
        Io<scalar_t>::load(cp + t * d, c.data(), d);
        Io<scalar_t>::load(sp + t * d, s.data(), d);
        for (int64_t h = 0; h < heads; ++h) {
          scalar_t* row = base + t * row_stride + h * d;
          Io<scalar_t>::load(row, x.data(), d);
          for (int64_t i = 0; i < half; ++i) {
            y[i] = x[i] * c[i] - x[i + half] * s[i];
            y[i + half] = x[i + half] * c[i + half] + x[i] * s[i + half];
          }
          Io<scalar_t>::store(y.data(), row, d);
        }
      }
    });
  });
}

// -- silu(gate) * up ----------------------------------------------------------------------------
// gate_up: [T, 2I] contiguous -> out [T, I].
void silu_and_mul(const at::Tensor& gate_up, at::Tensor& out) {
  const int64_t rows = gate_up.size(0), inter = gate_up.size(1) / 2;
  LLMCTL_DISPATCH(gate_up.scalar_type(), [&] {
    const scalar_t* gp = gate_up.const_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, rows, 8, [&](int64_t begin, int64_t end) {
      std::vector<float> g(inter), u(inter);
      for (int64_t t = begin; t < end; ++t) {
        Io<scalar_t>::load(gp + t * 2 * inter, g.data(), inter);
        Io<scalar_t>::load(gp + t * 2 * inter + inter, u.data(), inter);
        for (int64_t i = 0; i < inter; ++i) g[i] = g[i] / (1.f + std::exp(-g[i])) * u[i];
        Io<scalar_t>::store(g.data(), op + t * inter, inter);
      }
    });
  });
}

// -- paged attention ----------------------------------------------------------------------------
// One query row per (token, head) attends keys [0, visible) of its sequence, read straight from the
// paged pools [num_blocks, block_size, KVH, D] through the sequence's block table. The query heads of a
// KV head are processed together, so each K/V row is read once per group. Online softmax in fp32.
template <typename T>
struct PagedKV {
  const T* k;
  const T* v;
  const int32_t* table;  // this sequence's block table
  int64_t block_size, kv_heads, d;
  inline int64_t row(int64_t pos, int64_t kvh) const {
    const int64_t block = table[pos / block_size];
    return ((block * block_size + pos % block_size) * kv_heads + kvh) * d;
  }
};

// `rows` query rows (fp32, pre-scaled, [rows, D]) whose row r sees keys [0, visible[r]);
// writes the normalised outputs to acc [rows, D].
template <typename T>
void attend_rows(const PagedKV<T>& kv, int64_t kvh, const float* q, int64_t rows, const int64_t* visible,
                 float* acc, int64_t chunk) {
  const int64_t d = kv.d;
  int64_t max_visible = 0;
  for (int64_t r = 0; r < rows; ++r) max_visible = std::max(max_visible, visible[r]);
  std::vector<float> m(rows, -std::numeric_limits<float>::infinity()), l(rows, 0.f);
  std::vector<float> kf(chunk * d), vf(chunk * d), s(rows * chunk);
  std::fill(acc, acc + rows * d, 0.f);
  for (int64_t start = 0; start < max_visible; start += chunk) {
    const int64_t n = std::min(chunk, max_visible - start);
    for (int64_t j = 0; j < n; ++j) {
      Io<T>::load(kv.k + kv.row(start + j, kvh), kf.data() + j * d, d);
      Io<T>::load(kv.v + kv.row(start + j, kvh), vf.data() + j * d, d);
    }
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t seen = std::min(n, visible[r] - start);  // keys of this chunk row r may see
      if (seen <= 0) continue;
      float* sr = s.data() + r * chunk;
      const float* qr = q + r * d;
      float chunk_max = -std::numeric_limits<float>::infinity();
      for (int64_t j = 0; j < seen; ++j) {
        const float* kj = kf.data() + j * d;
        float dot = 0.f;
        for (int64_t i = 0; i < d; ++i) dot += qr[i] * kj[i];
        sr[j] = dot;
        chunk_max = std::max(chunk_max, dot);
      }
      const float new_m = std::max(m[r], chunk_max);
      const float correction = std::exp(m[r] - new_m);
      float sum = 0.f;
      for (int64_t j = 0; j < seen; ++j) {
        sr[j] = std::exp(sr[j] - new_m);
        sum += sr[j];
      }
      l[r] = l[r] * correction + sum;
      m[r] = new_m;
      float* ar = acc + r * d;
      for (int64_t i = 0; i < d; ++i) ar[i] *= correction;
      for (int64_t j = 0; j < seen; ++j) {
        const float p = sr[j];
        const float* vj = vf.data() + j * d;
        for (int64_t i = 0; i < d; ++i) ar[i] += p * vj[i];
      }
    }
  }
  for (int64_t r = 0; r < rows; ++r) {
    const float inv = l[r] > 0.f ? 1.f / l[r] : 0.f;
    for (int64_t i = 0; i < d; ++i) acc[r * d + i] *= inv;
  }
}

// q [B, H, D] (one token per sequence); block_tables [B, W] int32; context_lens [B] int32 -> out [B, H, D].
void paged_attention_decode(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                            const at::Tensor& block_tables, const at::Tensor& context_lens, double scale,
                            at::Tensor& out) {
  const int64_t b = q.size(0), h = q.size(1), d = q.size(2);
  const int64_t bs = k_cache.size(1), kvh = k_cache.size(2), g = h / kvh, width = block_tables.size(1);
  LLMCTL_DISPATCH(q.scalar_type(), [&] {
    const scalar_t* qp = q.const_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    const int32_t* tables = block_tables.const_data_ptr<int32_t>();
    const int32_t* lens = context_lens.const_data_ptr<int32_t>();
    at::parallel_for(0, b * kvh, 1, [&](int64_t begin, int64_t end) {
      std::vector<float> qf(g * d), acc(g * d);
      std::vector<int64_t> visible(g);
      for (int64_t task = begin; task < end; ++task) {
        const int64_t seq = task / kvh, head = task % kvh;
        PagedKV<scalar_t> kv{k_cache.const_data_ptr<scalar_t>(), v_cache.const_data_ptr<scalar_t>(),
                             tables + seq * width, bs, kvh, d};
        Io<scalar_t>::load(qp + (seq * h + head * g) * d, qf.data(), g * d);
        for (auto& x : qf) x *= static_cast<float>(scale);
        std::fill(visible.begin(), visible.end(), static_cast<int64_t>(lens[seq]));
        attend_rows<scalar_t>(kv, head, qf.data(), g, visible.data(), acc.data(), bs);
        Io<scalar_t>::store(acc.data(), op + (seq * h + head * g) * d, g * d);
      }
    });
  });
}

// Varlen causal prefill: sequence i's new tokens are rows [cu[i], cu[i+1]) of q [T, H, D], at positions
// starts[i] + 0.. of their sequence; each sees keys up to and including its own position.
void prefill_attention(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                       const at::Tensor& block_tables, const at::Tensor& cu_seqlens, const at::Tensor& starts,
                       double scale, int64_t tile, at::Tensor& out) {
  const int64_t h = q.size(1), d = q.size(2), seqs = starts.size(0);
  const int64_t bs = k_cache.size(1), kvh = k_cache.size(2), g = h / kvh, width = block_tables.size(1);
  const int32_t* cu = cu_seqlens.const_data_ptr<int32_t>();
  const int32_t* st = starts.const_data_ptr<int32_t>();
  // Tasks: (sequence, KV head, tile of query rows), flattened so both threads get work.
  std::vector<int64_t> task_seq, task_row;
  for (int64_t i = 0; i < seqs; ++i)
    for (int64_t r = cu[i]; r < cu[i + 1]; r += tile) {
      task_seq.push_back(i);
      task_row.push_back(r);
    }
  const int64_t tasks = static_cast<int64_t>(task_seq.size());
  LLMCTL_DISPATCH(q.scalar_type(), [&] {
    const scalar_t* qp = q.const_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    const int32_t* tables = block_tables.const_data_ptr<int32_t>();
    at::parallel_for(0, tasks * kvh, 1, [&](int64_t begin, int64_t end) {
      std::vector<float> qf(tile * g * d), acc(tile * g * d);
      std::vector<int64_t> visible(tile * g);
      for (int64_t t = begin; t < end; ++t) {
        const int64_t task = t / kvh, head = t % kvh, seq = task_seq[task], r0 = task_row[task];
        const int64_t rows = std::min(tile, static_cast<int64_t>(cu[seq + 1]) - r0);
        PagedKV<scalar_t> kv{k_cache.const_data_ptr<scalar_t>(), v_cache.const_data_ptr<scalar_t>(),
                             tables + seq * width, bs, kvh, d};
        for (int64_t r = 0; r < rows; ++r) {
          Io<scalar_t>::load(qp + ((r0 + r) * h + head * g) * d, qf.data() + r * g * d, g * d);
          const int64_t pos = st[seq] + (r0 + r - cu[seq]);
          for (int64_t j = 0; j < g; ++j) visible[r * g + j] = pos + 1;
        }
        for (int64_t i = 0; i < rows * g * d; ++i) qf[i] *= static_cast<float>(scale);
        attend_rows<scalar_t>(kv, head, qf.data(), rows * g, visible.data(), acc.data(), 4 * bs);
        for (int64_t r = 0; r < rows; ++r)
          Io<scalar_t>::store(acc.data() + r * g * d, op + ((r0 + r) * h + head * g) * d, g * d);
      }
    });
  });
}

}  // namespace

TORCH_LIBRARY(llmctl_cpu, m) {
  m.def("rms_norm(Tensor x, Tensor? residual, Tensor weight, float eps, Tensor(a!) out, Tensor(b!)? new_residual) -> ()");
  m.def("rotary_embedding(Tensor(a!) qkv, int row_stride, int heads, int head_dim, Tensor cos, Tensor sin) -> ()");
  m.def("silu_and_mul(Tensor gate_up, Tensor(a!) out) -> ()");
  m.def("paged_attention_decode(Tensor q, Tensor k_cache, Tensor v_cache, Tensor block_tables, Tensor context_lens, float scale, Tensor(a!) out) -> ()");
  m.def("prefill_attention(Tensor q, Tensor k_cache, Tensor v_cache, Tensor block_tables, Tensor cu_seqlens, Tensor starts, float scale, int tile, Tensor(a!) out) -> ()");
}

TORCH_LIBRARY_IMPL(llmctl_cpu, CPU, m) {
  m.impl("rms_norm", &rms_norm);
  m.impl("rotary_embedding", &rotary_embedding);
  m.impl("silu_and_mul", &silu_and_mul);
  m.impl("paged_attention_decode", &paged_attention_decode);
  m.impl("prefill_attention", &prefill_attention);
}
