// The packed matmul's native CPU face: y (M, N_pad) = x (M, K_pad) @ W for few rows of x, reading W's bit planes
// once and decoding each weight in registers right before its multiply-add.
//
// W's layout is lpnum.kernels.planes': per K tile of tile_k rows, a plane of w bits holds in byte row r, bit field
// j, the code of tile row j * (tile_k * w / 8) + r; planes are row-major with N_pad columns. A code's value comes
// from a table of the element format's values (computed in Python by lpnum.kernels.dequant, so every format the
// layout holds decodes here exactly as there), and the weight is
//   ((((value - zero) * pre) * scale) * tensor) * post
// the operations and order of lpnum.kernels.dequant.apply_scale (an absent zero point is 0, an absent tensor scale,
// pre or post is 1: exact identities): post is 2^element_exponent for general scales;
// power-of-two scales arrive with the element exponent folded in, as two normal float32 factors pre and scale
// where 2^t is not a normal float32 (pre is 1 elsewhere). Scales come as uint8 codes with a 256-entry table of
// their values, or as float32 values; both have one row per K group.
//
// Work: the output columns are cut into one slab per thread of XLA's intra-op pool (the calling thread takes slabs
// too, so the call never waits on a busy pool); how they are cut changes no sum. Within a slab, K is walked tile by
// tile and chunk by chunk (byte rows within one scale group per bit field); each chunk's byte rows are loaded once,
// with a software prefetch ahead along the row, and rows of x are taken 8, 4, 2 or 1 at a time over the chunk
// while it is in L1, their partial sums held in registers. A chunk's sum of x * (value - zero) is multiplied by its
// scale (and then the tensor scale) once where every product stays in float32's normal range (see scalable), as
// block-scaled hardware and int4 kernels apply block scales; otherwise (pre or post factors, values out of range)
// every weight is computed as above, and the weights of a byte's fields share their column's partial sums.
//
// Decoding: 4-bit codes permute a 16-entry table (AVX-512: one permute; AVX2: two 8-entry permutes and a blend).
// With AVX2 and one row of x, where every value is a bfloat16 number (int4, uint4, FP4 E2M1), the values' top two
// bytes are byte-shuffled and unpacked instead (split16): on AMD Zen 1 this decodes at about twice the speed. 8-bit
// integers are converted; FP8 E4M3 and E5M2 codes are rearranged into float16 bits and converted (F16C), 3.4x faster
// than the gather at one row; other codes gather from the table.
//
// Built and loaded by lpnum.native; called from lpnum.kernels.cpu_matmul.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <numeric>
#include <type_traits>
#include <vector>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include "native_slabs.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// The vector width: 16 float32 lanes with AVX-512, 8 with AVX2 (and in the portable fallback, which spells every
// lane-wise step as a loop and is correct but slow: kIsa says which, so that callers run it only where asked).
#if defined(__AVX512F__)
constexpr int kLanes = 16;
constexpr int kIsa = 2;
#elif defined(__AVX2__)
constexpr int kLanes = 8;
constexpr int kIsa = 1;
#else
constexpr int kLanes = 8;
constexpr int kIsa = 0;
#endif
constexpr int kMinItem = 1024;  // output columns per work item, at least (wider ones stream better)
constexpr int kAlign = 128;    // N_pad is a multiple of this
constexpr int kAhead = 256;    // software prefetch distance along a plane's row, in bytes

typedef float vf __attribute__((vector_size(4 * kLanes)));
typedef int32_t vi __attribute__((vector_size(4 * kLanes)));

// How a weight is computed from its value v (after the zero point): scale applied to the chunk's sum (kSummed), or
// v * scale, (v * pre) * scale, (v * scale) * tensor, or all of ((((v * pre) * scale) * tensor) * post): the
// factors that are not 1 for the format, in dequantize's order.
enum Mode : int32_t { kSummed = -1, kPlain = 0, kPre = 1, kTensor = 2, kFull = 3 };

// How a code becomes its value: a gather from the table (any format), one permute of a 16-entry table (4-bit
// codes), a conversion where the table is the identity on int8 or uint8 codes, or (kHalf7, kHalf8: 8-bit codes
// whose table is a float16 conversion, OCP's FP8 E4M3 and E5M2) the float16 whose bits are the code's sign bit
// above its other 7 bits shifted left by 7 or 8, converted by the CPU and multiplied by half_scale, with NaN for the
// codes whose low 7 bits are half_nan (see half_value; the table is checked against it per call). kSplit16 is
// chosen here, not by the caller: with AVX2 and one row of x, a 16-entry table whose values are bfloat16 numbers
// (every bit below the top 16 is zero: int4, uint4, FP4 E2M1, ...) is read as two byte tables (split16).
enum Decode : int32_t { kGather = 0, kTable16 = 1, kInt8 = 2, kUint8 = 3, kSplit16 = 4, kHalf7 = 5, kHalf8 = 6 };

struct Problem {
  const float* x;
  int64_t m, k_pad, n_pad;
  const uint8_t* planes[3];
  int widths[3];
  int nplanes;
  int tile_k, group;
  const float* table;
  const uint8_t* scale_codes;  // with scale_table, or
  const float* scale_table;
  const float* scale_pre;      // or null: a factor applied before the scale, (v * pre) * scale, as dequantize
                               // applies powers of two outside float32's normal range in two normal factors
  int32_t field_lo, field_hi, field_add, field_shift;  // codes c in [field_lo, field_hi] are the float32 whose
                                                       // bits are (c + field_add) << field_shift
  const float* scale_values;   // float32 scale values
  const float* zero;           // or null
  float tensor, post;
  float half_scale;   // kHalf7, kHalf8: the power of two the float16 values are multiplied by
  int32_t half_nan;   // and the low 7 bits of the codes that are NaN (-1: none but the float16 NaNs)
  bool factor;        // whether chunk sums may be scaled once (see scalable): x's range allows it
  int32_t mode;       // how weights are scaled otherwise (Mode)
  float s_min, s_max;
  float* out;
};

