// CPU kernels of the engine's memory-bound ops, registered as torch.ops.llmctl_cpu.*.
//
// Same signatures and results as kernels/reference.py (the oracle, tested side by side): fp32 math,
// one rounding to the tensor's dtype per output, like the Triton kernels. Plain loops over fp32 rows
// that the compiler vectorises (-O3 -march=native); at::parallel_for over rows or (sequence, KV head).
// Built on first use by kernels/cpu/__init__.py; shapes and dtypes are checked there, in Python.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/linear.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#if defined(__AVX512BF16__) || defined(__AVX2__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <array>
#include <utility>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

namespace {

// -- dtype <-> fp32 rows ------------------------------------------------------------------------
inline float bf16_to_float(uint16_t bits) {
  uint32_t u = static_cast<uint32_t>(bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

// Round to nearest even; a NaN stays NaN. A select, not a branch, so loops of it vectorise.
inline uint32_t round_bf16_bits(uint32_t u) {
  const uint32_t rounded = u + 0x7fffu + ((u >> 16) & 1u);
  return ((u & 0x7fffffffu) > 0x7f800000u ? (u | 0x400000u) : rounded) & 0xffff0000u;
}

inline uint16_t float_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return static_cast<uint16_t>(round_bf16_bits(u) >> 16);
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
  if constexpr (std::is_same_v<T, c10::BFloat16>) {
    for (int64_t i = 0; i < n; ++i) {
      uint32_t u;
      std::memcpy(&u, row + i, sizeof(u));
      u = round_bf16_bits(u);
      std::memcpy(row + i, &u, sizeof(u));
    }
  } else if constexpr (std::is_same_v<T, c10::Half>) {
    for (int64_t i = 0; i < n; ++i) row[i] = static_cast<float>(static_cast<c10::Half>(row[i]));
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

// exp(x) for x <= 0 (softmax arguments, max subtracted), branch-free so loops of it vectorise: x = n ln2 + r,
// |r| <= ln2/2, e^r by a degree-6 polynomial (relative error ~2e-7), 2^n by building the exponent bits.
// Below -87 the result flushes to 0 (as expf underflows); -inf gives 0.
inline float exp_nonpositive(float x) {
  x = std::max(x, -87.f);
  const float n = std::nearbyint(x * 1.44269504088896341f);
  const float r = x - n * 0.693145751953125f - n * 1.428606765330187e-06f;
  float p = 1.3888889e-3f;
  p = p * r + 8.3333333e-3f;
  p = p * r + 4.1666667e-2f;
  p = p * r + 1.6666667e-1f;
  p = p * r + 0.5f;
  p = p * r + 1.f;
  p = p * r + 1.f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

// -- bf16 rows on AVX512 (the elementwise kernels' fast paths) -----------------------------------------
#ifdef __AVX512BF16__
inline __m512 load16_bf16(const c10::BFloat16* p) {
  const __m256i bits = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16));
}
inline void store16_bf16(c10::BFloat16* p, __m512 v) {  // round to nearest even
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), (__m256i)_mm512_cvtneps_pbh(v));
}
inline __m512 round16_bf16(__m512 v) {  // v rounded to bf16 and back
  const __m256i bits = (__m256i)_mm512_cvtneps_pbh(v);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16));
}

// rms_norm on bf16 rows of n % 16 == 0 elements: the same steps as the generic loop, 16 lanes at a time.
void rms_norm_bf16(const c10::BFloat16* xp, const c10::BFloat16* rp, const float* w, float eps, int64_t rows,
                   int64_t n, c10::BFloat16* op, c10::BFloat16* np) {
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const c10::BFloat16* x = xp + row * n;
      const c10::BFloat16* h_src = x;  // where the (rounded) sum lies for the second pass
      __m512 ss = _mm512_setzero_ps();
      for (int64_t i = 0; i < n; i += 16) {
        __m512 h = load16_bf16(x + i);
        if (rp) {
          h = round16_bf16(_mm512_add_ps(h, load16_bf16(rp + row * n + i)));
          store16_bf16(np + row * n + i, h);
        }
        ss = _mm512_fmadd_ps(h, h, ss);
      }
      if (rp) h_src = np + row * n;
      const float inv = 1.f / std::sqrt(_mm512_reduce_add_ps(ss) / static_cast<float>(n) + eps);
      const __m512 vinv = _mm512_set1_ps(inv);
      for (int64_t i = 0; i < n; i += 16) {
        const __m512 y = round16_bf16(_mm512_mul_ps(load16_bf16(h_src + i), vinv));
        store16_bf16(op + row * n + i, _mm512_mul_ps(y, _mm512_loadu_ps(w + i)));
      }
    }
  });
}

// Neox rotary on bf16 heads of D % 32 == 0 dims, in place: the generic loop's arithmetic, 16 lanes at a time.
void rotary_bf16(c10::BFloat16* base, int64_t row_stride, int64_t rows, int64_t heads, int64_t d,
                 const c10::BFloat16* cp, const c10::BFloat16* sp) {
  const int64_t half = d / 2;
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      for (int64_t i = 0; i < half; i += 16) {
        const __m512 c_lo = load16_bf16(cp + t * d + i), c_hi = load16_bf16(cp + t * d + half + i);
        const __m512 s_lo = load16_bf16(sp + t * d + i), s_hi = load16_bf16(sp + t * d + half + i);
        for (int64_t h = 0; h < heads; ++h) {
          c10::BFloat16* row = base + t * row_stride + h * d;
          const __m512 lo = load16_bf16(row + i), hi = load16_bf16(row + half + i);
          store16_bf16(row + i, _mm512_sub_ps(_mm512_mul_ps(lo, c_lo), _mm512_mul_ps(hi, s_lo)));
          store16_bf16(row + half + i, _mm512_add_ps(_mm512_mul_ps(hi, c_hi), _mm512_mul_ps(lo, s_hi)));
        }
      }
    }
  });
}
// exp_nonpositive on 16 lanes.
inline __m512 exp_nonpositive16(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-87.f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187e-06f), r);
  __m512 p = _mm512_set1_ps(1.3888889e-3f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3333333e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1666667e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666667e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
  const __m512i bits = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
  return _mm512_mul_ps(p, _mm512_castsi512_ps(bits));
}

// silu(gate) * up on bf16 rows of inter % 16 == 0: the generic loop's arithmetic, 16 lanes at a time.
void silu_and_mul_bf16(const c10::BFloat16* gp, int64_t rows, int64_t inter, c10::BFloat16* op) {
  at::parallel_for(0, rows, 8, [&](int64_t begin, int64_t end) {
    const __m512 one = _mm512_set1_ps(1.f);
    for (int64_t t = begin; t < end; ++t)
      for (int64_t i = 0; i < inter; i += 16) {
        const __m512 g = load16_bf16(gp + t * 2 * inter + i), u = load16_bf16(gp + t * 2 * inter + inter + i);
        const __m512 e = exp_nonpositive16(_mm512_sub_ps(_mm512_setzero_ps(), _mm512_abs_ps(g)));
        const __mmask16 positive = _mm512_cmp_ps_mask(g, _mm512_setzero_ps(), _CMP_GE_OQ);
        const __m512 sigmoid = _mm512_div_ps(_mm512_mask_blend_ps(positive, e, one), _mm512_add_ps(one, e));
        store16_bf16(op + t * inter + i, _mm512_mul_ps(_mm512_mul_ps(g, sigmoid), u));
      }
  });
}
#endif

