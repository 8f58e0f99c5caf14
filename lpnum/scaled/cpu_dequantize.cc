// lpnum.dequantize's native CPU face: the float32 values of a QArray whose blocks tile its 2-D view (R, C), read
// from its packed codes in one pass.
//
// The codes (R, ceil(C * bits / 8)) hold 4- or 8-bit element codes along each row, two 4-bit codes per byte (the
// even column in the low nibble). Each (block_rows x block_cols) block has one entry of the scales (R / block_rows,
// C / block_cols). The values come from tables computed in Python by lpnum.scaled.cpu with the XLA face's own
// functions, so every value is the one the XLA face computes, bit for bit:
//   - uint8 scale codes: table (256, 2^bits) holds every (scale code, element code) pair's value, and the value of
//     code c in a block of scale code s is table[s][c] (MX; NVFP4 with its tensor scale folded into the table).
//     4-bit codes permute the block's table row in registers. 8-bit float codes (MXFP8) are decoded by arithmetic
//     on their fields and multiplied by the block's factor where that gives the table's bits for every regular
//     code (checked once per call against the table: see find_factors), else looked up;
//   - float32 scale values (integer elements): elements (2^bits) holds the element values v, and the value is
//     (v - zero) * scale in float32, the IEEE operations of the XLA face (zero: float32 zero points or none).
//
// Work: rows are cut into 16 slabs per thread of XLA's pool; 32-byte aligned rows are written with streaming
// stores. Outputs of 8 MiB and more are first marked for transparent huge pages (madvise): the output is a fresh
// allocation, and on Linux faulting it in 4 KiB pages costs more than writing it. Changes no value.
//
// Built and loaded by lpnum.native; called from lpnum.scaled.cpu.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#if defined(__AVX2__)
#include <immintrin.h>
#endif
#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "native_slabs.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

struct Problem {
  const uint8_t* codes;
  int64_t rows, cols, row_bytes;
  const uint8_t* scale_codes;  // uint8 scale codes, or null
  const float* scale_values;   // float32 scale values, or null
  const float* zero;           // float32 zero points (with scale_values), or null
  int64_t scale_cols;
  const float* table;
  const float* elements;  // the element codes' values (2^bits)
  int bits, block_rows, block_cols;
  // 8-bit float elements decoded by arithmetic (minifloat8_bits; set by find_factors): per scale code, the factor
  // whose product with every regular element value is its table row (0 where none is); codes of magnitude at least
  // irregular, and subnormal ones, take the table instead.
  int mantissa_bits, bias;
  int irregular;
  const float* factors;
  float* out;
  bool aligned;  // out and every row of it start at a multiple of 32 bytes
};

inline int code_at(const uint8_t* row, int bits, int64_t c) {
  return bits == 8 ? row[c] : (row[c >> 1] >> ((c & 1) * 4)) & 15;
}

// Columns [c0, c1) of row r, one value at a time (block by block).
void row_scalar(const Problem& p, int64_t r, int64_t c0, int64_t c1) {
  const uint8_t* row = p.codes + r * p.row_bytes;
  const int64_t srow = r / p.block_rows * p.scale_cols;
  float* out = p.out + r * p.cols;
  const int width = 1 << p.bits;
  for (int64_t c = c0; c < c1;) {
    const int64_t s = srow + c / p.block_cols;
    const int64_t end = std::min<int64_t>(c1, (c / p.block_cols + 1) * p.block_cols);
    if (p.scale_codes) {
      const float* t = p.table + p.scale_codes[s] * width;
      for (; c < end; ++c) out[c] = t[code_at(row, p.bits, c)];
    } else {
      const float scale = p.scale_values[s];
      const float zero = p.zero ? p.zero[s] : 0.0f;
      for (; c < end; ++c) {
        float v = p.elements[code_at(row, p.bits, c)];
        if (p.zero) v = v - zero;
        out[c] = v * scale;
      }
    }
  }
}