// kLanes bytes widened to int32 lanes (sign-extended when is_signed). Widening, permutes and gathers through GCC's
// generic vectors are scalarized, so x86 with AVX-512 or AVX2 uses the instructions directly.
inline vi load_codes(const uint8_t* p, bool is_signed) {
#if defined(__AVX512F__)
  const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return reinterpret_cast<vi>(is_signed ? _mm512_cvtepi8_epi32(b) : _mm512_cvtepu8_epi32(b));
#elif defined(__AVX2__)
  const __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
  return reinterpret_cast<vi>(is_signed ? _mm256_cvtepi8_epi32(b) : _mm256_cvtepu8_epi32(b));
#else
  vi c;
  for (int l = 0; l < kLanes; ++l) c[l] = is_signed ? static_cast<int8_t>(p[l]) : p[l];
  return c;
#endif
}

// A 16-entry table of values in registers: one vector with AVX-512, two halves otherwise.
struct Table16 {
  vf lo, hi;
};

inline Table16 load_table16(const float* table) {
  Table16 t{};
  std::memcpy(&t.lo, table, sizeof(vf));
  if constexpr (kLanes == 8) std::memcpy(&t.hi, table + 8, sizeof(vf));
  return t;
}

// The float16 bits of 8-bit code c for kHalf7 (shift 7) or kHalf8 (shift 8): the sign bit (0x80) moves to bit 15,
// the other seven bits to bits shift..shift + 6.
inline uint32_t half_bits(uint32_t c, int shift) { return ((c & 0x80) << 8) | ((c & 0x7f) << shift); }

// The float32 value of float16 bits h (exact: every float16 is a float32; computed with integers, so that a
// denormals-are-zero thread cannot flush a subnormal float16).
inline float half_value(uint32_t h) {
  const uint32_t sign = (h & 0x8000) << 16, e = (h >> 10) & 0x1f;
  uint32_t m = h & 0x3ff;
  uint32_t bits;
  if (e == 0x1f) {
    bits = sign | 0x7f800000 | (m << 13);
  } else if (e) {
    bits = sign | ((e + 112) << 23) | (m << 13);
  } else if (m == 0) {
    bits = sign;
  } else {  // subnormal: m * 2^-24, normalized
    int k = 0;
    while (!(m & 0x400)) m <<= 1, ++k;
    bits = sign | ((113 - k) << 23) | ((m & 0x3ff) << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// The values of codes c (DEC: a 16-entry table read at c's low 4 bits, a conversion of int8/uint8 codes, a float16
// conversion (kHalf7, kHalf8), or a gather from the table).
template <int DEC>
inline vf decode(vi c, const Problem& p, const Table16& table16) {
  const float* table = p.table;
  if constexpr (DEC == kHalf7 || DEC == kHalf8) {
#if defined(__AVX2__) && defined(__F16C__)
    const vi h = DEC == kHalf7 ? (c + (c & 0x80)) << 7 : c << 8;  // half_bits, for codes below 256
#if defined(__AVX512F__)
    vf v = reinterpret_cast<vf>(_mm512_cvtph_ps(_mm512_cvtepi32_epi16(reinterpret_cast<__m512i>(h))));
#else
    const __m256i h8 = reinterpret_cast<__m256i>(h);
    vf v = reinterpret_cast<vf>(
        _mm256_cvtph_ps(_mm_packus_epi32(_mm256_castsi256_si128(h8), _mm256_extracti128_si256(h8, 1))));
#endif
    v = v * p.half_scale;
    if (p.half_nan >= 0) v = ((c & 0x7f) == p.half_nan) ? vf{} + __builtin_nanf("") : v;
    return v;
#else
    vf v;
    for (int l = 0; l < kLanes; ++l) v[l] = table[c[l]];
    return v;
#endif
  } else if constexpr (DEC == kTable16) {
#if defined(__AVX512F__)
    return reinterpret_cast<vf>(
        _mm512_permutexvar_ps(reinterpret_cast<__m512i>(c), reinterpret_cast<__m512>(table16.lo)));
#elif defined(__AVX2__)
    // Each half is read at the low 3 bits; bit 3, shifted to the sign bit, picks the half.
    const __m256i i = reinterpret_cast<__m256i>(c);
    const __m256 lo = _mm256_permutevar8x32_ps(reinterpret_cast<__m256>(table16.lo), i);
    const __m256 hi = _mm256_permutevar8x32_ps(reinterpret_cast<__m256>(table16.hi), i);
    return reinterpret_cast<vf>(_mm256_blendv_ps(lo, hi, _mm256_castsi256_ps(_mm256_slli_epi32(i, 28))));
#else
    vf v;
    for (int l = 0; l < kLanes; ++l) v[l] = table[c[l] & 15];
    return v;
#endif
  } else if constexpr (DEC == kInt8 || DEC == kUint8) {
    return __builtin_convertvector(c, vf);
  } else {
#if defined(__AVX512F__)
    return reinterpret_cast<vf>(_mm512_i32gather_ps(reinterpret_cast<__m512i>(c), table, 4));
#elif defined(__AVX2__)
    return reinterpret_cast<vf>(_mm256_i32gather_ps(table, reinterpret_cast<__m256i>(c), 4));
#else
    vf v;
    for (int l = 0; l < kLanes; ++l) v[l] = table[c[l]];
    return v;
#endif
  }
}

#if defined(__AVX2__) && !defined(__AVX512F__)
// The top two bytes of each of a 16-entry table's float32 values, as byte tables repeated in both 128-bit lanes
// (split16's operands).
struct Split16 {
  __m256i b2, b3;
};

inline Split16 load_split16(const float* table) {
  alignas(16) uint8_t b2[16], b3[16];
  for (int c = 0; c < 16; ++c) {
    uint32_t bits;
    std::memcpy(&bits, table + c, 4);
    b2[c] = static_cast<uint8_t>(bits >> 16);
    b3[c] = static_cast<uint8_t>(bits >> 24);
  }
  return {_mm256_broadcastsi128_si256(_mm_load_si128(reinterpret_cast<const __m128i*>(b2))),
          _mm256_broadcastsi128_si256(_mm_load_si128(reinterpret_cast<const __m128i*>(b3)))};
}

// Whether every value of a 16-entry table has zero low 16 bits (is a bfloat16 number), so that split16 rebuilds it
// from its top two bytes.
inline bool splittable(const float* table) {
  for (int c = 0; c < 16; ++c) {
    uint32_t bits;
    std::memcpy(&bits, table + c, 4);
    if (bits & 0xffff) return false;
  }
  return true;
}

// The 32 bytes of a 4-bit plane's row at p (columns col..col+31, both fields), ready for split16: byte shuffles and
// unpacks work within 128-bit lanes, so the 4-byte column groups are ordered 0, 2, 4, 6 | 1, 3, 5, 7, which the
// unpacks' lane-wise order turns back into columns 0-7, 8-15, 16-23, 24-31.
inline __m256i split16_bytes(const uint8_t* p) {
  return _mm256_permutevar8x32_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)),
                                     _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7));
}