// -- rms_norm -----------------------------------------------------------------------------------
// out = weight * round(normalise(x + residual)); new_residual = round(x + residual). x, residual, out,
// new_residual: [T, N] contiguous in one dtype; weight [N] in that dtype.
void rms_norm(const at::Tensor& x, const std::optional<at::Tensor>& residual, const at::Tensor& weight,
              double eps, at::Tensor& out, const std::optional<at::Tensor>& new_residual) {
  const int64_t rows = x.size(0), n = x.size(1);
#ifdef __AVX512BF16__
  if (x.scalar_type() == at::kBFloat16 && n % 16 == 0) {
    std::vector<float> w(n);
    Io<c10::BFloat16>::load(weight.const_data_ptr<c10::BFloat16>(), w.data(), n);
    rms_norm_bf16(x.const_data_ptr<c10::BFloat16>(), residual ? residual->const_data_ptr<c10::BFloat16>() : nullptr,
                  w.data(), static_cast<float>(eps), rows, n, out.mutable_data_ptr<c10::BFloat16>(),
                  new_residual ? new_residual->mutable_data_ptr<c10::BFloat16>() : nullptr);
    return;
  }
#endif
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
#ifdef __AVX512BF16__
  if (qkv.scalar_type() == at::kBFloat16 && d % 32 == 0) {
    rotary_bf16(qkv.mutable_data_ptr<c10::BFloat16>(), row_stride, rows, heads, d, cos.const_data_ptr<c10::BFloat16>(),
                sin.const_data_ptr<c10::BFloat16>());
    return;
  }
#endif
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
#ifdef __AVX512BF16__
  if (gate_up.scalar_type() == at::kBFloat16 && inter % 16 == 0) {
    silu_and_mul_bf16(gate_up.const_data_ptr<c10::BFloat16>(), rows, inter, out.mutable_data_ptr<c10::BFloat16>());
    return;
  }
#endif
  LLMCTL_DISPATCH(gate_up.scalar_type(), [&] {
    const scalar_t* gp = gate_up.const_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, rows, 8, [&](int64_t begin, int64_t end) {
      std::vector<float> g(inter), u(inter);
      for (int64_t t = begin; t < end; ++t) {
        Io<scalar_t>::load(gp + t * 2 * inter, g.data(), inter);
        Io<scalar_t>::load(gp + t * 2 * inter + inter, u.data(), inter);
        for (int64_t i = 0; i < inter; ++i) {
          // sigmoid from e = exp(-|g|) <= 1: no overflow, and the loop vectorises.
          const float e = exp_nonpositive(-std::abs(g[i]));
          const float sigmoid = (g[i] >= 0.f ? 1.f : e) / (1.f + e);
          g[i] = g[i] * sigmoid * u[i];
        }
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

constexpr int64_t KEYS = 32;  // keys per chunk: a chunk's scores of one row fit in two AVX-512 registers

// GCC/Clang vector extensions: 16 floats, one AVX-512 register (two AVX2 ones elsewhere). Locals of this type
// stay in registers across a loop, which arrays indexed in the loop do not.
typedef float f16v __attribute__((vector_size(64)));

inline f16v load16(const float* p) {
  f16v v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

inline void store16(float* p, f16v v) { std::memcpy(p, &v, sizeof(v)); }

// s[R][KEYS] = q[R][d] x kt[d, KEYS]: R rows' scores against a chunk as broadcast-FMAs into 2R registers.
// R independent rows keep 2R FMA chains in flight (one or two would wait on the FMA latency).
template <int D, int R>
inline void scores(const float* q, const float* kt, int64_t dim, float* s) {
  static_assert(KEYS == 32, "two registers of scores per row");
  const int64_t d = D > 0 ? D : dim;
  f16v lo[R] = {}, hi[R] = {};
  for (int64_t i = 0; i < d; ++i) {
    const f16v k0 = load16(kt + i * KEYS), k1 = load16(kt + i * KEYS + 16);
    for (int r = 0; r < R; ++r) {
      lo[r] += q[r * d + i] * k0;
      hi[r] += q[r * d + i] * k1;
    }
  }
  for (int r = 0; r < R; ++r) {
    store16(s + r * KEYS, lo[r]);
    store16(s + r * KEYS + 16, hi[r]);
  }
}

// o[r][d] = o * correction[r] + sum_j p[r][j] * v[j, d] for R rows; with D a multiple of 16 the rows live in
// R * D/16 registers.
template <int D, int R>
inline void accumulate(float* o, const float* correction, const float* p, int64_t n, const float* v, int64_t dim) {
  if constexpr (D > 0 && D % 16 == 0) {
    f16v acc[R][D / 16];
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < D / 16; ++c) acc[r][c] = load16(o + r * D + 16 * c) * correction[r];
    for (int64_t j = 0; j < n; ++j) {
      f16v vj[D / 16];
      for (int c = 0; c < D / 16; ++c) vj[c] = load16(v + j * D + 16 * c);
      for (int r = 0; r < R; ++r)
        for (int c = 0; c < D / 16; ++c) acc[r][c] += p[r * KEYS + j] * vj[c];
    }
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < D / 16; ++c) store16(o + r * D + 16 * c, acc[r][c]);
  } else {
    for (int r = 0; r < R; ++r) {
      float* orow = o + r * dim;
      for (int64_t i = 0; i < dim; ++i) orow[i] *= correction[r];
      for (int64_t j = 0; j < n; ++j)
        for (int64_t i = 0; i < dim; ++i) orow[i] += p[r * KEYS + j] * v[j * dim + i];
    }
  }
}

// The online-softmax step of R rows over one chunk's scaled scores s[R][KEYS]: masks keys a row may not see,
// turns scores into weights exp(s - new max), and updates each row's running max m and sum l. A row that
// sees none of the chunk gets weights 0 and correction 1 (its state is unchanged).
template <int R>
inline void online_softmax(float* s, int64_t n, int64_t start, const int64_t* visible, float* m, float* l,
                           float* correction) {
  for (int r = 0; r < R; ++r) {
    float* sr = s + r * KEYS;
    const int64_t seen = std::max<int64_t>(0, std::min(n, visible[r] - start));
    if (seen == 0) {
      std::fill(sr, sr + KEYS, 0.f);
      correction[r] = 1.f;
      continue;
    }
    for (int64_t j = seen; j < KEYS; ++j) sr[j] = -std::numeric_limits<float>::infinity();
    float chunk_max = sr[0];
    for (int64_t j = 1; j < KEYS; ++j) chunk_max = std::max(chunk_max, sr[j]);
    const float new_m = std::max(m[r], chunk_max);
    float sum = 0.f;
    for (int64_t j = 0; j < KEYS; ++j) {
      sr[j] = exp_nonpositive(sr[j] - new_m);
      sum += sr[j];
    }
    correction[r] = exp_nonpositive(m[r] - new_m);
    l[r] = l[r] * correction[r] + sum;
    m[r] = new_m;
  }
}

// One chunk for R consecutive rows: scores, the online-softmax update, and the value accumulation.
template <int D, int R>
inline void chunk_rows(const float* q, const float* kt, const float* vf, int64_t n, int64_t start,
                       const int64_t* visible, float scale, float* m, float* l, float* out, int64_t dim) {
  const int64_t d = D > 0 ? D : dim;
  float s[R * KEYS], correction[R];
  scores<D, R>(q, kt, d, s);
  for (int64_t j = 0; j < R * KEYS; ++j) s[j] *= scale;
  online_softmax<R>(s, n, start, visible, m, l, correction);
  int64_t longest = 0;
  for (int r = 0; r < R; ++r) longest = std::max(longest, std::min(n, visible[r] - start));
  accumulate<D, R>(out, correction, s, longest, vf, d);
}

// `rows` query rows (fp32, [rows, D]) whose row r sees keys [0, visible[r]); writes the
// normalised outputs to out [rows, D]. Per chunk of KEYS keys: K transposed to [D, KEYS] and V [KEYS, D] in
// fp32, then per row scores = q x K^T and out += p x V as broadcast-FMA loops over whole chunks, so each
// K/V element read from the pool serves every row of the group, and the inner loops run full-width.
template <typename T, int D>
void attend_rows(const PagedKV<T>& kv, int64_t kvh, const float* q, int64_t rows, const int64_t* visible,
                 float scale, float* out, int64_t dim) {
  const int64_t d = D > 0 ? D : dim;
  int64_t max_visible = 0;
  for (int64_t r = 0; r < rows; ++r) max_visible = std::max(max_visible, visible[r]);
  std::vector<float> m(rows, -std::numeric_limits<float>::infinity()), l(rows, 0.f);
  std::vector<float> kt(d * KEYS), vf(KEYS * d), row(d);
  std::fill(out, out + rows * d, 0.f);
  for (int64_t start = 0; start < max_visible; start += KEYS) {
    const int64_t n = std::min(KEYS, max_visible - start);
    for (int64_t j = 0; j < n; ++j) {
      Io<T>::load(kv.k + kv.row(start + j, kvh), row.data(), d);
      for (int64_t i = 0; i < d; ++i) kt[i * KEYS + j] = row[i];
      Io<T>::load(kv.v + kv.row(start + j, kvh), vf.data() + j * d, d);
    }
    for (int64_t j = n; j < KEYS; ++j) {  // a short last chunk: zero keys and values, masked below
      for (int64_t i = 0; i < d; ++i) kt[i * KEYS + j] = 0.f;
      std::fill(vf.data() + j * d, vf.data() + (j + 1) * d, 0.f);
    }
    int64_t r = 0;
    for (; r + 4 <= rows; r += 4)
      chunk_rows<D, 4>(q + r * d, kt.data(), vf.data(), n, start, visible + r, scale, m.data() + r,
                       l.data() + r, out + r * d, d);
    // The rest (decode: the 1-3 query heads of a KV head) in one block, for as many chains as there are rows.
    const int64_t rest = rows - r;
    auto tail = [&](auto block) {
      constexpr int R = decltype(block)::value;
      chunk_rows<D, R>(q + r * d, kt.data(), vf.data(), n, start, visible + r, scale, m.data() + r,
                       l.data() + r, out + r * d, d);
    };
    if (rest == 3) tail(std::integral_constant<int, 3>{});
    else if (rest == 2) tail(std::integral_constant<int, 2>{});
    else if (rest == 1) tail(std::integral_constant<int, 1>{});
  }
  for (int64_t r = 0; r < rows; ++r) {
    const float inv = l[r] > 0.f ? 1.f / l[r] : 0.f;
    for (int64_t i = 0; i < d; ++i) out[r * d + i] *= inv;
  }
}

#ifdef __AVX512BF16__
// bf16 pools on CPUs with AVX512-BF16: scores and the value accumulation as vdpbf16ps, which multiplies pairs
// of bf16 and accumulates in fp32, two products per lane per instruction. Queries and keys are bf16 already
// (exact products); the softmax weights are rounded to bf16 for the value product, as the torch reference
// rounds its probabilities before its bf16 matmul. Per chunk the keys are laid out as [D/2 dim pairs][KEYS]
// 32-bit words (a word: two dims of one key) and the values as [KEYS/2 key pairs][D] words (a word: one dim
// of two keys), so one broadcast query (or weight) pair meets 16 keys (or dims) per instruction.
// One chunk for R rows with vdpbf16ps: R rows keep 2R score chains and R * D/16 value chains in flight
// (one row alone would wait on the instruction's latency).
template <int D, int R>
inline void chunk_rows_bf16(const uint32_t* qw, const uint32_t* kw, const uint32_t* vw, int64_t n, int64_t start,
                            const int64_t* visible, float scale, float* m, float* l, float* out) {
  constexpr int P = D / 2;
  __m512 lo[R], hi[R];
  for (int r = 0; r < R; ++r) lo[r] = hi[r] = _mm512_setzero_ps();
  for (int p = 0; p < P; ++p) {
    const __m512bh k0 = (__m512bh)_mm512_loadu_si512(kw + p * KEYS);
    const __m512bh k1 = (__m512bh)_mm512_loadu_si512(kw + p * KEYS + 16);
    for (int r = 0; r < R; ++r) {
      const __m512bh qq = (__m512bh)_mm512_set1_epi32(static_cast<int>(qw[r * P + p]));
      lo[r] = _mm512_dpbf16_ps(lo[r], qq, k0);
      hi[r] = _mm512_dpbf16_ps(hi[r], qq, k1);
    }
  }
  float s[R * KEYS], correction[R];
  const __m512 sc = _mm512_set1_ps(scale);
  for (int r = 0; r < R; ++r) {
    _mm512_storeu_ps(s + r * KEYS, _mm512_mul_ps(lo[r], sc));
    _mm512_storeu_ps(s + r * KEYS + 16, _mm512_mul_ps(hi[r], sc));
  }
  online_softmax<R>(s, n, start, visible, m, l, correction);
  int64_t longest = 0;
  for (int r = 0; r < R; ++r) longest = std::max(longest, std::min(n, visible[r] - start));
  uint32_t pw[R][KEYS / 2];
  for (int r = 0; r < R; ++r) {
    uint16_t pb[KEYS];
    for (int64_t j = 0; j < KEYS; ++j) pb[j] = float_to_bf16(s[r * KEYS + j]);
    std::memcpy(pw[r], pb, sizeof(pb));
  }
  __m512 a[R][D / 16];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < D / 16; ++c)
      a[r][c] = _mm512_mul_ps(_mm512_loadu_ps(out + r * D + 16 * c), _mm512_set1_ps(correction[r]));
  for (int64_t t = 0; t < (longest + 1) / 2; ++t) {
    __m512bh vv[D / 16];
    for (int c = 0; c < D / 16; ++c) vv[c] = (__m512bh)_mm512_loadu_si512(vw + t * D + 16 * c);
    for (int r = 0; r < R; ++r) {
      const __m512bh pp = (__m512bh)_mm512_set1_epi32(static_cast<int>(pw[r][t]));
      for (int c = 0; c < D / 16; ++c) a[r][c] = _mm512_dpbf16_ps(a[r][c], pp, vv[c]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < D / 16; ++c) _mm512_storeu_ps(out + r * D + 16 * c, a[r][c]);
}

template <int D>
void attend_rows_bf16(const PagedKV<c10::BFloat16>& kv, int64_t kvh, const float* q, int64_t rows,
                      const int64_t* visible, float scale, float* out) {
  constexpr int P = D / 2;
  int64_t max_visible = 0;
  for (int64_t r = 0; r < rows; ++r) max_visible = std::max(max_visible, visible[r]);
  std::vector<float> m(rows, -std::numeric_limits<float>::infinity()), l(rows, 0.f);
  std::vector<uint32_t> qw(rows * P), kw(P * KEYS), vw((KEYS / 2) * D);
  {  // the fp32 queries came from bf16: back to bf16 pairs, exactly
    std::vector<uint16_t> qb(rows * D);
    for (int64_t i = 0; i < rows * D; ++i) qb[i] = float_to_bf16(q[i]);
    std::memcpy(qw.data(), qb.data(), qb.size() * sizeof(uint16_t));
  }
  std::fill(out, out + rows * D, 0.f);
  for (int64_t start = 0; start < max_visible; start += KEYS) {
    const int64_t n = std::min(KEYS, max_visible - start);
    for (int64_t j = 0; j < KEYS; ++j) {
      const uint32_t* krow = j < n ? reinterpret_cast<const uint32_t*>(kv.k + kv.row(start + j, kvh)) : nullptr;
      for (int p = 0; p < P; ++p) kw[p * KEYS + j] = krow ? krow[p] : 0u;
    }
    for (int64_t t = 0; t < KEYS / 2; ++t) {
      const int64_t j0 = 2 * t, j1 = 2 * t + 1;
      const uint16_t* v0 = j0 < n ? reinterpret_cast<const uint16_t*>(kv.v + kv.row(start + j0, kvh)) : nullptr;
      const uint16_t* v1 = j1 < n ? reinterpret_cast<const uint16_t*>(kv.v + kv.row(start + j1, kvh)) : nullptr;
      for (int i = 0; i < D; ++i)
        vw[t * D + i] = (v0 ? v0[i] : 0u) | (static_cast<uint32_t>(v1 ? v1[i] : 0u) << 16);
    }
    int64_t r = 0;
    for (; r + 4 <= rows; r += 4)
      chunk_rows_bf16<D, 4>(qw.data() + r * P, kw.data(), vw.data(), n, start, visible + r, scale, m.data() + r,
                            l.data() + r, out + r * D);
    const int64_t rest = rows - r;
    auto tail = [&](auto block) {
      constexpr int R = decltype(block)::value;
      chunk_rows_bf16<D, R>(qw.data() + r * P, kw.data(), vw.data(), n, start, visible + r, scale, m.data() + r,
                            l.data() + r, out + r * D);
    };
    if (rest == 3) tail(std::integral_constant<int, 3>{});
    else if (rest == 2) tail(std::integral_constant<int, 2>{});
    else if (rest == 1) tail(std::integral_constant<int, 1>{});
  }
  for (int64_t r = 0; r < rows; ++r) {
    const float inv = l[r] > 0.f ? 1.f / l[r] : 0.f;
    for (int i = 0; i < D; ++i) out[r * D + i] *= inv;
  }
}
// -- decode attention on AVX512-BF16 ---------------------------------------------------------------
// One query token per sequence: a KV head's 1-8 query heads attend its context, read straight from the pool
// rows, without the per-chunk rearranging attend_rows_bf16 does (which prefill amortises over 96+ rows and
// decode over 3). Per 16 keys: each row's 16 partial score vectors (vdpbf16ps of the query and a key row) are
// summed by a shuffle tree into one vector of 16 scores, in a fixed key order; the values of two keys
// are interleaved by unpacklo/hi_epi16 so that one vdpbf16ps adds both keys' weighted values into 16 dims,
// in a fixed dim order undone once at the end.

// Lane k of the result holds the sum of input vector DecodePerm::key[k] (0, 4, 8, 12, 1, 5, ...: block b of the
// result sums inputs b, b+4, b+8, b+12), worked out once by decode_perm().
inline __m512 sum16(const __m512* p) {
  __m512 a[8], b[4], c[2];
  for (int i = 0; i < 8; ++i)
    a[i] = _mm512_add_ps(_mm512_shuffle_f32x4(p[2 * i], p[2 * i + 1], 0x44),
                         _mm512_shuffle_f32x4(p[2 * i], p[2 * i + 1], 0xEE));
  for (int i = 0; i < 4; ++i)
    b[i] = _mm512_add_ps(_mm512_shuffle_f32x4(a[2 * i], a[2 * i + 1], 0x88),
                         _mm512_shuffle_f32x4(a[2 * i], a[2 * i + 1], 0xDD));
  for (int i = 0; i < 2; ++i)
    c[i] = _mm512_add_ps(_mm512_unpacklo_ps(b[2 * i], b[2 * i + 1]), _mm512_unpackhi_ps(b[2 * i], b[2 * i + 1]));
  return _mm512_add_ps(_mm512_shuffle_ps(c[0], c[1], 0x44), _mm512_shuffle_ps(c[0], c[1], 0xEE));
}


// Keys between a row's prefetch and its use in decode_bf16 (LLMCTL_DECODE_PREFETCH overrides; 0 turns it off).
inline int64_t decode_ahead() {
  static const int64_t ahead = [] {
    const char* env = std::getenv("LLMCTL_DECODE_PREFETCH");
    return env ? std::max<int64_t>(0, std::atoll(env)) : int64_t{32};
  }();
  return ahead;
}

struct DecodePerm {
  int key[16];        // lane -> key
  __m512i lane_of;    // key -> lane, for _mm512_permutexvar_ps
  __mmask16 first[17];  // lanes whose key is < n
};

inline const DecodePerm& decode_perm() {
  static const DecodePerm perm = [] {
    DecodePerm p{};
    __m512 in[16];
    for (int j = 0; j < 16; ++j) in[j] = _mm512_set1_ps(static_cast<float>(j));
    float out[16];
    _mm512_storeu_ps(out, sum16(in));
    int lane_of[16];
    for (int k = 0; k < 16; ++k) {
      p.key[k] = static_cast<int>(out[k] / 16.f + 0.5f);
      lane_of[p.key[k]] = k;
    }
    p.lane_of = _mm512_loadu_si512(lane_of);
    for (int n = 0; n <= 16; ++n) {
      p.first[n] = 0;
      for (int k = 0; k < 16; ++k)
        if (p.key[k] < n) p.first[n] = static_cast<__mmask16>(p.first[n] | (1u << k));
    }
    return p;
  }();
  return perm;
}

template <int D>
void decode_bf16(const PagedKV<c10::BFloat16>& kv, int64_t kvh, const c10::BFloat16* q, int64_t rows,
                 int64_t length, float scale, c10::BFloat16* out) {
  constexpr int H = D / 32;  // 32-dim blocks of a row (one zmm of bf16 each)
  constexpr int G = 8;       // most query heads per KV head this kernel takes
  const DecodePerm& perm = decode_perm();
  __m512bh qv[G][H];
  for (int64_t r = 0; r < rows; ++r)
    for (int h = 0; h < H; ++h) qv[r][h] = (__m512bh)_mm512_loadu_si512(q + r * D + 32 * h);
  float m[G], l[G];
  __m512 acc[G][2 * H];
  for (int64_t r = 0; r < rows; ++r) {
    m[r] = -std::numeric_limits<float>::infinity();
    l[r] = 0.f;
    for (int c = 0; c < 2 * H; ++c) acc[r][c] = _mm512_setzero_ps();
  }
  const __m512i zero = _mm512_setzero_si512();
  const int64_t ahead = decode_ahead();
  for (int64_t start = 0; start < length; start += 16) {
    const int n = static_cast<int>(std::min<int64_t>(16, length - start));
    const c10::BFloat16* krow[16];
    const c10::BFloat16* vrow[16];
    for (int j = 0; j < 16; ++j) {
      krow[j] = j < n ? kv.k + kv.row(start + j, kvh) : nullptr;
      vrow[j] = j < n ? kv.v + kv.row(start + j, kvh) : nullptr;
    }
    // The pool's blocks lie anywhere in memory, and a head's rows are strided within them: the hardware
    // prefetchers miss both, so the rows DECODE_AHEAD keys on are asked for now (3-4x the bandwidth cold).
    for (int64_t pos = start + ahead; ahead > 0 && pos < std::min(length, start + ahead + 16); ++pos) {
      const char* kp = reinterpret_cast<const char*>(kv.k + kv.row(pos, kvh));
      const char* vp = reinterpret_cast<const char*>(kv.v + kv.row(pos, kvh));
      for (int line = 0; line < D * 2; line += 64) {
        _mm_prefetch(kp + line, _MM_HINT_T0);
        _mm_prefetch(vp + line, _MM_HINT_T0);
      }
    }
    uint32_t wpair[G][8];
    float correction[G];
    for (int64_t r = 0; r < rows; ++r) {
      __m512 part[16];
      for (int j = 0; j < 16; ++j) {
        __m512 s = _mm512_setzero_ps();
        if (j < n)
          for (int h = 0; h < H; ++h)
            s = _mm512_dpbf16_ps(s, qv[r][h], (__m512bh)_mm512_loadu_si512(krow[j] + 32 * h));
        part[j] = s;
      }
      const __mmask16 valid = perm.first[n];
      const __m512 scores = _mm512_mul_ps(sum16(part), _mm512_set1_ps(scale));
      const float new_m = std::max(m[r], _mm512_mask_reduce_max_ps(valid, scores));
      const __m512 e = _mm512_maskz_mov_ps(valid, exp_nonpositive16(_mm512_sub_ps(scores, _mm512_set1_ps(new_m))));
      correction[r] = exp_nonpositive(m[r] - new_m);
      l[r] = l[r] * correction[r] + _mm512_reduce_add_ps(e);
      m[r] = new_m;
      // Weights in key order, as bf16 (round to nearest even): word t holds keys 2t and 2t+1.
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(wpair[r]),
                          (__m256i)_mm512_cvtneps_pbh(_mm512_permutexvar_ps(perm.lane_of, e)));
      for (int c = 0; c < 2 * H; ++c) acc[r][c] = _mm512_mul_ps(acc[r][c], _mm512_set1_ps(correction[r]));
    }
    for (int t = 0; t < (n + 1) / 2; ++t) {
      for (int h = 0; h < H; ++h) {
        const __m512i a = _mm512_loadu_si512(vrow[2 * t] + 32 * h);
        const __m512i b = 2 * t + 1 < n ? _mm512_loadu_si512(vrow[2 * t + 1] + 32 * h) : zero;
        const __m512bh lo = (__m512bh)_mm512_unpacklo_epi16(a, b), hi = (__m512bh)_mm512_unpackhi_epi16(a, b);
        for (int64_t r = 0; r < rows; ++r) {
          const __m512bh pp = (__m512bh)_mm512_set1_epi32(static_cast<int>(wpair[r][t]));
          acc[r][2 * h] = _mm512_dpbf16_ps(acc[r][2 * h], pp, lo);
          acc[r][2 * h + 1] = _mm512_dpbf16_ps(acc[r][2 * h + 1], pp, hi);
        }
      }
    }
  }
  // unpacklo/hi interleave within 128-bit lanes: fp32 lane 4L+i of the lo half is dim 8L+i of its 32-dim block,
  // of the hi half dim 8L+4+i.
  for (int64_t r = 0; r < rows; ++r) {
    const float inv = l[r] > 0.f ? 1.f / l[r] : 0.f;
    float res[D];
    for (int h = 0; h < H; ++h) {
      float lo[16], hi[16];
      _mm512_storeu_ps(lo, acc[r][2 * h]);
      _mm512_storeu_ps(hi, acc[r][2 * h + 1]);
      for (int k = 0; k < 16; ++k) {
        res[32 * h + 8 * (k / 4) + k % 4] = lo[k] * inv;
        res[32 * h + 8 * (k / 4) + 4 + k % 4] = hi[k] * inv;
      }
    }
    Io<c10::BFloat16>::store(res, out + r * D, D);
  }
}

#endif

// The head dims models use get a compile-time D (the output row stays in registers); others run generic.
template <typename T>
void attend(const PagedKV<T>& kv, int64_t kvh, const float* q, int64_t rows, const int64_t* visible,
            float scale, float* out) {
#ifdef __AVX512BF16__
  if constexpr (std::is_same_v<T, c10::BFloat16>) {
    if (kv.d == 64) return attend_rows_bf16<64>(kv, kvh, q, rows, visible, scale, out);
    if (kv.d == 128) return attend_rows_bf16<128>(kv, kvh, q, rows, visible, scale, out);
  }
#endif
  switch (kv.d) {
    case 64: return attend_rows<T, 64>(kv, kvh, q, rows, visible, scale, out, 64);
    case 128: return attend_rows<T, 128>(kv, kvh, q, rows, visible, scale, out, 128);
    default: return attend_rows<T, 0>(kv, kvh, q, rows, visible, scale, out, kv.d);
  }
}

// The decode kernel above where it applies (bf16 pool, AVX512-BF16, up to 8 query heads per KV head, D 64 or
// 128); false: the caller runs the general path.
template <typename T>
bool decode_fast(const PagedKV<T>&, int64_t, const T*, int64_t, int64_t, float, T*) {
  return false;
}

#ifdef __AVX512BF16__
template <>
bool decode_fast(const PagedKV<c10::BFloat16>& kv, int64_t kvh, const c10::BFloat16* q, int64_t rows,
                 int64_t length, float scale, c10::BFloat16* out) {
  if (rows > 8 || (kv.d != 64 && kv.d != 128)) return false;
  (kv.d == 64 ? decode_bf16<64> : decode_bf16<128>)(kv, kvh, q, rows, length, scale, out);
  return true;
}
#endif

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
        if (decode_fast(kv, head, qp + (seq * h + head * g) * d, g, lens[seq], static_cast<float>(scale),
                        op + (seq * h + head * g) * d))
          continue;
        Io<scalar_t>::load(qp + (seq * h + head * g) * d, qf.data(), g * d);
        std::fill(visible.begin(), visible.end(), static_cast<int64_t>(lens[seq]));
        attend<scalar_t>(kv, head, qf.data(), g, visible.data(), static_cast<float>(scale), acc.data());
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
        attend<scalar_t>(kv, head, qf.data(), rows * g, visible.data(), static_cast<float>(scale), acc.data());
        for (int64_t r = 0; r < rows; ++r)
          Io<scalar_t>::store(acc.data() + r * g * d, op + ((r0 + r) * h + head * g) * d, g * d);
      }
    });
  });
}