#if defined(__AVX2__)
// The values of 16 4-bit codes (8 bytes) under a 16-entry table held as two 8-lane halves: lo gets columns 0-7,
// hi columns 8-15.
inline void decode16(const uint8_t* bytes, __m256 t0, __m256 t1, __m256& lo, __m256& hi) {
  const __m256i w = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(bytes)));
  const __m256i even = _mm256_and_si256(w, _mm256_set1_epi32(15));
  const __m256i odd = _mm256_srli_epi32(w, 4);
  // Bit 3 of the code picks the half: shifted to the sign bit, it drives the blend.
  const __m256 ve = _mm256_blendv_ps(_mm256_permutevar8x32_ps(t0, even), _mm256_permutevar8x32_ps(t1, even),
                                     _mm256_castsi256_ps(_mm256_slli_epi32(even, 28)));
  const __m256 vo = _mm256_blendv_ps(_mm256_permutevar8x32_ps(t0, odd), _mm256_permutevar8x32_ps(t1, odd),
                                     _mm256_castsi256_ps(_mm256_slli_epi32(odd, 28)));
  const __m256 a = _mm256_unpacklo_ps(ve, vo);  // columns 0-3 | 8-11
  const __m256 b = _mm256_unpackhi_ps(ve, vo);  // columns 4-7 | 12-15
  lo = _mm256_permute2f128_ps(a, b, 0x20);
  hi = _mm256_permute2f128_ps(a, b, 0x31);
}

// Streaming stores where every row starts 32-byte aligned (the output is written once and not read back soon).
inline void store8(const Problem& p, float* dst, __m256 v) {
  if (p.aligned)
    _mm256_stream_ps(dst, v);
  else
    _mm256_storeu_ps(dst, v);
}

// Row r for 4-bit codes by scale code: block by block (block_cols is a multiple of 16), 16 columns at a time, the
// block's table row in two registers.
void row_4bit_by_code(const Problem& p, int64_t r) {
  const uint8_t* row = p.codes + r * p.row_bytes;
  const uint8_t* s = p.scale_codes + r / p.block_rows * p.scale_cols;
  float* out = p.out + r * p.cols;
  for (int64_t c = 0; c < p.cols; ++s) {
    const float* t = p.table + *s * 16;
    const __m256 t0 = _mm256_loadu_ps(t), t1 = _mm256_loadu_ps(t + 8);
    for (const int64_t end = c + p.block_cols; c < end; c += 16) {
      __m256 lo, hi;
      decode16(row + c / 2, t0, t1, lo, hi);
      store8(p, out + c, lo);
      store8(p, out + c + 8, hi);
    }
  }
}

// Row r for 4-bit integer codes by value, 16 columns at a time: (v - zero) * scale, one scale (and zero point) per
// column (block_cols 1) or per block (block_cols a multiple of 16). The tail of a row of cols % 16 goes to
// row_scalar.
void row_4bit_by_value(const Problem& p, int64_t r) {
  const uint8_t* row = p.codes + r * p.row_bytes;
  const int64_t srow = r / p.block_rows * p.scale_cols;
  const float* s = p.scale_values + srow;
  const float* z = p.zero ? p.zero + srow : nullptr;
  float* out = p.out + r * p.cols;
  const __m256 t0 = _mm256_loadu_ps(p.elements), t1 = _mm256_loadu_ps(p.elements + 8);
  const int64_t step = p.block_cols == 1 ? 16 : p.block_cols;
  const int64_t full = p.cols / 16 * 16;
  for (int64_t c = 0; c < full;) {
    __m256 s_b = _mm256_set1_ps(*s), z_b = _mm256_set1_ps(z ? *z : 0.0f);
    for (const int64_t end = std::min(c + step, full); c < end; c += 16) {
      __m256 lo, hi;
      decode16(row + c / 2, t0, t1, lo, hi);
      __m256 s_lo = s_b, s_hi = s_b, z_lo = z_b, z_hi = z_b;
      if (p.block_cols == 1) {
        s_lo = _mm256_loadu_ps(s + c);
        s_hi = _mm256_loadu_ps(s + c + 8);
        if (z) {
          z_lo = _mm256_loadu_ps(z + c);
          z_hi = _mm256_loadu_ps(z + c + 8);
        }
      }
      if (z) {
        lo = _mm256_sub_ps(lo, z_lo);
        hi = _mm256_sub_ps(hi, z_hi);
      }
      store8(p, out + c, _mm256_mul_ps(lo, s_lo));
      store8(p, out + c + 8, _mm256_mul_ps(hi, s_hi));
    }
    if (p.block_cols != 1) {
      ++s;
      if (z) ++z;
    }
  }
  row_scalar(p, r, full, p.cols);
}