// The values of field j's 32 codes in those bytes: v[c] lane l is column 8c + l. Each value's top two bytes are
// looked up with byte shuffles and interleaved above two zero bytes, which on AVX2 costs fewer and cheaper
// instructions than two 8-entry permutes and a blend per vector.
inline void split16(__m256i bytes, int j, const Split16& t, vf v[4]) {
  const __m256i low4 = _mm256_set1_epi8(0x0f), zero = _mm256_setzero_si256();
  const __m256i codes = _mm256_and_si256(j ? _mm256_srli_epi16(bytes, 4) : bytes, low4);
  const __m256i b2 = _mm256_shuffle_epi8(t.b2, codes), b3 = _mm256_shuffle_epi8(t.b3, codes);
  const __m256i lo = _mm256_unpacklo_epi8(b2, b3), hi = _mm256_unpackhi_epi8(b2, b3);
  v[0] = reinterpret_cast<vf>(_mm256_unpacklo_epi16(zero, lo));
  v[1] = reinterpret_cast<vf>(_mm256_unpackhi_epi16(zero, lo));
  v[2] = reinterpret_cast<vf>(_mm256_unpacklo_epi16(zero, hi));
  v[3] = reinterpret_cast<vf>(_mm256_unpackhi_epi16(zero, hi));
}
#endif

inline vf load_vf(const float* p) {
  vf v;
  std::memcpy(&v, p, sizeof(vf));
  return v;
}

inline bool all_lanes(vi mask) {
#if defined(__AVX512F__)
  return _mm512_cmpeq_epi32_mask(reinterpret_cast<__m512i>(mask), _mm512_set1_epi32(-1)) == 0xFFFF;
#elif defined(__AVX2__)
  return _mm256_movemask_ps(_mm256_castsi256_ps(reinterpret_cast<__m256i>(mask))) == 0xFF;
#else
  bool ok = true;
  for (int l = 0; l < kLanes; ++l) ok &= mask[l] != 0;
  return ok;
#endif
}

// The float32 scales of scale row g for the 16 columns from col, and their `pre` factors (see Problem). Where every
// lane's uint8 code is a positive normal float32 whose bits are (code + add) << shift with pre = 1 (E8M0's codes
// 1-254, E4M3's normal codes: the table says which), the bits are computed; other codes are looked up in the tables.
inline vf scale_vec(const Problem& p, int64_t g, int64_t col, vf* pre) {
  const int64_t off = g * p.n_pad + col;
  *pre = vf{} + 1.0f;
  if (!p.scale_codes) return load_vf(p.scale_values + off);
  const vi c = load_codes(p.scale_codes + off, false);
  if (all_lanes((c >= p.field_lo) & (c <= p.field_hi)))
    return reinterpret_cast<vf>((c + p.field_add) << p.field_shift);
#if defined(__AVX512F__)
  const __m512i idx = reinterpret_cast<__m512i>(c);
  if (p.scale_pre) *pre = reinterpret_cast<vf>(_mm512_i32gather_ps(idx, p.scale_pre, 4));
  return reinterpret_cast<vf>(_mm512_i32gather_ps(idx, p.scale_table, 4));
#elif defined(__AVX2__)
  const __m256i idx = reinterpret_cast<__m256i>(c);
  if (p.scale_pre) *pre = reinterpret_cast<vf>(_mm256_i32gather_ps(p.scale_pre, idx, 4));
  return reinterpret_cast<vf>(_mm256_i32gather_ps(p.scale_table, idx, 4));
#else
  vf s;
  for (int l = 0; l < kLanes; ++l) {
    s[l] = p.scale_table[c[l]];
    if (p.scale_pre) (*pre)[l] = p.scale_pre[c[l]];
  }
  return s;
#endif
}

inline int64_t scale_row(const Problem& p, int64_t k) { return p.group < p.k_pad ? k / p.group : 0; }

// Whether a chunk's sum of x * (v - zero) may be multiplied by its scales S (then by the tensor scale T) once,
// instead of scaling every weight: true when each lane's S and S * T is 0 or lies within [s_min, s_max], the range
// (set per call from x's and the elements' magnitudes and the chunk's length) where every x * v, v * S, x * v * S,
// their products with T and every chunk sum times S and T is a finite normal float32. Then no product over- or
// underflows that the reference's does not, and the result differs from the reference's sum of x * ((v * S) * T)
// only by rounding, within the float32 summation bound: the chunk sum's errors, the two scale roundings (exact for
// power-of-two S: MX's products are the reference's) and the weights' own rounding, all relative to x * v * S * T.
// NaN or infinite S never qualify, nor do scales applied in two factors (pre != 1).
// scalable gives the lanes where that holds, to be and-ed over a chunk's scales and tested once (all_lanes).
inline vi scalable(const Problem& p, vf S, vf pre) {
  auto in_range = [&](vf v) {
    const vf a = reinterpret_cast<vf>(reinterpret_cast<vi>(v) & 0x7fffffff);
    return (a == 0.0f) | ((a >= p.s_min) & (a <= p.s_max));
  };
  const vi ok = (pre == 1.0f) & in_range(S);
  return p.tensor == 1.0f ? ok : ok & in_range(S * p.tensor);
}