// -- weight-only quantized linear: int8 per output channel, or 4-bit groups (AWQ) ----------------------
// out [M, N] = x [M, K] @ dequant(w).T (+ bias), bf16 activations, on AVX512-BF16 only (vdpbf16ps).
// Packed layouts, built once at load by kernels/cpu/__init__.py (pack_int8, pack_int4): output columns in
// blocks of 16, inputs in pairs, so that one register of 32 bf16 holds a block's weights for one pair of
// inputs in vdpbf16ps order (column j's two inputs in 32-bit lane j):
//   int8: [N/16, K/2, 32] int8, element 2j+t = w[16b+j, 2p+t]; scales [N] fp32, applied to the sums (int8
//         values are exact in bf16).
//   int4: [N/16, K/2, 16] uint8, element e of those 32 in byte e % 16, low nibble for e < 16, high for e >= 16;
//         scales [2, K/g, N] fp16: AWQ's own scales, then its zeros (integers 0..15): w = (q - z) * s.
//         group_size 0 means int8.
// A task is two blocks (32 outputs); the weights are read from memory once per call, at 1 or 0.5 byte each.
// Up to QDIRECT rows (decoding a few sequences: bound by that read and the unpacking), each register of
// weights is unpacked and used at once, with several accumulators per output so that the dot products do not
// wait on each other; 4-bit codes become bf16 128 + q by setting the exponent bits (one op), and the sum over
// a group is corrected once: sum x w = s * sum x (128 + q) - (128 + z) * s * sum x. Past that, a task
// dequantises QKC input pairs at a time to bf16 in a 16 KB buffer (4-bit: (q - z) * s in fp32, rounded once)
// and every row of x runs over that chunk, QROWS rows at a time with up to 24 accumulators; the partial sums
// wait in an fp32 tile [M, 32] between chunks, and the dequantisation is paid once for all rows.
#ifdef __AVX512BF16__
// Input pairs per dequantised chunk: 3 blocks x 512 pairs x 64 bytes = 96 KB, in L2, reused by every row tile. At
// 128 pairs (24 KB, in L1) int8 at 32 / 128 / 512 rows ran 0.85x / 0.96x / 0.94x the blocked bf16 linear; at 512,
// 0.92x / 1.02x / 0.99x (fewer reloads and stores of the fp32 tiles).
constexpr int64_t QKC = 512;
// Input pairs per pass of the row tiles over bf16 weights read in place. Longer passes reload and store the fp32
// tiles less often; 768 (all of SmolLM2's K) measured 1.11x / 1.00x / 0.98x oneDNN at 32 / 256 / 2048 rows
// against 1.08x / 0.98x / 0.94x at 128 and 0.79-1.00x at 32 (bench_dense_layout.py). The cap keeps a task's
// pass (3-4 blocks x 1024 pairs x 64 bytes) in L2 for the row tiles after the first.
constexpr int64_t QKC_BF16 = 1024;
constexpr int QROWS = 12;   // rows per register tile of 2 blocks (24 accumulators)
constexpr int QROWS3 = 8;   // rows per register tile of 3 blocks (past QDIRECT rows)
constexpr int QROWS4 = 6;   // rows per register tile of 4 blocks (bf16 from QLARGE rows)
constexpr int64_t QLARGE = 128;
constexpr int64_t QTILE = 64;  // floats per row of a work item's fp32 tile: up to 4 blocks of 16 columns
constexpr int QDIRECT = 4;
constexpr int64_t QMROWS = 192;  // rows per row block: 192 x K bf16 of x stays in a core's L2
constexpr int64_t QPREFETCH = 4096;  // bytes ahead of each weight stream