// 8-bit sign-magnitude float codes (E4M3, E5M2) by arithmetic: their values are bfloat16 numbers, and a code of
// magnitude zero or at least 2^mantissa_bits (not subnormal) has the bfloat16 bits
//   sign << 15 | ((magnitude << (7 - mantissa_bits)) + ((127 - bias) << 7))   (0 for magnitude 0).
// Codes of other magnitudes (subnormal, and from `irregular` on: NaN, infinity) are irregular and looked up.
inline uint32_t minifloat8_bits(int code, int mantissa_bits, int bias) {
  const int magnitude = code & 0x7F;
  const int bf16 = (magnitude ? (magnitude << (7 - mantissa_bits)) + ((127 - bias) << 7) : 0) | (code & 0x80) << 8;
  return static_cast<uint32_t>(bf16) << 16;
}

// Row r for 8-bit codes by scale code: block by block (block_cols is a multiple of 32), 32 columns at a time.
// Where the block's scale code has a factor (see Problem) and none of the 32 codes is irregular, the codes are
// decoded by minifloat8_bits's arithmetic, 16 bfloat16 lanes at a time, and multiplied by the factor; else each is
// looked up in the block's table row.
void row_8bit_by_code(const Problem& p, int64_t r) {
  const uint8_t* row = p.codes + r * p.row_bytes;
  const uint8_t* s = p.scale_codes + r / p.block_rows * p.scale_cols;
  float* out = p.out + r * p.cols;
  const __m256i low7 = _mm256_set1_epi8(0x7F);
  const __m256i above = _mm256_set1_epi8(static_cast<char>(p.irregular - 1));
  const __m256i normal = _mm256_set1_epi8(static_cast<char>(1 << p.mantissa_bits));
  const __m256i zero = _mm256_setzero_si256();
  const __m128i shift = _mm_cvtsi32_si128(7 - p.mantissa_bits);
  const __m256i rebias = _mm256_set1_epi16(static_cast<int16_t>((127 - p.bias) << 7));
  for (int64_t c = 0; c < p.cols; ++s) {
    const float* t = p.table + *s * 256;
    const float factor = p.factors ? p.factors[*s] : 0.0f;
    const __m256 f = _mm256_set1_ps(factor);
    for (const int64_t end = c + p.block_cols; c < end; c += 32) {
      const __m256i codes = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + c));
      const __m256i magnitude = _mm256_and_si256(codes, low7);
      const __m256i subnormal =
          _mm256_and_si256(_mm256_cmpgt_epi8(magnitude, zero), _mm256_cmpgt_epi8(normal, magnitude));
      const __m256i irregular = _mm256_or_si256(subnormal, _mm256_cmpgt_epi8(magnitude, above));
      if (factor == 0.0f || _mm256_movemask_epi8(irregular)) {
        for (int64_t i = c; i < c + 32; ++i) out[i] = t[row[i]];
        continue;
      }
      for (int half = 0; half < 2; ++half) {
        const __m256i w = half ? _mm256_cvtepu8_epi16(_mm256_extracti128_si256(codes, 1))
                               : _mm256_cvtepu8_epi16(_mm256_castsi256_si128(codes));
        const __m256i m = _mm256_and_si256(w, _mm256_set1_epi16(0x7F));
        __m256i bf = _mm256_add_epi16(_mm256_sll_epi16(m, shift), rebias);
        bf = _mm256_andnot_si256(_mm256_cmpeq_epi16(m, zero), bf);
        bf = _mm256_or_si256(bf, _mm256_slli_epi16(_mm256_and_si256(w, _mm256_set1_epi16(0x80)), 8));
        const __m256i lo = _mm256_unpacklo_epi16(zero, bf);  // columns 0-3 | 8-11
        const __m256i hi = _mm256_unpackhi_epi16(zero, bf);  // columns 4-7 | 12-15
        float* o = out + c + 16 * half;
        store8(p, o, _mm256_mul_ps(_mm256_castsi256_ps(_mm256_permute2x128_si256(lo, hi, 0x20)), f));
        store8(p, o + 8, _mm256_mul_ps(_mm256_castsi256_ps(_mm256_permute2x128_si256(lo, hi, 0x31)), f));
      }
    }
  }
}