// One pass over `chunk` byte rows from r0 of K tile t (MULTI: `chunk` K rows from r0), for rows [m0, m0 + MB) of
// x and columns [c0, c0 + cw): adds into out. The chunk lies within one scale group per bit field. Where its
// scales are scalable (above), the chunk sums x * (v - zero) and multiplies the sum by the scales once; elsewhere
// each weight is computed as dequantize computes it and the products are summed. The MB x NV partial sums stay in
// registers over the chunk.
// MULTI is the generic path, for codes split over several planes or held in 2- and 1-bit planes.
template <int MB, int NV, int DEC, bool ZERO, bool MULTI>
void pass(const Problem& p, int64_t m0, int64_t c0, int64_t cw, int64_t t, int r0, int chunk) {
  constexpr int w = DEC == kTable16 || DEC == kSplit16 ? 4 : 8;  // single planes: 4-bit tables or 8-bit codes
  constexpr int per_byte = MULTI ? 1 : 8 / w;
  const int tk = p.tile_k;
  const int rows = tk / per_byte;
  Table16 table16{};
  if constexpr (DEC == kTable16) table16 = load_table16(p.table);
#if defined(__AVX2__) && !defined(__AVX512F__)
  Split16 split{};
  if constexpr (DEC == kSplit16) split = load_split16(p.table);
#endif
  const vf tensor = vf{} + p.tensor, post = vf{} + p.post;
  const float* xt = p.x + m0 * p.k_pad + t * tk;

  for (int64_t col = c0; col < c0 + cw; col += NV * kLanes) {
    vf s[per_byte][NV], pre[per_byte][NV], z[per_byte][NV];
    vi ok = vi{} == 0;
    for (int j = 0; j < per_byte; ++j) {
      const int64_t g = scale_row(p, t * tk + j * rows + r0);
      for (int c = 0; c < NV; ++c) {
        s[j][c] = scale_vec(p, g, col + c * kLanes, &pre[j][c]);
        z[j][c] = ZERO ? load_vf(p.zero + g * p.n_pad + col + c * kLanes) : vf{};
        ok &= scalable(p, s[j][c], pre[j][c]);
      }
    }
    const bool factor = p.factor && all_lanes(ok);
    vf part[per_byte][MB][NV];
    for (int j = 0; j < per_byte; ++j)
      for (int mm = 0; mm < MB; ++mm)
        for (int c = 0; c < NV; ++c) part[j][mm][c] = vf{};
    auto rows_of_chunk = [&](auto scaled_elements) {
      // Adds x's rows times the weights of value v (field j, vector c) of K row r to the partial sums.
      auto add = [&](int r, int j, int c, vf v) {
        if constexpr (ZERO) v = v - z[j][c];
        constexpr int mode = decltype(scaled_elements)::value;  // kSummed: the chunk sum is scaled after
        if constexpr (mode == kPlain) v = v * s[j][c];
        if constexpr (mode == kPre) v = (v * pre[j][c]) * s[j][c];
        if constexpr (mode == kTensor) v = (v * s[j][c]) * tensor;
        if constexpr (mode == kFull) v = (((v * pre[j][c]) * s[j][c]) * tensor) * post;
        // Scaled weights of both fields share their column's partial sums (fewer registers).
        const int pj = mode == kSummed ? j : 0;
#pragma GCC unroll 8
        for (int mm = 0; mm < MB; ++mm) part[pj][mm][c] += xt[mm * p.k_pad + j * rows + r] * v;
      };
      for (int r = r0; r < r0 + chunk; ++r) {
        const uint8_t* src = p.planes[0] + (t * rows + r) * p.n_pad + col;
        if constexpr (!MULTI) {
          // Prefetch kAhead bytes further along the row, or at the start of the next chunk's same row (the next
          // tile's first rows follow this tile's last ones).
          for (int line = 0; line < NV * kLanes; line += 64) {
            const int64_t ahead = col - c0 + line + kAhead;
            __builtin_prefetch(ahead < cw ? src + line + kAhead : src + chunk * p.n_pad + line + kAhead - cw);
          }
        }
#if defined(__AVX2__) && !defined(__AVX512F__)
        if constexpr (DEC == kSplit16) {
          static_assert(NV == 4 && per_byte == 2, "split16 decodes 32 bytes of a 4-bit plane");
          const __m256i bytes = split16_bytes(src);
#pragma GCC unroll 2
          for (int j = 0; j < 2; ++j) {
            vf v[4];
            split16(bytes, j, split, v);
#pragma GCC unroll 4
            for (int c = 0; c < 4; ++c) add(r, j, c, v[c]);
          }
          continue;
        }
#endif
        vi bytes[NV];
        if constexpr (MULTI) {  // the code of K row r, gathered from its field in every plane
          for (int c = 0; c < NV; ++c) bytes[c] = vi{};
          int low = 0;
          for (int i = 0; i < p.nplanes; ++i) {
            const int pw = p.widths[i];
            const int prows = tk * pw / 8;
            const int field = r / prows;
            const uint8_t* plane = p.planes[i] + (t * prows + r % prows) * p.n_pad + col;
            for (int c = 0; c < NV; ++c)
              bytes[c] |= ((load_codes(plane + c * kLanes, false) >> (pw * field)) & ((1 << pw) - 1)) << low;
            low += pw;
          }
        } else {
          for (int c = 0; c < NV; ++c) bytes[c] = load_codes(src + c * kLanes, DEC == kInt8);
        }
#pragma GCC unroll 2
        for (int j = 0; j < per_byte; ++j) {
#pragma GCC unroll 8
          for (int c = 0; c < NV; ++c) {
            // 16-entry permutes read the low 4 bits only: field 0 needs no mask, field 1 a shift.
            const vi code = (w == 4 && j == 1) ? bytes[c] >> 4 : bytes[c];
            add(r, j, c, decode<DEC>(code, p, table16));
          }
        }
      }
    };
    if (factor) {
      rows_of_chunk(std::integral_constant<int, kSummed>{});
    } else {
      switch (p.mode) {  // the factors that are not exact identities for this format
        case kPlain:
          rows_of_chunk(std::integral_constant<int, kPlain>{});
          break;
        case kPre:
          rows_of_chunk(std::integral_constant<int, kPre>{});
          break;
        case kTensor:
          rows_of_chunk(std::integral_constant<int, kTensor>{});
          break;
        default:
          rows_of_chunk(std::integral_constant<int, kFull>{});
      }
    }
    for (int mm = 0; mm < MB; ++mm) {
      float* o = p.out + (m0 + mm) * p.n_pad + col;
      for (int c = 0; c < NV; ++c) {
        vf sum = load_vf(o + c * kLanes);
        if (factor) {
          for (int j = 0; j < per_byte; ++j) sum += (part[j][mm][c] * s[j][c]) * tensor;
        } else {
          sum += part[0][mm][c];
        }
        std::memcpy(o + c * kLanes, &sum, sizeof(vf));
      }
    }
  }
}