struct QuantWeights {
  const __m512i* bf;     // bf16 layout (block b's input pair p at bf[b * pairs + p]), or null
  const int8_t* q8;      // int8 layout, or null
  const uint8_t* q4;     // 4-bit layout, or null
  const float* scales8;  // int8: [N]
  const c10::Half* scales4;  // 4-bit: [G, N]
  const c10::Half* zeros4;   // 4-bit: [G, N]
  int64_t n, blocks, pairs, group_pairs;
};

inline __m512i dequant_int8(const int8_t* q) {
  const __m512 lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q))));
  const __m512 hi =
      _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q + 16))));
  return (__m512i)_mm512_cvtne2ps_pbh(hi, lo);
}

// 16 bytes of 4-bit codes -> the 32 bf16 values 128 + q, in element order.
inline __m512i codes_plus_128(const uint8_t* q) {
  const __m256i bytes = _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q)));
  const __m512i both = _mm512_inserti64x4(_mm512_castsi256_si512(bytes), _mm256_srli_epi16(bytes, 4), 1);
  // (both & 0x000f) | 0x4300 in one ternary-logic op: bf16 0x43xx is 128 + xx for xx < 128.
  return _mm512_ternarylogic_epi32(both, _mm512_set1_epi16(0x000f), _mm512_set1_epi16(0x4300), 0xEA);
}