// The factors of Problem for 8-bit float elements: minifloat8_bits is checked against the element values
// (irregular: the least magnitude from which it differs on a code that is not subnormal), and scale code s gets
// the factor f (its table row's value at the element 1) where every regular code's value times f is, bit for bit,
// its table entry. So the vector path returns the table, whatever the thread's floating-point mode.
void find_factors(Problem& p, float* factors) {
  float decoded[256];
  p.irregular = 128;
  int one = -1;
  for (int c = 0; c < 256; ++c) {
    const uint32_t bits = minifloat8_bits(c, p.mantissa_bits, p.bias);
    std::memcpy(decoded + c, &bits, sizeof bits);
    const int magnitude = c & 0x7F;
    const bool subnormal = magnitude > 0 && magnitude < (1 << p.mantissa_bits);
    if (!subnormal && std::memcmp(decoded + c, p.elements + c, sizeof(float)))
      p.irregular = std::min(p.irregular, magnitude);
    if (p.elements[c] == 1.0f && one < 0) one = c;
  }
  if (one < 0 || (one & 0x7F) >= p.irregular || p.irregular <= (1 << p.mantissa_bits)) return;
  for (int s = 0; s < 256; ++s) {
    const float* t = p.table + s * 256;
    const float f = t[one];
    bool exact = f != 0.0f && f == f;
    for (int c = 0; exact && c < 256; ++c) {
      const int magnitude = c & 0x7F;
      if (magnitude >= p.irregular || (magnitude > 0 && magnitude < (1 << p.mantissa_bits))) continue;
      const float v = decoded[c] * f;
      exact = std::memcmp(&v, t + c, sizeof(float)) == 0;
    }
    factors[s] = exact ? f : 0.0f;
  }
  p.factors = factors;
}
#endif

void run_rows(const Problem& p, int64_t r0, int64_t n) {
  for (int64_t r = r0; r < r0 + n; ++r) {
#if defined(__AVX2__)
    if (p.bits == 4 && p.scale_codes && p.block_cols % 16 == 0) {
      row_4bit_by_code(p, r);
      continue;
    }
    if (p.bits == 4 && !p.scale_codes && (p.block_cols == 1 || p.block_cols % 16 == 0)) {
      row_4bit_by_value(p, r);
      continue;
    }
    if (p.bits == 8 && p.factors && p.block_cols % 32 == 0) {
      row_8bit_by_code(p, r);
      continue;
    }
#endif
    row_scalar(p, r, 0, p.cols);
  }
#if defined(__AVX2__)
  _mm_sfence();  // the streaming stores are visible before the slab counts as done
#endif
}

// Marks the whole 2 MiB pages of [data, data + bytes) for transparent huge pages, where the output is large.
void advise_huge_pages(void* data, int64_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t{2} << 20;
  if (bytes < int64_t{4} * static_cast<int64_t>(kHuge)) return;
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(data) + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(data) + bytes) & ~(kHuge - 1);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);  // advice: failure is fine
#else
  (void)data;
  (void)bytes;
#endif
}