// Vectors of output columns per row of x in a pass over mb rows: the mb x vectors partial sums (twice that for
// 4-bit codes) stay in registers, of which AVX-512 has 32 and AVX2 16. AVX-512 holds 16 sums of 8-bit codes (at 8
// rows of x, 2 vectors instead of 1: 1.3-2x faster from 4 rows, measured).
constexpr int vectors(int mb, int bits) {
  return kLanes == 16 ? std::min(8, (bits == 8 ? 16 : 8) / mb) : std::max(1, 4 / mb);
}

using PassFn = void (*)(const Problem&, int64_t, int64_t, int64_t, int64_t, int, int);

template <int MB, int NV>
PassFn pick(int dec, bool zero, bool multi) {
  if (multi) return zero ? pass<MB, NV, kGather, true, true> : pass<MB, NV, kGather, false, true>;
  switch (dec) {
    case kTable16:
      return zero ? pass<MB, NV, kTable16, true, false> : pass<MB, NV, kTable16, false, false>;
#if defined(__AVX2__) && !defined(__AVX512F__)
    case kSplit16:  // one row of x, a whole 32-byte vector of codes; other row blocks permute
      if constexpr (MB == 1 && NV == 4)
        return zero ? pass<MB, NV, kSplit16, true, false> : pass<MB, NV, kSplit16, false, false>;
      return zero ? pass<MB, NV, kTable16, true, false> : pass<MB, NV, kTable16, false, false>;
#endif
    case kInt8:
      return zero ? pass<MB, NV, kInt8, true, false> : pass<MB, NV, kInt8, false, false>;
    case kUint8:
      return zero ? pass<MB, NV, kUint8, true, false> : pass<MB, NV, kUint8, false, false>;
    case kHalf7:
      return zero ? pass<MB, NV, kHalf7, true, false> : pass<MB, NV, kHalf7, false, false>;
    case kHalf8:
      return zero ? pass<MB, NV, kHalf8, true, false> : pass<MB, NV, kHalf8, false, false>;
    default:
      return zero ? pass<MB, NV, kGather, true, false> : pass<MB, NV, kGather, false, false>;
  }
}

struct Plan {
  PassFn fns[4];  // for 8, 4, 2 and 1 rows of x at a time
  int chunk;      // byte rows (MULTI: K rows) per pass: divides the group size and the rows of every field
};

// The passes for 8, 4, 2 and 1 rows of x, their vectors sized for elements of BITS bits (8, or fewer).
template <int BITS>
void pick_all(Plan& plan, int dec, bool zero, bool multi) {
  plan.fns[0] = pick<8, vectors(8, BITS)>(dec, zero, multi);
  plan.fns[1] = pick<4, vectors(4, BITS)>(dec, zero, multi);
  plan.fns[2] = pick<2, vectors(2, BITS)>(dec, zero, multi);
  plan.fns[3] = pick<1, vectors(1, BITS)>(dec, zero, multi);
}

// Columns [c0, c0 + cw), all rows of x and all of K: out's block is zeroed, then accumulated K tile by K tile,
// chunk by chunk, the rows of x taken 8, 4, 2, 1 at a time over the same chunk (still in L1).
void run_item(const Problem& p, const Plan& plan, int64_t c0, int64_t cw, bool multi) {
  for (int64_t m = 0; m < p.m; ++m) std::memset(p.out + m * p.n_pad + c0, 0, cw * sizeof(float));
  const int rows = multi ? p.tile_k : p.tile_k * p.widths[0] / 8;
  for (int64_t t = 0; t < p.k_pad / p.tile_k; ++t) {
    for (int r0 = 0; r0 < rows; r0 += plan.chunk) {
      for (int64_t m0 = 0; m0 < p.m;) {
        const int64_t left = p.m - m0;
        const int which = left >= 8 ? 0 : left >= 4 ? 1 : left >= 2 ? 2 : 3;
        plan.fns[which](p, m0, c0, cw, t, r0, plan.chunk);
        m0 += 8 >> which;
      }
    }
  }
}