// 16 columns' fp16 scales and zeros of one group -> (s, -(bias + z) * s) in fp32.
inline void group_scales(const QuantWeights& w, int64_t g, int64_t col, float bias, __m512& s, __m512& o) {
  s = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w.scales4 + g * w.n + col)));
  const __m512 z = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w.zeros4 + g * w.n + col)));
  o = _mm512_mul_ps(_mm512_sub_ps(_mm512_set1_ps(-bias), z), s);
}

inline __m512 bcast_pair(const uint16_t* x) {
  int32_t pair;
  std::memcpy(&pair, x, sizeof(pair));
  return _mm512_castsi512_ps(_mm512_set1_epi32(pair));
}

// tile [R, 16 of stride 32] = x [R rows of stride k] @ block `block`, unpacking as it goes, with U accumulators
// per output. xsum [R, G]: each row's sum over each 4-bit group. One block (one sequential weight stream, which
// the prefetchers follow) at a time: two interleaved streams read ~20% slower from DRAM.
template <int R>
void quant_direct(const uint16_t* x, int64_t k, const float* xsum, const QuantWeights& w, int64_t block, float* tile) {
  constexpr int U = R <= 2 ? 4 : 2;
  __m512 acc[R][U];
  auto zero = [&] {
    for (int r = 0; r < R; ++r)
      for (int u = 0; u < U; ++u) acc[r][u] = _mm512_setzero_ps();
  };
  auto step = [&](int u, int64_t p, __m512i wv) {
    for (int r = 0; r < R; ++r)
      acc[r][u] = _mm512_dpbf16_ps(acc[r][u], (__m512bh)bcast_pair(x + r * k + 2 * p), (__m512bh)wv);
  };
  auto summed = [&](int r) {
    __m512 sum = acc[r][0];
    for (int u = 1; u < U; ++u) sum = _mm512_add_ps(sum, acc[r][u]);
    return sum;
  };
  zero();
  if (w.bf) {
    const __m512i* q = w.bf + block * w.pairs;
    int64_t p = 0;
    for (; p + U <= w.pairs; p += U) {
      _mm_prefetch(reinterpret_cast<const char*>(q + p) + QPREFETCH, _MM_HINT_T0);
      for (int u = 0; u < U; ++u) step(u, p + u, _mm512_loadu_si512(q + p + u));
    }
    for (; p < w.pairs; ++p) step(0, p, _mm512_loadu_si512(q + p));
    for (int r = 0; r < R; ++r) _mm512_storeu_ps(tile + r * QTILE, summed(r));
    return;
  }
  if (w.q8) {
    const int8_t* q = w.q8 + block * w.pairs * 32;
    int64_t p = 0;
    for (; p + U <= w.pairs; p += U) {
      _mm_prefetch(reinterpret_cast<const char*>(q + 32 * p + QPREFETCH), _MM_HINT_T0);
      for (int u = 0; u < U; ++u) step(u, p + u, dequant_int8(q + 32 * (p + u)));
    }
    for (; p < w.pairs; ++p) step(0, p, dequant_int8(q + 32 * p));
    for (int r = 0; r < R; ++r) _mm512_storeu_ps(tile + r * QTILE, summed(r));
    return;
  }
  // 4-bit: groups hold a multiple of U pairs (group sizes are multiples of 8, checked in Python).
  const uint8_t* q = w.q4 + block * w.pairs * 16;
  __m512 total[R];
  for (int r = 0; r < R; ++r) total[r] = _mm512_setzero_ps();
  const int64_t groups = w.pairs / w.group_pairs;
  for (int64_t g = 0; g < groups; ++g) {
    for (int64_t p = g * w.group_pairs; p < (g + 1) * w.group_pairs; p += U) {
      _mm_prefetch(reinterpret_cast<const char*>(q + 16 * p + QPREFETCH), _MM_HINT_T0);
      for (int u = 0; u < U; ++u) step(u, p + u, codes_plus_128(q + 16 * (p + u)));
    }
    __m512 s, o;
    group_scales(w, g, block * 16, 128.f, s, o);
    for (int r = 0; r < R; ++r)
      total[r] = _mm512_fmadd_ps(_mm512_set1_ps(xsum[r * groups + g]), o, _mm512_fmadd_ps(summed(r), s, total[r]));
    zero();
  }
  for (int r = 0; r < R; ++r) _mm512_storeu_ps(tile + r * QTILE, total[r]);
}

using QuantDirect = void (*)(const uint16_t*, int64_t, const float*, const QuantWeights&, int64_t, float*);

template <int... R>
constexpr std::array<QuantDirect, sizeof...(R)> quant_direct_table(std::integer_sequence<int, R...>) {
  return {&quant_direct<R + 1>...};
}

inline QuantDirect quant_direct_for(int rows) {
  static constexpr auto table = quant_direct_table(std::make_integer_sequence<int, QDIRECT>{});
  return table[rows - 1];
}

// (q - z) * s for 32 elements of 16 columns, rounded once to bf16: s_lo / o_lo hold the scales and -z * s of
// columns 0..7 each twice (elements 0..15), s_hi / o_hi those of columns 8..15.
inline __m512i dequant_int4(const uint8_t* q, __m512 s_lo, __m512 s_hi, __m512 o_lo, __m512 o_hi) {
  const __m512i b = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q)));
  const __m512 lo = _mm512_cvtepi32_ps(_mm512_and_si512(b, _mm512_set1_epi32(15)));
  const __m512 hi = _mm512_cvtepi32_ps(_mm512_srli_epi32(b, 4));
  return (__m512i)_mm512_cvtne2ps_pbh(_mm512_fmadd_ps(hi, s_hi, o_hi), _mm512_fmadd_ps(lo, s_lo, o_lo));
}