ffi::Error Dequantize(ffi::ThreadPool pool, ffi::Buffer<ffi::U8> codes, ffi::AnyBuffer scales,
                      ffi::Buffer<ffi::F32> elements, ffi::Buffer<ffi::F32> table, ffi::Buffer<ffi::F32> zero,
                      ffi::ResultBuffer<ffi::F32> out, int32_t bits, int32_t block_rows, int32_t block_cols,
                      int32_t mantissa_bits, int32_t bias) {
  auto cd = codes.dimensions();
  auto sd = scales.dimensions();
  auto od = out->dimensions();
  if (cd.size() != 2 || sd.size() != 2 || od.size() != 2)
    return ffi::Error::InvalidArgument("lpnum dequantize: codes, scales and out must be 2-D");
  if (bits != 4 && bits != 8)
    return ffi::Error::InvalidArgument("lpnum dequantize: bits must be 4 or 8");
  Problem p{};
  p.rows = od[0];
  p.cols = od[1];
  p.row_bytes = cd[1];
  p.bits = bits;
  p.block_rows = block_rows;
  p.block_cols = block_cols;
  p.scale_cols = sd[1];
  if (cd[0] != p.rows || p.row_bytes != (p.cols * bits + 7) / 8 || block_rows <= 0 || block_cols <= 0 ||
      p.rows % block_rows || p.cols % block_cols || sd[0] != p.rows / block_rows || sd[1] != p.cols / block_cols)
    return ffi::Error::InvalidArgument("lpnum dequantize: the codes, scales and blocks do not tile the output");
  const bool by_code = scales.element_type() == ffi::DataType::U8;
  if (!by_code && scales.element_type() != ffi::DataType::F32)
    return ffi::Error::InvalidArgument("lpnum dequantize: scales must be uint8 codes or float32 values");
  if (elements.element_count() != (int64_t{1} << bits) || table.element_count() != (by_code ? 256 << bits : 0))
    return ffi::Error::InvalidArgument("lpnum dequantize: elements must hold 2^bits values, the table 256 rows "
                                       "of them with uint8 scale codes (else none)");
  if (zero.element_count() != 0 && (by_code || zero.element_count() != scales.element_count()))
    return ffi::Error::InvalidArgument("lpnum dequantize: zero points go with float32 scales, one per block");
  p.codes = codes.typed_data();
  p.scale_codes = by_code ? static_cast<const uint8_t*>(scales.untyped_data()) : nullptr;
  p.scale_values = by_code ? nullptr : static_cast<const float*>(scales.untyped_data());
  p.zero = zero.element_count() ? zero.typed_data() : nullptr;
  p.elements = elements.typed_data();
  p.table = table.typed_data();
  p.mantissa_bits = mantissa_bits;
  p.bias = bias;
  p.out = out->typed_data();
  p.aligned = reinterpret_cast<uintptr_t>(p.out) % 32 == 0 && p.cols % 8 == 0;
  if (p.rows * p.cols == 0) return ffi::Error::Success();
  auto factors = std::make_shared<std::vector<float>>(256);  // held by the slabs' tasks
#if defined(__AVX2__)
  if (by_code && bits == 8 && mantissa_bits > 0 && mantissa_bits < 7) find_factors(p, factors->data());
#endif
  advise_huge_pages(p.out, p.rows * p.cols * static_cast<int64_t>(sizeof(float)));
  const int64_t min_rows = std::max<int64_t>(1, (int64_t{1} << 14) / p.cols);  // at least 16K values per slab
  // 16 slabs per thread: a pool thread that wakes late still takes its share.
  lpnum::for_slabs(
      pool, p.rows, min_rows, 1, [p, factors](int64_t r0, int64_t n) { run_rows(p, r0, n); }, 16);
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(LpnumDequantize, Dequantize,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::U8>>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int32_t>("bits")
                                  .Attr<int32_t>("block_rows")
                                  .Attr<int32_t>("block_cols")
                                  .Attr<int32_t>("mantissa_bits")
                                  .Attr<int32_t>("bias"));