ffi::Error PackedMatmul(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::AnyBuffer plane0, ffi::AnyBuffer plane1,
                        ffi::AnyBuffer plane2, ffi::Buffer<ffi::F32> table, ffi::AnyBuffer scales,
                        ffi::Buffer<ffi::F32> scale_table, ffi::Buffer<ffi::F32> scale_pre,
                        ffi::Buffer<ffi::F32> zero, ffi::Buffer<ffi::F32> tensor, ffi::Buffer<ffi::S32> expert,
                        ffi::ResultBuffer<ffi::F32> out, int32_t bits, int32_t tile_k, int32_t group,
                        int32_t decode_kind, int32_t mode, int32_t pow2, float post, float vmax, float vmin,
                        int32_t field_lo, int32_t field_hi, int32_t field_add, int32_t field_shift,
                        float half_scale, int32_t half_nan) {
  auto xd = x.dimensions();
  auto od = out->dimensions();
  if (xd.size() != 2 || od.size() != 2 || xd[0] != od[0])
    return ffi::Error::InvalidArgument("lpnum packed matmul: x must be (M, K_pad) and out (M, N_pad)");
  Problem p{};
  p.x = x.typed_data();
  p.m = xd[0];
  p.k_pad = xd[1];
  p.n_pad = od[1];
  p.tile_k = tile_k;
  p.group = group;
  p.table = table.typed_data();
  p.out = out->typed_data();
  if (p.n_pad % kAlign || tile_k <= 0 || p.k_pad % tile_k || group <= 0 || (group <= tile_k && tile_k % group))
    return ffi::Error::InvalidArgument("lpnum packed matmul: inconsistent tile_k, group or padded shape");
  // Each weights operand holds one matrix, or one per expert (the grouped matmul's stacked weights, read at expert
  // `expert` in place): offset(count, one) is where expert `expert`'s matrix starts, or -1 if count fits neither.
  const int64_t e = expert.element_count() == 1 ? expert.typed_data()[0] : -1;
  int64_t experts = 0;
  auto offset = [&](size_t count, int64_t one) -> int64_t {
    if (count == static_cast<size_t>(one)) return 0;
    return experts > 1 && count == static_cast<size_t>(experts * one) ? e * one : -1;
  };
  const ffi::AnyBuffer* given[3] = {&plane0, &plane1, &plane2};
  int low = 0;
  for (int w : {4, 2, 1, 8}) {
    const bool has = w == 8 ? bits == 8 : (bits != 8 && (bits & w));
    if (!has) continue;
    const ffi::AnyBuffer& b = *given[p.nplanes];
    const int64_t one = p.k_pad / 8 * w * p.n_pad;
    if (!experts) experts = one > 0 && b.element_count() % one == 0 ? b.element_count() / one : 0;
    if (e < 0 || e >= experts || offset(b.element_count(), one) < 0)
      return ffi::Error::InvalidArgument("lpnum packed matmul: a plane does not match x's K and the output's N, or "
                                         "the expert index is out of range");
    p.planes[p.nplanes] = static_cast<const uint8_t*>(b.untyped_data()) + offset(b.element_count(), one);
    p.widths[p.nplanes++] = w;
    low += w;
  }
  if (low != bits || p.nplanes == 0) return ffi::Error::InvalidArgument("lpnum packed matmul: bad element bits");
  const int64_t scale_rows = group <= tile_k ? p.k_pad / group : 1;
  const int64_t scale_at = offset(scales.element_count(), scale_rows * p.n_pad);
  if (scale_at < 0) return ffi::Error::InvalidArgument("lpnum packed matmul: scales do not match the weights");
  if (scales.element_type() == ffi::DataType::U8) {
    if (scale_table.element_count() != 256)
      return ffi::Error::InvalidArgument("lpnum packed matmul: uint8 scales need a 256-entry table");
    p.scale_codes = static_cast<const uint8_t*>(scales.untyped_data()) + scale_at;
    p.scale_table = scale_table.typed_data();
    if (scale_pre.element_count() && scale_pre.element_count() != 256)
      return ffi::Error::InvalidArgument("lpnum packed matmul: the pre-factor table must have 256 entries");
    p.scale_pre = scale_pre.element_count() ? scale_pre.typed_data() : nullptr;
    if (field_lo <= field_hi) {  // the computed bits must be the table's (and pre must be 1) for every such code
      if (field_lo < 0 || field_hi > 255 || field_shift < 0 || field_shift > 23)
        return ffi::Error::InvalidArgument("lpnum packed matmul: bad scale code field range");
      for (int32_t c = field_lo; c <= field_hi; ++c) {
        const uint32_t bits = static_cast<uint32_t>(c + field_add) << field_shift;
        uint32_t want;
        std::memcpy(&want, p.scale_table + c, 4);
        if (bits != want || (p.scale_pre && p.scale_pre[c] != 1.0f))
          return ffi::Error::InvalidArgument("lpnum packed matmul: scale code fields disagree with the table");
      }
    }
    p.field_lo = field_lo;
    p.field_hi = field_hi;
    p.field_add = field_add;
    p.field_shift = field_shift;
  } else if (scales.element_type() == ffi::DataType::F32) {
    p.scale_values = static_cast<const float*>(scales.untyped_data()) + scale_at;
  } else {
    return ffi::Error::InvalidArgument("lpnum packed matmul: scales must be uint8 codes or float32 values");
  }
  if (zero.element_count()) {
    const int64_t at = offset(zero.element_count(), scale_rows * p.n_pad);
    if (at < 0) return ffi::Error::InvalidArgument("lpnum packed matmul: zero points do not match the scales");
    p.zero = zero.typed_data() + at;
  }
  if (tensor.element_count() && offset(tensor.element_count(), 1) < 0)
    return ffi::Error::InvalidArgument("lpnum packed matmul: one tensor scale per matrix");
  p.tensor = tensor.element_count() ? tensor.typed_data()[offset(tensor.element_count(), 1)] : 1.0f;
  p.post = post;
  if (mode < kPlain || mode > kFull) return ffi::Error::InvalidArgument("lpnum packed matmul: bad scaling mode");
  if (pow2 && (p.tensor != 1.0f || post != 1.0f))
    return ffi::Error::InvalidArgument("lpnum packed matmul: power-of-two scales take no tensor scale or post factor");
  if ((mode == kPlain || mode == kPre) && (p.tensor != 1.0f || post != 1.0f))
    return ffi::Error::InvalidArgument("lpnum packed matmul: the scaling mode drops a tensor scale or post factor");
  if (mode != kPre && mode != kFull && p.scale_pre)
    return ffi::Error::InvalidArgument("lpnum packed matmul: the scaling mode drops the pre factors");
  if (mode == kTensor && post != 1.0f)
    return ffi::Error::InvalidArgument("lpnum packed matmul: the scaling mode drops the post factor");
  p.mode = mode;
  if (!(vmax >= vmin && vmin > 0)) return ffi::Error::InvalidArgument("lpnum packed matmul: bad value range");
  // The largest and smallest nonzero finite |x|: with the elements' range they bound every product.
  float x_max = 0.0f, x_min = __builtin_inff();
  for (int64_t i = 0; i < p.m * p.k_pad; ++i) {
    const float a = __builtin_fabsf(p.x[i]);
    if (a <= 0x1.fffffep127f) {
      x_max = std::max(x_max, a);
      if (a > 0.0f) x_min = std::min(x_min, a);
    }
  }
  // Byte rows per pass, measured on 2-core AMD EPYC machines at K = N = 4096 and 8192: 32, but 8 for 8-bit integers
  // at one row of x with AVX-512 (3.2 against 3.9 ms at 8192^2; from 4 rows, and for FP8, 32 is 1.2-2x faster).
  const bool ints = decode_kind == kInt8 || decode_kind == kUint8;
  const int chunk = std::gcd(bits == 8 && ints && kLanes == 16 && p.m == 1 ? 8 : 32, group);
  // A partial sum adds `chunk` products x * v (one per byte row, or K row): each at most hi / chunk, so the sum and
  // its products with the scales (within [s_min, s_max]) stay finite. Scales applied after a pre factor or with a
  // post factor scale every weight (as do NaN and infinite tensor scales: S * T is never in range).
  const double lo = 0x1p-125, hi = 0x1p126 / chunk;
  const double big = double{vmax} * std::max(1.0, double{x_max}), small = double{vmin} * std::min(1.0, double{x_min});
  const bool summable = pow2 != 0 || mode == kPlain || mode == kTensor;
  p.factor = summable && double{x_max} * vmax <= hi && double{x_min} * vmin >= lo;
  p.s_max = static_cast<float>(hi / big);
  p.s_min = static_cast<float>(lo / small);
  const bool multi = bits != 4 && bits != 8;  // the generic path: several planes, or 2- and 1-bit ones
  const bool half = decode_kind == kHalf7 || decode_kind == kHalf8;
  if (table.element_count() != (size_t{1} << bits) || (decode_kind == kTable16 && (bits != 4 || multi)) ||
      ((decode_kind == kInt8 || decode_kind == kUint8 || half) && bits != 8))
    return ffi::Error::InvalidArgument("lpnum packed matmul: the value table does not fit the element bits");
  if (half) {  // every code's value must be the float16 conversion's (or NaN where the table says so)
    p.half_scale = half_scale;
    p.half_nan = half_nan;
    for (uint32_t c = 0; c < 256; ++c) {
      const float want = p.table[c], got = half_value(half_bits(c, decode_kind == kHalf7 ? 7 : 8)) * half_scale;
      const bool nan_code = half_nan >= 0 && static_cast<int32_t>(c & 0x7f) == half_nan;
      if (nan_code ? !std::isnan(want) : std::memcmp(&want, &got, 4) && !(std::isnan(want) && std::isnan(got)))
        return ffi::Error::InvalidArgument("lpnum packed matmul: the value table is not the float16 conversion");
    }
  }
  const bool has_zero = p.zero != nullptr;
  if (p.m == 0) return ffi::Error::Success();

  Plan plan;
  plan.chunk = chunk;
  if (bits == 8) {
    pick_all<8>(plan, decode_kind, has_zero, multi);
  } else {
    pick_all<4>(plan, decode_kind, has_zero, multi);
  }
#if defined(__AVX2__) && !defined(__AVX512F__)
  // One row of x at a time decodes every weight for one multiply-add: there a bfloat16 table is split (kSplit16).
  if (decode_kind == kTable16 && splittable(p.table)) plan.fns[3] = pick<1, vectors(1, 4)>(kSplit16, has_zero, multi);
#endif
  lpnum::for_slabs(pool, p.n_pad, kMinItem, kAlign,
                   [p, plan, multi](int64_t c0, int64_t cw) { run_item(p, plan, c0, cw, multi); });
  return ffi::Error::Success();
}