// tile [R, 32] (+)= x [R rows of stride ldx, 2 * pairs inputs] @ the chunk of NB blocks in w (block b's pairs
// from w + b * bstride); `prefetch`: ask for each block's stream QPREFETCH bytes ahead (the bf16 layout, read in
// place from DRAM).
template <int R, int NB>
void quant_rows(const uint16_t* x, int64_t ldx, const __m512i* w, int64_t bstride, int64_t pairs, float* tile,
                bool first, bool prefetch) {
  __m512 acc[R][NB];
  for (int r = 0; r < R; ++r)
    for (int b = 0; b < NB; ++b) acc[r][b] = first ? _mm512_setzero_ps() : _mm512_loadu_ps(tile + r * QTILE + 16 * b);
  for (int64_t p = 0; p < pairs; ++p) {
    __m512bh wv[NB];
    if (prefetch)
      for (int b = 0; b < NB; ++b) _mm_prefetch(reinterpret_cast<const char*>(w + b * bstride + p) + QPREFETCH, _MM_HINT_T0);
    for (int b = 0; b < NB; ++b) wv[b] = (__m512bh)_mm512_load_si512(w + b * bstride + p);
    for (int r = 0; r < R; ++r) {
      const __m512bh xv = (__m512bh)bcast_pair(x + r * ldx + 2 * p);
      for (int b = 0; b < NB; ++b) acc[r][b] = _mm512_dpbf16_ps(acc[r][b], xv, wv[b]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int b = 0; b < NB; ++b) _mm512_storeu_ps(tile + r * QTILE + 16 * b, acc[r][b]);
}

using QuantRows = void (*)(const uint16_t*, int64_t, const __m512i*, int64_t, int64_t, float*, bool, bool);

template <int NB, int... R>
constexpr std::array<QuantRows, sizeof...(R)> quant_rows_table(std::integer_sequence<int, R...>) {
  return {&quant_rows<R + 1, NB>...};
}

inline QuantRows quant_rows_for(int rows, int nb) {
  static constexpr auto one = quant_rows_table<1>(std::make_integer_sequence<int, QROWS>{});
  static constexpr auto two = quant_rows_table<2>(std::make_integer_sequence<int, QROWS>{});
  static constexpr auto three = quant_rows_table<3>(std::make_integer_sequence<int, QROWS3>{});
  static constexpr auto four = quant_rows_table<4>(std::make_integer_sequence<int, QROWS4>{});
  switch (nb) {
    case 1: return one[rows - 1];
    case 2: return two[rows - 1];
    case 3: return three[rows - 1];
    default: return four[rows - 1];
  }
}

// Block `block`'s input pairs [c0, c0 + cp) dequantised to bf16 in w[0, cp).
inline void dequant_chunk(const QuantWeights& qw, int64_t block, int64_t c0, int64_t cp, __m512i* w) {
  if (qw.q8) {
    const int8_t* q = qw.q8 + (block * qw.pairs + c0) * 32;
    for (int64_t p = 0; p < cp; ++p) w[p] = dequant_int8(q + 32 * p);
    return;
  }
  const uint8_t* q = qw.q4 + (block * qw.pairs + c0) * 16;
  for (int64_t p = 0; p < cp;) {
    const int64_t g = (c0 + p) / qw.group_pairs, stop = std::min(cp, (g + 1) * qw.group_pairs - c0);
    __m512 s, o;
    group_scales(qw, g, block * 16, 0.f, s, o);
    const __m512i lo_cols = _mm512_set_epi32(7, 7, 6, 6, 5, 5, 4, 4, 3, 3, 2, 2, 1, 1, 0, 0);
    const __m512i hi_cols = _mm512_set_epi32(15, 15, 14, 14, 13, 13, 12, 12, 11, 11, 10, 10, 9, 9, 8, 8);
    const __m512 s_lo = _mm512_permutexvar_ps(lo_cols, s), s_hi = _mm512_permutexvar_ps(hi_cols, s);
    const __m512 o_lo = _mm512_permutexvar_ps(lo_cols, o), o_hi = _mm512_permutexvar_ps(hi_cols, o);
    for (; p < stop; ++p) w[p] = dequant_int4(q + 16 * p, s_lo, s_hi, o_lo, o_hi);
  }
}

// x [M, K] bf16; packed, scales as above; bias [N] bf16 or none -> out [M, N] bf16.
void quant_linear(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scales, int64_t group_size,
                  const std::optional<at::Tensor>& bias, at::Tensor& out) {
  const int64_t m = x.size(0), k = x.size(1), n = out.size(1), blocks = n / 16, pairs = k / 2;
  if (m == 0) return;  // no rows: nothing to compute (the row-count dispatch below assumes at least one)
  const uint16_t* xp = reinterpret_cast<const uint16_t*>(x.const_data_ptr<c10::BFloat16>());
  const uint16_t* bp = bias ? reinterpret_cast<const uint16_t*>(bias->const_data_ptr<c10::BFloat16>()) : nullptr;
  uint16_t* op = reinterpret_cast<uint16_t*>(out.mutable_data_ptr<c10::BFloat16>());
  const bool bf = packed.scalar_type() == at::kBFloat16, int4 = !bf && group_size > 0;
  const QuantWeights qw{bf ? reinterpret_cast<const __m512i*>(packed.const_data_ptr<c10::BFloat16>()) : nullptr,
                        bf || int4 ? nullptr : packed.const_data_ptr<int8_t>(),
                        int4 ? packed.const_data_ptr<uint8_t>() : nullptr,
                        bf || int4 ? nullptr : scales.const_data_ptr<float>(),
                        int4 ? scales.const_data_ptr<c10::Half>() : nullptr,
                        int4 ? scales.const_data_ptr<c10::Half>() + scales.size(1) * n : nullptr,
                        n, blocks, pairs, int4 ? group_size / 2 : pairs};
  // Each row's sum over each 4-bit group, for the direct path's correction.
  const int64_t groups = pairs / qw.group_pairs;
  std::vector<float> xsum;
  if (int4 && m <= QDIRECT) {
    xsum.assign(m * groups, 0.f);
    for (int64_t r = 0; r < m; ++r)
      for (int64_t i = 0; i < k; ++i) xsum[r * groups + i / group_size] += bf16_to_float(xp[r * k + i]);
  }
  // Work items: (block of QMROWS rows, task), row blocks outermost, so that each thread's share of x stays in
  // its cache while it runs through the tasks (a large M re-dequantises each chunk once per row block).
  // Row blocks of equal size (so that the threads' equal shares of items are equal work).
  // Blocks per work item: 2 on the direct path; past it 3 (register tiles of 3 x 8 rows), and for bf16 from QLARGE
  // rows 4 (4 x 6); a quantized chunk of 3 dequantised blocks (24 KB) is as much as stays in L1 beside x.
  const int64_t per_task = m <= QDIRECT ? 2 : !bf || m < QLARGE ? 3 : 4;
  const int64_t kc = bf ? QKC_BF16 : QKC;
  const int64_t tasks = (blocks + per_task - 1) / per_task, row_blocks = m <= QDIRECT ? 1 : (m + QMROWS - 1) / QMROWS;
  const int64_t block_rows = (m + row_blocks - 1) / row_blocks;
  at::parallel_for(0, row_blocks * tasks, 1, [&](int64_t begin, int64_t end) {
    // Only the quantized layouts past the direct path dequantise into a chunk; bf16 is read in place.
    std::vector<__m512i> chunk_buf(!bf && m > QDIRECT ? 3 * QKC : 0);
    __m512i* chunk = chunk_buf.data();
    std::vector<float> tile(block_rows * QTILE);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t task = item % tasks, m0 = item / tasks * block_rows, m1 = std::min(m, m0 + block_rows);
      const int64_t b0 = per_task * task;
      const int nb = static_cast<int>(std::min<int64_t>(per_task, blocks - b0));
      const int64_t row_tile = per_task == 4 ? QROWS4 : per_task == 3 ? QROWS3 : QROWS;
      if (m <= QDIRECT) {
        for (int b = 0; b < nb; ++b)
          quant_direct_for(static_cast<int>(m))(xp, k, xsum.data(), qw, b0 + b, tile.data() + 16 * b);
      } else {
        for (int64_t c0 = 0; c0 < pairs; c0 += kc) {
          const int64_t cp = std::min(kc, pairs - c0);
          const __m512i* w = chunk;
          int64_t stride = QKC;
          if (bf) {  // read in place, the first row group prefetching ahead
            w = qw.bf + b0 * pairs + c0;
            stride = pairs;
          } else {
            for (int b = 0; b < nb; ++b) dequant_chunk(qw, b0 + b, c0, cp, chunk + b * QKC);
          }
          for (int64_t r0 = m0; r0 < m1; r0 += row_tile) {
            const int rows = static_cast<int>(std::min<int64_t>(row_tile, m1 - r0));
            quant_rows_for(rows, nb)(xp + r0 * k + 2 * c0, k, w, stride, cp, tile.data() + (r0 - m0) * QTILE, c0 == 0,
                                     bf && r0 == m0);
          }
        }
      }
      for (int b = 0; b < nb; ++b) {
        const int64_t col = (b0 + b) * 16;
        const __m512 scale = qw.scales8 ? _mm512_loadu_ps(qw.scales8 + col) : _mm512_set1_ps(1.f);
        __m512 add = _mm512_setzero_ps();
        if (bp) {
          const __m256i bb = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bp + col));
          add = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bb), 16));
        }
        for (int64_t r = m0; r < m1; ++r) {
          const __m512 v = _mm512_fmadd_ps(_mm512_loadu_ps(tile.data() + (r - m0) * QTILE + 16 * b), scale, add);
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(op + r * n + col), (__m256i)_mm512_cvtneps_pbh(v));
        }
      }
    }
  });
}
#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
// The same packed layouts on AVX2 (no bf16 dot product, no AVX512): weights are unpacked to fp32 in element
// order (element 2j + t of a block's input pair p is column j, input 2p + t), x is converted to fp32 once per
// call, and each register of 8 weights meets a broadcast input pair (x[2p], x[2p + 1]) in an fp32 FMA; the pair
// lanes of a column are added at the end. 4-bit weights are dequantised exactly, (q - z) * s in fp32.
// Up to A2_DIRECT rows each unpacked register is used at once (one sequential weight stream per block); past
// that a task unpacks A2_KC input pairs of its block into a 16 KB fp32 chunk that every row tile reuses.
constexpr int A2_DIRECT = 3;
constexpr int A2_ROWS = 3;        // rows per register tile past A2_DIRECT (12 accumulators)
constexpr int64_t A2_KC = 128;    // input pairs per unpacked chunk: 128 x 32 floats = 16 KB, in L1
constexpr int64_t A2_MROWS = 192; // rows per row block, so that a thread's share of x stays in cache
constexpr int64_t A2_PREFETCH = 2048;

struct Avx2Weights {
  const uint16_t* bf;        // bf16 layout, or null
  const int8_t* q8;          // int8 layout, or null
  const uint8_t* q4;         // 4-bit layout, or null
  const float* scales8;      // int8: [N]
  const c10::Half* scales4;  // 4-bit: [G, N]
  const c10::Half* zeros4;   // 4-bit: [G, N]
  int64_t n, pairs, group_pairs;
};

// One group's scales s and offsets -z * s of a block's 16 columns, spread to element order (each column twice).
struct Avx2Group {
  __m256 s[4], o[4];
};

inline Avx2Group avx2_group(const Avx2Weights& w, int64_t g, int64_t col) {
  const __m256 s_lo = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w.scales4 + g * w.n + col)));
  const __m256 s_hi = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w.scales4 + g * w.n + col + 8)));
  const __m256 z_lo = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w.zeros4 + g * w.n + col)));
  const __m256 z_hi = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w.zeros4 + g * w.n + col + 8)));
  const __m256i first = _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3), second = _mm256_setr_epi32(4, 4, 5, 5, 6, 6, 7, 7);
  const __m256 o_lo = _mm256_mul_ps(_mm256_sub_ps(_mm256_setzero_ps(), z_lo), s_lo);
  const __m256 o_hi = _mm256_mul_ps(_mm256_sub_ps(_mm256_setzero_ps(), z_hi), s_hi);
  Avx2Group grp;
  grp.s[0] = _mm256_permutevar8x32_ps(s_lo, first);
  grp.s[1] = _mm256_permutevar8x32_ps(s_lo, second);
  grp.s[2] = _mm256_permutevar8x32_ps(s_hi, first);
  grp.s[3] = _mm256_permutevar8x32_ps(s_hi, second);
  grp.o[0] = _mm256_permutevar8x32_ps(o_lo, first);
  grp.o[1] = _mm256_permutevar8x32_ps(o_lo, second);
  grp.o[2] = _mm256_permutevar8x32_ps(o_hi, first);
  grp.o[3] = _mm256_permutevar8x32_ps(o_hi, second);
  return grp;
}