// ---- int8 x int8 -> int32 (W8A8) ------------------------------------------------------------------------------
// y (M, N_pad) int32 = x (M, K_pad) int8 @ W (K_pad, N_pad) int8, W row-major (the packed layout's int8 plane, or
// any int8 matrix). Integer sums are exact and wrap modulo 2^32 as XLA's int32 dot does, so any order gives XLA's
// result bit for bit. Pairs of K rows are interleaved and widened to int16, and vpmaddwd multiplies them with x's
// pair for those rows (x[k], x[k + 1]) and adds the two products into int32 lanes (at most 2 * 128^2: exact).

constexpr int kIntChunk = 64;  // K rows per pass over a slab (even), their byte rows' lines prefetched ahead

struct IntProblem {
  const int8_t* w;
  const int32_t* pairs;  // (M, K_pad / 2): x's int16 pairs (x[2i] in the low half, x[2i + 1] in the high half)
  int32_t* out;
  int64_t m, k_pad, n_pad;
};

// Rows [m0, m0 + MB) of x, columns [c0, c0 + cw), K rows [k0, k0 + kIntChunk): adds into out (16 columns at a time,
// their int32 sums in registers over the chunk).
template <int MB>
void int_pass(const IntProblem& p, int64_t m0, int64_t c0, int64_t cw, int64_t k0) {
  const int64_t half = p.k_pad / 2;
  for (int64_t col = c0; col < c0 + cw; col += 16) {
#if defined(__AVX2__)
    __m256i acc[MB][2];
    for (int mm = 0; mm < MB; ++mm)
      for (int h = 0; h < 2; ++h)
        acc[mm][h] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p.out + (m0 + mm) * p.n_pad + col + 8 * h));
    for (int64_t r = k0; r < k0 + kIntChunk; r += 2) {
      const int8_t* a = p.w + r * p.n_pad + col;
      if (((col - c0) & 63) == 0) {  // a new line of both rows: fetch the one kAhead bytes on
        __builtin_prefetch(a + kAhead);
        __builtin_prefetch(a + p.n_pad + kAhead);
      }
      const __m128i ra = _mm_loadu_si128(reinterpret_cast<const __m128i*>(a));
      const __m128i rb = _mm_loadu_si128(reinterpret_cast<const __m128i*>(a + p.n_pad));
      const __m256i w0 = _mm256_cvtepi8_epi16(_mm_unpacklo_epi8(ra, rb));  // columns col..col+7: (W[r], W[r + 1])
      const __m256i w1 = _mm256_cvtepi8_epi16(_mm_unpackhi_epi8(ra, rb));  // columns col+8..col+15
      for (int mm = 0; mm < MB; ++mm) {
        const __m256i xp = _mm256_set1_epi32(p.pairs[(m0 + mm) * half + r / 2]);
        acc[mm][0] = _mm256_add_epi32(acc[mm][0], _mm256_madd_epi16(w0, xp));
        acc[mm][1] = _mm256_add_epi32(acc[mm][1], _mm256_madd_epi16(w1, xp));
      }
    }
    for (int mm = 0; mm < MB; ++mm)
      for (int h = 0; h < 2; ++h)
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(p.out + (m0 + mm) * p.n_pad + col + 8 * h), acc[mm][h]);
#else
    for (int mm = 0; mm < MB; ++mm)
      for (int l = 0; l < 16; ++l) {
        uint32_t sum = static_cast<uint32_t>(p.out[(m0 + mm) * p.n_pad + col + l]);  // wraps as int32 sums do
        for (int64_t r = k0; r < k0 + kIntChunk; r += 2) {
          const int32_t pair = p.pairs[(m0 + mm) * half + r / 2];
          const int32_t x0 = static_cast<int16_t>(pair & 0xffff), x1 = pair >> 16;
          sum += static_cast<uint32_t>(x0 * p.w[r * p.n_pad + col + l] + x1 * p.w[(r + 1) * p.n_pad + col + l]);
        }
        p.out[(m0 + mm) * p.n_pad + col + l] = static_cast<int32_t>(sum);
      }