// Block `block`'s input pair p as 4 registers of 8 fp32 weights in element order.
inline void avx2_unpack(const Avx2Weights& w, int64_t block, int64_t p, const Avx2Group& grp, __m256 v[4]) {
  const int64_t at = block * w.pairs + p;
  if (w.bf) {
    const uint16_t* q = w.bf + at * 32;
    for (int i = 0; i < 4; ++i) {
      const __m256i e = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q + 8 * i)));
      v[i] = _mm256_castsi256_ps(_mm256_slli_epi32(e, 16));
    }
  } else if (w.q8) {
    const int8_t* q = w.q8 + at * 32;
    for (int i = 0; i < 4; ++i)
      v[i] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(q + 8 * i))));
  } else {
    // Byte i holds element i in its low nibble and element 16 + i in its high one.
    const uint8_t* q = w.q4 + at * 16;
    const __m256i a = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(q)));
    const __m256i b = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(q + 8)));
    const __m256i low = _mm256_set1_epi32(15);
    v[0] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_and_si256(a, low)), grp.s[0], grp.o[0]);
    v[1] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_and_si256(b, low)), grp.s[1], grp.o[1]);
    v[2] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(a, 4)), grp.s[2], grp.o[2]);
    v[3] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(b, 4)), grp.s[3], grp.o[3]);
  }
}

inline __m256 avx2_pair(const float* x) {  // (x[0], x[1]) four times
  return _mm256_castpd_ps(_mm256_broadcast_sd(reinterpret_cast<const double*>(x)));
}

// tile rows [R, 32 element-order sums] = x [R rows of stride k] @ block `block`, unpacked
// as it goes.
template <int R>
void avx2_direct(const float* x, int64_t k, const Avx2Weights& w, int64_t block, float* tile) {
  __m256 acc[R][4];
  for (int r = 0; r < R; ++r)
    for (int i = 0; i < 4; ++i) acc[r][i] = _mm256_setzero_ps();
  Avx2Group grp{};
  const int64_t stride = w.bf ? 64 : w.q8 ? 32 : 16;
  const char* base = w.bf ? reinterpret_cast<const char*>(w.bf) : w.q8 ? reinterpret_cast<const char*>(w.q8)
                                                                       : reinterpret_cast<const char*>(w.q4);
  for (int64_t g0 = 0; g0 < w.pairs;) {  // one 4-bit group at a time (int8 and bf16: all pairs at once)
    const int64_t g = g0 / w.group_pairs, g1 = std::min(w.pairs, (g + 1) * w.group_pairs);
    if (w.q4) grp = avx2_group(w, g, block * 16);
    for (int64_t p = g0; p < g1; ++p) {
      _mm_prefetch(base + (block * w.pairs + p) * stride + A2_PREFETCH, _MM_HINT_T0);
      __m256 v[4];
      avx2_unpack(w, block, p, grp, v);
      for (int r = 0; r < R; ++r) {
        const __m256 xv = avx2_pair(x + r * k + 2 * p);
        for (int i = 0; i < 4; ++i) acc[r][i] = _mm256_fmadd_ps(xv, v[i], acc[r][i]);
      }
    }
    g0 = g1;
  }
  for (int r = 0; r < R; ++r)
    for (int i = 0; i < 4; ++i) _mm256_storeu_ps(tile + r * 32 + 8 * i, acc[r][i]);
}

// tile rows [R, 32] (+)= x [R rows of stride k, pairs from p0] @ an unpacked chunk [cp pairs, 32] fp32.
template <int R>
void avx2_rows(const float* x, int64_t k, const float* chunk, int64_t p0, int64_t cp, float* tile, bool first) {
  __m256 acc[R][4];
  for (int r = 0; r < R; ++r)
    for (int i = 0; i < 4; ++i) acc[r][i] = first ? _mm256_setzero_ps() : _mm256_loadu_ps(tile + r * 32 + 8 * i);
  for (int64_t p = 0; p < cp; ++p) {
    __m256 wv[4];
    for (int i = 0; i < 4; ++i) wv[i] = _mm256_loadu_ps(chunk + 32 * p + 8 * i);
    for (int r = 0; r < R; ++r) {
      const __m256 xv = avx2_pair(x + r * k + 2 * (p0 + p));
      for (int i = 0; i < 4; ++i) acc[r][i] = _mm256_fmadd_ps(xv, wv[i], acc[r][i]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int i = 0; i < 4; ++i) _mm256_storeu_ps(tile + r * 32 + 8 * i, acc[r][i]);
}

// 8 fp32 -> 8 bf16, rounded to nearest even (finite values; the sums here are).
inline __m128i avx2_to_bf16(__m256 v) {
  const __m256i u = _mm256_castps_si256(v);
  const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  const __m256i r = _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(odd, _mm256_set1_epi32(0x7fff))), 16);
  const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), 0xD8);
  return _mm256_castsi256_si128(packed);
}

// x [M, K] bf16; packed, scales as in the AVX512 version; bias [N] bf16 or none -> out [M, N] bf16.
void quant_linear(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scales, int64_t group_size,
                  const std::optional<at::Tensor>& bias, at::Tensor& out) {
  const int64_t m = x.size(0), k = x.size(1), n = out.size(1), blocks = n / 16, pairs = k / 2;
  if (m == 0) return;  // no rows: nothing to compute (the row-count dispatch below assumes at least one)
  const uint16_t* xp = reinterpret_cast<const uint16_t*>(x.const_data_ptr<c10::BFloat16>());
  const uint16_t* bp = bias ? reinterpret_cast<const uint16_t*>(bias->const_data_ptr<c10::BFloat16>()) : nullptr;
  uint16_t* op = reinterpret_cast<uint16_t*>(out.mutable_data_ptr<c10::BFloat16>());
  const bool bf = packed.scalar_type() == at::kBFloat16, int4 = !bf && group_size > 0;
  const Avx2Weights w{bf ? reinterpret_cast<const uint16_t*>(packed.const_data_ptr<c10::BFloat16>()) : nullptr,
                      bf || int4 ? nullptr : packed.const_data_ptr<int8_t>(),
                      int4 ? packed.const_data_ptr<uint8_t>() : nullptr,
                      bf || int4 ? nullptr : scales.const_data_ptr<float>(),
                      int4 ? scales.const_data_ptr<c10::Half>() : nullptr,
                      int4 ? scales.const_data_ptr<c10::Half>() + scales.size(1) * n : nullptr,
                      n, pairs, int4 ? group_size / 2 : pairs};
  std::vector<float> xf(m * k);
  at::parallel_for(0, m, 16, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin * k; i < end * k; ++i) xf[i] = bf16_to_float(xp[i]);
  });
  const int64_t row_blocks = m <= A2_DIRECT ? 1 : (m + A2_MROWS - 1) / A2_MROWS;
  const int64_t block_rows = (m + row_blocks - 1) / row_blocks;
  at::parallel_for(0, row_blocks * blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> chunk(m > A2_DIRECT ? A2_KC * 32 : 0), tile(block_rows * 32);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t block = item % blocks, m0 = item / blocks * block_rows, m1 = std::min(m, m0 + block_rows);
      const float* x0 = xf.data() + m0 * k;
      if (m <= A2_DIRECT) {
        if (m == 1) avx2_direct<1>(x0, k, w, block, tile.data());
        else if (m == 2) avx2_direct<2>(x0, k, w, block, tile.data());
        else avx2_direct<3>(x0, k, w, block, tile.data());
      } else {
        Avx2Group grp{};
        for (int64_t c0 = 0; c0 < pairs; c0 += A2_KC) {
          const int64_t cp = std::min(A2_KC, pairs - c0);
          for (int64_t p = 0; p < cp;) {
            const int64_t g = (c0 + p) / w.group_pairs, stop = std::min(cp, (g + 1) * w.group_pairs - c0);
            if (w.q4) grp = avx2_group(w, g, block * 16);
            for (; p < stop; ++p) {
              __m256 v[4];
              avx2_unpack(w, block, c0 + p, grp, v);
              for (int i = 0; i < 4; ++i) _mm256_storeu_ps(chunk.data() + 32 * p + 8 * i, v[i]);
            }
          }
          for (int64_t r0 = m0; r0 < m1; r0 += A2_ROWS) {
            const int rows = static_cast<int>(std::min<int64_t>(A2_ROWS, m1 - r0));
            const float* xr = xf.data() + r0 * k;
            float* t = tile.data() + (r0 - m0) * 32;
            if (rows == 3) avx2_rows<3>(xr, k, chunk.data(), c0, cp, t, c0 == 0);
            else if (rows == 2) avx2_rows<2>(xr, k, chunk.data(), c0, cp, t, c0 == 0);
            else avx2_rows<1>(xr, k, chunk.data(), c0, cp, t, c0 == 0);
          }
        }
      }
      // Each column's two pair lanes added; int8's per-column scale and the bias applied; rounded once.
      const int64_t col = block * 16;
      __m256 scale[2] = {_mm256_set1_ps(1.f), _mm256_set1_ps(1.f)}, add[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()};
      for (int h = 0; h < 2; ++h) {
        if (w.scales8) scale[h] = _mm256_loadu_ps(w.scales8 + col + 8 * h);
        if (bp) {
          const __m256i b16 = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(bp + col + 8 * h)));
          add[h] = _mm256_castsi256_ps(_mm256_slli_epi32(b16, 16));
        }
      }
      for (int64_t r = m0; r < m1; ++r) {
        const float* t = tile.data() + (r - m0) * 32;
        for (int h = 0; h < 2; ++h) {
          // hadd of elements 0-7 and 8-15 of this half gives columns 0 1 4 5 2 3 6 7; the permute puts them in order.
          const __m256 sums = _mm256_hadd_ps(_mm256_loadu_ps(t + 16 * h), _mm256_loadu_ps(t + 16 * h + 8));
          const __m256 cols = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(sums), 0xD8));
          const __m256 v = _mm256_fmadd_ps(cols, scale[h], add[h]);
          _mm_storeu_si128(reinterpret_cast<__m128i*>(op + r * n + col + 8 * h), avx2_to_bf16(v));
        }
      }
    }
  });
}
#else
void quant_linear(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t, const std::optional<at::Tensor>&,
                  at::Tensor&) {
  TORCH_CHECK(false, "llmctl_cpu.quant_linear needs AVX512-BF16, or AVX2 with FMA and F16C (see quant_linear_available)");
}
#endif