#endif
  }
}

ffi::Error Int8Matmul(ffi::ThreadPool pool, ffi::Buffer<ffi::S8> x, ffi::Buffer<ffi::S8> w,
                      ffi::ResultBuffer<ffi::S32> out) {
  auto xd = x.dimensions();
  auto wd = w.dimensions();
  auto od = out->dimensions();
  if (xd.size() != 2 || wd.size() != 2 || od.size() != 2 || xd[0] != od[0] || xd[1] != wd[0] || wd[1] != od[1] ||
      xd[1] % kIntChunk || od[1] % kAlign)
    return ffi::Error::InvalidArgument("lpnum int8 matmul: x must be (M, K_pad), w (K_pad, N_pad) and out "
                                       "(M, N_pad), with K_pad a multiple of 64 and N_pad of 128");
  IntProblem p{w.typed_data(), nullptr, out->typed_data(), xd[0], xd[1], od[1]};
  if (p.m == 0) return ffi::Error::Success();
  auto pairs = std::make_shared<std::vector<int32_t>>(p.m * p.k_pad / 2);
  const int8_t* xs = x.typed_data();
  for (int64_t i = 0; i < p.m * p.k_pad / 2; ++i)
    (*pairs)[i] = static_cast<int32_t>(static_cast<uint16_t>(static_cast<int16_t>(xs[2 * i])) |
                                       (static_cast<uint32_t>(static_cast<int16_t>(xs[2 * i + 1])) << 16));
  p.pairs = pairs->data();
  lpnum::for_slabs(pool, p.n_pad, kMinItem, kAlign, [p, pairs](int64_t c0, int64_t cw) {
    for (int64_t m = 0; m < p.m; ++m) std::memset(p.out + m * p.n_pad + c0, 0, cw * sizeof(int32_t));
    for (int64_t k0 = 0; k0 < p.k_pad; k0 += kIntChunk)
      for (int64_t m0 = 0; m0 < p.m;) {
        const int64_t left = p.m - m0;
        if (left >= 4) {
          int_pass<4>(p, m0, c0, cw, k0);
          m0 += 4;
        } else if (left >= 2) {
          int_pass<2>(p, m0, c0, cw, k0);
          m0 += 2;
        } else {
          int_pass<1>(p, m0, c0, cw, k0);
          m0 += 1;
        }
      }
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(LpnumPackedMatmul, PackedMatmul,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int32_t>("bits")
                                  .Attr<int32_t>("tile_k")
                                  .Attr<int32_t>("group")
                                  .Attr<int32_t>("decode")
                                  .Attr<int32_t>("mode")
                                  .Attr<int32_t>("pow2")
                                  .Attr<float>("post")
                                  .Attr<float>("vmax")
                                  .Attr<float>("vmin")
                                  .Attr<int32_t>("field_lo")
                                  .Attr<int32_t>("field_hi")
                                  .Attr<int32_t>("field_add")
                                  .Attr<int32_t>("field_shift")
                                  .Attr<float>("half_scale")
                                  .Attr<int32_t>("half_nan"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(LpnumInt8Matmul, Int8Matmul,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::S8>>()
                                  .Arg<ffi::Buffer<ffi::S8>>()
                                  .Ret<ffi::Buffer<ffi::S32>>());

// The instruction set the kernel was built for: 2 for AVX-512, 1 for AVX2, 0 for the portable fallback.
extern "C" int LpnumPackedMatmulIsa() { return kIsa; }