// Whether quant_linear is built: 0 no, 1 the AVX2 version (fp32 FMA), 2 the AVX512-BF16 one (bf16 dot products).
int64_t quant_linear_level() {
#ifdef __AVX512BF16__
  return 2;
#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
  return 1;
#else
  return 0;
#endif
}

bool quant_linear_available() {
#if defined(__AVX512BF16__) || (defined(__AVX2__) && defined(__FMA__) && defined(__F16C__))
  return true;
#else
  return false;
#endif
}

// -- every decoder layer of one step in one call --------------------------------------------------
// LlamaModel.forward's loop (agent/engine/models/llama.py) with the same kernels in the same order, so the
// same results bit for bit, without the Python between the ops: ~100 us per layer, a third of a batch-1 decode
// step of SmolLM2-135M. Per layer: h, residual = rms_norm(x + residual); qkv = linear(h); rotary on q and k in
// place; k, v written to the pools at their slots; attention (decode rows first, then prefill rows);
// o = linear(attn); h, residual = rms_norm(o + residual); x = down(silu_and_mul(gate_up(h))).
// Linears by kind (kernels/cpu/__init__.py LINEAR_*): 0 a oneDNN-packed dense weight, 1 a plain dense weight
// (at::linear, as F.linear), 2 llmctl's int8 layout, 3 llmctl's 4-bit layout, 4 llmctl's blocked bf16 layout.
at::Tensor fused_linear(const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& scales,
                        const std::optional<at::Tensor>& bias, int64_t kind, int64_t group) {
  if (kind == 0) {
    static const auto op = c10::Dispatcher::singleton().findSchemaOrThrow("mkldnn::_linear_pointwise", "");
    torch::jit::Stack stack{x, w, bias, std::string("none"), c10::List<std::optional<at::Scalar>>(),
                            std::optional<std::string>()};
    op.callBoxed(stack);
    return stack[0].toTensor();
  }
  if (kind == 1) return at::linear(x, w, bias);
  TORCH_CHECK(kind >= 2 && kind <= 4, "llmctl_cpu.decoder_layers: unknown linear kind ", kind);
  at::Tensor out = at::empty({x.size(0), w.size(0) * 16}, x.options());
  quant_linear(x, w, kind == 4 ? at::Tensor() : *scales, kind == 3 ? group : 0, bias, out);
  return out;
}

std::tuple<at::Tensor, at::Tensor> decoder_layers(
    const at::Tensor& x_in, const std::vector<at::Tensor>& norms, const std::vector<at::Tensor>& weights,
    const std::vector<std::optional<at::Tensor>>& scales, const std::vector<std::optional<at::Tensor>>& biases,
    const std::vector<int64_t>& kinds, const std::vector<int64_t>& groups, const std::vector<at::Tensor>& k_caches,
    const std::vector<at::Tensor>& v_caches, const at::Tensor& cos, const at::Tensor& sin,
    const at::Tensor& slot_mapping, const std::optional<at::Tensor>& decode_tables,
    const std::optional<at::Tensor>& context_lens, const std::optional<at::Tensor>& prefill_tables,
    const std::optional<at::Tensor>& cu_seqlens, const std::optional<at::Tensor>& starts, int64_t num_decodes,
    int64_t heads, int64_t kv_heads, int64_t head_dim, double eps, double scale, int64_t tile) {
  const int64_t layers = static_cast<int64_t>(k_caches.size()), t = x_in.size(0);
  const int64_t q_size = heads * head_dim, kv_size = kv_heads * head_dim;
  TORCH_CHECK(norms.size() == 2 * layers && weights.size() == 4 * layers && scales.size() == 4 * layers &&
                  biases.size() == 4 * layers && kinds.size() == 4 * layers && groups.size() == 4 * layers &&
                  v_caches.size() == layers,
              "llmctl_cpu.decoder_layers: per-layer lists of mismatched lengths");
  const int64_t* slots = slot_mapping.const_data_ptr<int64_t>();
  at::Tensor x = x_in, residual;
  for (int64_t l = 0; l < layers; ++l) {
    auto linear = [&](int64_t i, const at::Tensor& in) {
      const int64_t j = 4 * l + i;
      return fused_linear(in, weights[j], scales[j], biases[j], kinds[j], groups[j]);
    };
    at::Tensor h = at::empty_like(x);
    std::optional<at::Tensor> new_residual;
    if (l > 0) new_residual = at::empty_like(x);
    rms_norm(x, l > 0 ? std::optional<at::Tensor>(residual) : std::nullopt, norms[2 * l], eps, h, new_residual);
    residual = l > 0 ? *new_residual : x;

    at::Tensor qkv = linear(0, h);  // [T, q + 2 kv]
    rotary_embedding(qkv, qkv.size(1), heads + kv_heads, head_dim, cos, sin);  // q's heads, then k's
    const at::Tensor& kc = k_caches[l];
    const at::Tensor& vc = v_caches[l];
    const int64_t elem = kc.element_size();
    char* kp = static_cast<char*>(kc.data_ptr());
    char* vp = static_cast<char*>(vc.data_ptr());
    const char* src = static_cast<const char*>(qkv.const_data_ptr());
    const int64_t row = qkv.size(1) * elem;
    for (int64_t i = 0; i < t; ++i) {
      std::memcpy(kp + slots[i] * kv_size * elem, src + i * row + q_size * elem, kv_size * elem);
      std::memcpy(vp + slots[i] * kv_size * elem, src + i * row + (q_size + kv_size) * elem, kv_size * elem);
    }
    at::Tensor q = qkv.narrow(1, 0, q_size).contiguous().view({t, heads, head_dim});
    at::Tensor attn = at::empty_like(q);
    if (num_decodes > 0) {
      at::Tensor out = attn.narrow(0, 0, num_decodes);
      paged_attention_decode(q.narrow(0, 0, num_decodes), kc, vc, *decode_tables, *context_lens, scale, out);
    }
    if (num_decodes < t) {
      at::Tensor out = attn.narrow(0, num_decodes, t - num_decodes);
      prefill_attention(q.narrow(0, num_decodes, t - num_decodes), kc, vc, *prefill_tables, *cu_seqlens, *starts,
                        scale, tile, out);
    }
    at::Tensor o = linear(1, attn.view({t, q_size}));

    at::Tensor h2 = at::empty_like(o), residual2 = at::empty_like(o);
    std::optional<at::Tensor> r2 = residual2;
    rms_norm(o, residual, norms[2 * l + 1], eps, h2, r2);
    residual = residual2;
    at::Tensor gate_up = linear(2, h2);
    at::Tensor act = at::empty({t, gate_up.size(1) / 2}, gate_up.options());
    silu_and_mul(gate_up, act);
    x = linear(3, act);
  }
  return {x, residual};
}

}  // namespace

TORCH_LIBRARY(llmctl_cpu, m) {
  m.def("rms_norm(Tensor x, Tensor? residual, Tensor weight, float eps, Tensor(a!) out, Tensor(b!)? new_residual) -> ()");
  m.def("rotary_embedding(Tensor(a!) qkv, int row_stride, int heads, int head_dim, Tensor cos, Tensor sin) -> ()");
  m.def("silu_and_mul(Tensor gate_up, Tensor(a!) out) -> ()");
  m.def("paged_attention_decode(Tensor q, Tensor k_cache, Tensor v_cache, Tensor block_tables, Tensor context_lens, float scale, Tensor(a!) out) -> ()");
  m.def("prefill_attention(Tensor q, Tensor k_cache, Tensor v_cache, Tensor block_tables, Tensor cu_seqlens, Tensor starts, float scale, int tile, Tensor(a!) out) -> ()");
  m.def("quant_linear(Tensor x, Tensor packed, Tensor scales, int group_size, Tensor? bias, Tensor(a!) out) -> ()");
  m.def("quant_linear_available() -> bool", &quant_linear_available);
  m.def("quant_linear_level() -> int", &quant_linear_level);
  m.def("decoder_layers(Tensor x, Tensor[] norms, Tensor[] weights, Tensor?[] scales, Tensor?[] biases, int[] kinds, int[] groups, Tensor[] k_caches, Tensor[] v_caches, Tensor cos, Tensor sin, Tensor slot_mapping, Tensor? decode_tables, Tensor? context_lens, Tensor? prefill_tables, Tensor? cu_seqlens, Tensor? starts, int num_decodes, int heads, int kv_heads, int head_dim, float eps, float scale, int tile) -> (Tensor, Tensor)",
        &decoder_layers);  // for every backend: its weights may be oneDNN (MkldnnCPU) tensors
}

TORCH_LIBRARY_IMPL(llmctl_cpu, CPU, m) {
  m.impl("rms_norm", &rms_norm);
  m.impl("rotary_embedding", &rotary_embedding);
  m.impl("silu_and_mul", &silu_and_mul);
  m.impl("paged_attention_decode", &paged_attention_decode);
  m.impl("prefill_attention", &prefill_attention);
  m.impl("quant_linear", &quant_linear);
}
