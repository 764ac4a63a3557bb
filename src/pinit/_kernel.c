/* pinit._kernel: the statistics of float32, bfloat16 or float16 values in C, and the byte
 * comparison and difference statistics of ``diff``.
 *
 * An optional accelerator for pinit.stats and pinit.diff (which have numpy paths that give the same
 * results when this extension is not built).
 *
 * Statistics.  A buffer is reduced a block of 2,048 values at a time.  On x86-64 CPUs with AVX2 or
 * AVX-512 (chosen when the module loads) a block is read once: each vector of values is decoded in
 * registers (bfloat16: a shift; float16: vcvtph2ps) and feeds min, max, the smallest magnitude and
 * the float64 sums of d = x - K and d*d, K being the block's first value (the shifted-data
 * algorithm: K is one of the values, so n*(mean-K)^2 <= n*M2 and the subtraction
 * M2 = sum d^2 - (sum d)^2 / n loses at most log2(n) of float64's 53 bits; in practice none).
 * Elsewhere a portable loop does the same in two passes over a decoded copy of the block.  Zeros,
 * subnormals and huge values are counted in a further pass only when min, max or the smallest
 * magnitude show there may be some; a block whose sums are not finite holds NaN or infinity and is
 * reduced again by a plain loop over its finite values.  Blocks are merged with Chan et al.'s
 * formula.  ``file_stats`` reads a file region itself with pread, in pieces that stay in the
 * second-level cache, so that no Python code runs per chunk.  The GIL is released while bytes are
 * read and reduced, so pinit's worker threads run in parallel.
 *
 * diff.  ``bytes_equal`` and ``files_equal`` compare bytes (memcmp; the latter reads both file
 * regions with pread); ``diff_float`` computes the difference statistics of two chunks in one pass,
 * in float64, with numpy's semantics (np.isclose with equal_nan, |a - b| over positions finite on
 * both sides).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifdef __clang__
#pragma STDC FP_CONTRACT OFF /* a*b + c stays two roundings, as in numpy (GCC: -std=c99 does this) */
#endif

#if !defined(_WIN32)
#include <unistd.h>
#define PINIT_PREAD 1
#endif

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(_WIN32)
#define PINIT_X86 1
#include <immintrin.h>
#define TARGET512 __attribute__((target("avx512f,avx512dq,avx512bw,avx512vl,fma,f16c,popcnt")))
#define TARGET256 __attribute__((target("avx2,fma,f16c")))
#endif

#define BLOCK 2048              /* values per block: 8 KiB of float32, resident in L1 */
#define IO_CHUNK (256 * 1024)   /* bytes per pread: the buffer stays in L2 */
#define GIL_FREE_BYTES (1 << 16) /* buffers at least this large are reduced without the GIL */

enum { KIND_F32 = 0, KIND_BF16 = 1, KIND_F16 = 2, KIND_F64 = 3 };
enum { ISA_PORTABLE = 0, ISA_AVX2 = 1, ISA_AVX512 = 2 };
static const char *const isa_names[] = {"portable", "avx2", "avx512"};
static int best_isa = ISA_PORTABLE;

/* One build, three instruction sets (AVX-512, AVX2, baseline) for the portable loops, chosen when
   the module loads; GCC 11+ on glibc only (it needs ifunc), elsewhere the compiler's default. */
#if defined(__GNUC__) && __GNUC__ >= 11 && !defined(__clang__) && defined(__x86_64__) && defined(__GLIBC__)
#define PINIT_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define PINIT_CLONES
#endif

typedef struct {
    int64_t n; /* finite values */
    double mean, m2, total, min, max;
    int64_t zeros, nan, inf, subnormal, huge;
} Acc;

static inline float bits_to_float(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* IEEE half to single, exact for every input (zero, subnormal, normal, inf, NaN); branch-free so
   that the decode loop vectorizes. */
static inline float half_to_float(uint16_t h) {
    uint32_t em = (uint32_t)(h & 0x7fffu) << 13;
    uint32_t exp = em & (0x7c00u << 13);
    uint32_t u = em + ((127u - 15u) << 23);
    uint32_t inf_nan = u + ((128u - 16u) << 23);
    float sub = bits_to_float(u + (1u << 23)) - bits_to_float(113u << 23);
    uint32_t sub_bits;
    memcpy(&sub_bits, &sub, sizeof sub_bits);
    uint32_t is_special = 0u - (uint32_t)(exp == (0x7c00u << 13));
    uint32_t is_small = 0u - (uint32_t)(exp == 0);
    uint32_t r = (inf_nan & is_special) | (sub_bits & is_small) | (u & ~(is_special | is_small));
    return bits_to_float(r | ((uint32_t)(h & 0x8000u) << 16));
}

/* value i of a little-endian buffer of one of the 32-bit-or-narrower kinds, as float32 (exact) */
static inline float load_one(const unsigned char *p, int kind, Py_ssize_t i) {
    if (kind == KIND_F32) {
        float f;
        memcpy(&f, p + 4 * i, 4);
        return f;
    }
    uint16_t h;
    memcpy(&h, p + 2 * i, 2);
    return kind == KIND_BF16 ? bits_to_float((uint32_t)h << 16) : half_to_float(h);
}

static void merge(Acc *a, int64_t n, double mean, double m2, double total, double lo, double hi) {
    if (n == 0) return;
    int64_t t = a->n + n;
    double delta = mean - a->mean;
    a->mean += delta * (double)n / (double)t;
    a->m2 += m2 + delta * delta * (double)a->n * (double)n / (double)t;
    a->n = t;
    a->total += total;
    if (lo < a->min) a->min = lo;
    if (hi > a->max) a->max = hi;
}

/* Float64 sums of deviations from m over x[0..n), in two independent halves so that the
   additions of one do not wait for the other's; *d1 = sum of (x - m), *d2 = sum of (x - m)^2. */
static inline void deviations(const float *x, Py_ssize_t n, double m, double *d1, double *d2) {
    const Py_ssize_t h = n / 2;
    double a1 = 0.0, a2 = 0.0, b1 = 0.0, b2 = 0.0;
    Py_ssize_t i;
#pragma omp simd reduction(+ : a1, a2, b1, b2)
    for (i = 0; i < h; i++) {
        double d = (double)x[i] - m;
        double e = (double)x[i + h] - m;
        a1 += d;
        a2 += d * d;
        b1 += e;
        b2 += e * e;
    }
    for (i = 2 * h; i < n; i++) {
        double d = (double)x[i] - m;
        a1 += d;
        a2 += d * d;
    }
    *d1 = a1 + b1;
    *d2 = a2 + b2;
}

/* A block with NaN or infinity, or with values whose float32 sum overflows (uninitialized memory
   is like this throughout): NaN and infinities are counted and the finite values moved to the
   front of a buffer of their own (branch-free), which is then reduced like a clean block, except
   that the rough mean is the middle of the range (a float32 sum could overflow). */
PINIT_CLONES
static void block_slow(Acc *a, const float *x, Py_ssize_t n, float tiny, float max_abs) {
    float w[BLOCK];
    Py_ssize_t i, k = 0;
    for (i = 0; i < n; i++) {
        float v = x[i];
        w[k] = v;
        k += fabsf(v) <= 3.4028234663852886e38f; /* false for NaN and infinity */
    }
    int nan = 0;
#pragma omp simd reduction(+ : nan)
    for (i = 0; i < n; i++) nan += x[i] != x[i];
    a->nan += nan;
    a->inf += (int64_t)(n - k) - nan;
    if (k == 0) return;
    float lo = INFINITY, hi = -INFINITY;
    int zeros = 0, small = 0, huge = 0;
#pragma omp simd reduction(min : lo) reduction(max : hi) reduction(+ : zeros, small, huge)
    for (i = 0; i < k; i++) {
        float v = w[i];
        float av = fabsf(v);
        lo = v < lo ? v : lo;
        hi = v > hi ? v : hi;
        zeros += v == 0.0f;
        small += av < tiny;
        huge += av > max_abs;
    }
    a->zeros += zeros;
    a->subnormal += small - zeros;
    a->huge += huge;
    if (lo == hi) { /* one value throughout: exactly that mean, exactly no spread */
        merge(a, k, lo, 0.0, (double)lo * (double)k, lo, hi);
        return;
    }
    const double m = 0.5 * (double)lo + 0.5 * (double)hi;
    double d1, d2;
    deviations(w, k, m, &d1, &d2);
    const double mean = m + d1 / (double)k;
    merge(a, k, mean, d2 - d1 * d1 / (double)k, mean * (double)k, lo, hi);
}

/* The block's values as float32: the buffer itself (aligned float32) or a decoded copy in buf. */
PINIT_CLONES
static const float *as_float(const unsigned char *p, int kind, Py_ssize_t n, float *buf) {
    Py_ssize_t i;
    if (kind == KIND_F32) {
        if (((uintptr_t)p % sizeof(float)) == 0) return (const float *)p;
        memcpy(buf, p, (size_t)n * 4);
    } else if (kind == KIND_BF16) {
        for (i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, p + 2 * i, 2);
            buf[i] = bits_to_float((uint32_t)h << 16);
        }
    } else {
        for (i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, p + 2 * i, 2);
            buf[i] = half_to_float(h);
        }
    }
    return buf;
}

/* The end of a block read by a one-pass loop: lo, hi, the smallest magnitude amin and the float64
   sums s1, s2 of x - k and (x - k)^2. Counts that need another look at the values get it here. */
PINIT_CLONES
static void finish_block(Acc *a, const unsigned char *p, int kind, Py_ssize_t n, float lo, float hi, float amin,
                         double k, double s1, double s2, float tiny, float max_abs) {
    float buf[BLOCK];
    Py_ssize_t i;
    if (!(isfinite(s1) && isfinite(s2))) { /* NaN or infinity somewhere (float32 squares cannot overflow) */
        block_slow(a, as_float(p, kind, n, buf), n, tiny, max_abs);
        return;
    }
    const int small_ones = amin < tiny, huge_ones = -lo > max_abs || hi > max_abs;
    if (amin == -1.0f) { /* zeros and subnormals counted already (*zeros_small in a->zeros, a->subnormal) */
        if (huge_ones) {
            const float *x = as_float(p, kind, n, buf);
            int huge = 0;
#pragma omp simd reduction(+ : huge)
            for (i = 0; i < n; i++) huge += fabsf(x[i]) > max_abs;
            a->huge += huge;
        }
    } else if (small_ones || huge_ones) {
        const float *x = as_float(p, kind, n, buf);
        int zeros = 0, small = 0, huge = 0;
#pragma omp simd reduction(+ : zeros, small, huge)
        for (i = 0; i < n; i++) {
            float av = fabsf(x[i]);
            zeros += x[i] == 0.0f;
            small += av < tiny;
            huge += av > max_abs;
        }
        a->zeros += zeros;
        a->subnormal += small - zeros;
        a->huge += huge;
    }
    const double mean = k + s1 / (double)n;
    double m2 = s2 - s1 * (s1 / (double)n);
    if (m2 < 0.0) m2 = 0.0;
    merge(a, n, mean, m2, mean * (double)n, lo, hi);
}

/* The portable reduction: per block, pass 1 over the (decoded) values for min, max, the smallest
   magnitude and a float32 sum (not finite: NaN or infinity, or an overflow), pass 2 for the float64
   sums of deviations from the rough mean. */
PINIT_CLONES
static void reduce_portable(Acc *a, const unsigned char *src, int kind, Py_ssize_t count, float tiny,
                            float max_abs) {
    const Py_ssize_t item = kind == KIND_F32 ? 4 : 2;
    float buf[BLOCK];
    Py_ssize_t start;
    for (start = 0; start < count; start += BLOCK) {
        const Py_ssize_t n = count - start < BLOCK ? count - start : BLOCK;
        const unsigned char *p = src + start * item;
        const float *x = as_float(p, kind, n, buf);
        float lo = INFINITY, hi = -INFINITY, am = INFINITY, s = 0.0f;
        Py_ssize_t i;
#pragma omp simd reduction(min : lo, am) reduction(max : hi) reduction(+ : s)
        for (i = 0; i < n; i++) {
            float v = x[i];
            float av = fabsf(v);
            lo = v < lo ? v : lo;
            hi = v > hi ? v : hi;
            am = av < am ? av : am;
            s += v;
        }
        if (!isfinite(s)) {
            block_slow(a, x, n, tiny, max_abs);
            continue;
        }
        double d1 = 0.0, d2 = 0.0, m = (double)s / (double)n;
        if (lo == hi) {
            m = lo; /* one value throughout: exactly that mean, exactly no spread */
        } else {
            deviations(x, n, m, &d1, &d2);
        }
        finish_block(a, p, kind, n, lo, hi, am, m, d1, d2, tiny, max_abs);
    }
}

#ifdef PINIT_X86
/* ---- AVX-512: 32 values per step, decoded in registers, one read of each block ---------------- */
#define STEP512(V, LO, HI, S1A, S2A, S1B, S2B)                                                    \
    do {                                                                                          \
        LO = _mm512_min_ps(V, LO); /* NaN in V: LO kept (the sums catch NaN) */                   \
        HI = _mm512_max_ps(V, HI);                                                                \
        __m512d d0 = _mm512_sub_pd(_mm512_cvtps_pd(_mm512_castps512_ps256(V)), kd);               \
        __m512d d1 =                                                                              \
            _mm512_sub_pd(_mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(V), 1))), kd); \
        S1A = _mm512_add_pd(S1A, d0);                                                             \
        S2A = _mm512_fmadd_pd(d0, d0, S2A);                                                       \
        S1B = _mm512_add_pd(S1B, d1);                                                             \
        S2B = _mm512_fmadd_pd(d1, d1, S2B);                                                       \
    } while (0)

TARGET512 static inline __m512 widen16(__m256i h, int kind) {
    if (kind == KIND_BF16) return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    return _mm512_cvtph_ps(h);
}

/* exptest: tiny is the kind's smallest normal number, so "below tiny" (zero or subnormal) is "exponent
   field zero", tested on the raw bits (one mask test per 32 16-bit values); otherwise the smallest
   magnitude is tracked. */
TARGET512 static inline void reduce512_body(Acc *a, const unsigned char *src, const int kind, const int exptest,
                                            Py_ssize_t count, float tiny, float max_abs) {
    const Py_ssize_t item = kind == KIND_F32 ? 4 : 2;
    const __m512i expmask = kind == KIND_F32    ? _mm512_set1_epi32(0x7f800000)
                            : kind == KIND_BF16 ? _mm512_set1_epi16(0x7f80)
                                                : _mm512_set1_epi16(0x7c00);
    Py_ssize_t start;
    for (start = 0; start < count; start += BLOCK) {
        const Py_ssize_t n = count - start < BLOCK ? count - start : BLOCK;
        const unsigned char *p = src + start * item;
        const float k = load_one(p, kind, 0);
        const __m512d kd = _mm512_set1_pd((double)k);
        __m512 lo0 = _mm512_set1_ps(k), hi0 = lo0, lo1 = lo0, hi1 = lo0;
        __m512 am0 = _mm512_set1_ps(fabsf(k)), am1 = am0;
        __m512d s1a = _mm512_setzero_pd(), s1b = s1a, s1c = s1a, s1d = s1a;
        __m512d s2a = s1a, s2b = s1a, s2c = s1a, s2d = s1a;
        __mmask32 small = 0;
        int64_t nsmall = 0, nzero = 0; /* float16 (counted): below tiny, and zero */
        const int counted = exptest && kind == KIND_F16;
        const __m512i absmask = _mm512_set1_epi16(0x7fff);
        Py_ssize_t i = 0;
        for (; i + 32 <= n; i += 32) {
            __m512 v0, v1;
            if (kind == KIND_F32) {
                v0 = _mm512_loadu_ps((const float *)(p + i * 4));
                v1 = _mm512_loadu_ps((const float *)(p + i * 4 + 64));
                if (exptest)
                    small |= (__mmask32)_mm512_testn_epi32_mask(_mm512_castps_si512(v0), expmask) |
                             (__mmask32)_mm512_testn_epi32_mask(_mm512_castps_si512(v1), expmask);
            } else {
                __m512i r = _mm512_loadu_si512((const void *)(p + i * 2));
                if (counted) { /* float16 weights hold subnormals in every block: counted on the way */
                    nsmall += _mm_popcnt_u32(_mm512_testn_epi16_mask(r, expmask));
                    nzero += _mm_popcnt_u32(_mm512_testn_epi16_mask(r, absmask));
                } else if (exptest) {
                    small |= _mm512_testn_epi16_mask(r, expmask);
                }
                v0 = widen16(_mm512_castsi512_si256(r), kind);
                v1 = widen16(_mm512_extracti64x4_epi64(r, 1), kind);
            }
            if (!exptest) {
                am0 = _mm512_min_ps(_mm512_abs_ps(v0), am0);
                am1 = _mm512_min_ps(_mm512_abs_ps(v1), am1);
            }
            STEP512(v0, lo0, hi0, s1a, s2a, s1b, s2b);
            STEP512(v1, lo1, hi1, s1c, s2c, s1d, s2d);
        }
        float lo = _mm512_reduce_min_ps(_mm512_min_ps(lo0, lo1));
        float hi = _mm512_reduce_max_ps(_mm512_max_ps(hi0, hi1));
        float am = exptest ? (small ? 0.0f : INFINITY) : _mm512_reduce_min_ps(_mm512_min_ps(am0, am1));
        double s1 = _mm512_reduce_add_pd(_mm512_add_pd(_mm512_add_pd(s1a, s1b), _mm512_add_pd(s1c, s1d)));
        double s2 = _mm512_reduce_add_pd(_mm512_add_pd(_mm512_add_pd(s2a, s2b), _mm512_add_pd(s2c, s2d)));
        for (; i < n; i++) {
            float v = load_one(p, kind, i);
            double d = (double)v - (double)k;
            lo = v < lo ? v : lo;
            hi = v > hi ? v : hi;
            am = fabsf(v) < am ? fabsf(v) : am;
            nsmall += fabsf(v) < tiny;
            nzero += v == 0.0f;
            s1 += d;
            s2 += d * d;
        }
        if (exptest && fabsf(k) < tiny) am = 0.0f; /* k itself (in no lane when n < 32) */
        if (counted && isfinite(s1) && isfinite(s2)) { /* (a block with NaN or inf is counted again) */
            a->zeros += nzero;
            a->subnormal += nsmall - nzero;
            am = -1.0f;
        }
        finish_block(a, p, kind, n, lo, hi, am, (double)k, s1, s2, tiny, max_abs);
    }
}

#define REDUCE512(NAME, KIND, EXPTEST)                                                  \
    TARGET512 static void NAME(Acc *a, const unsigned char *s, Py_ssize_t c, float t, float m) { \
        reduce512_body(a, s, KIND, EXPTEST, c, t, m);                                     \
    }
REDUCE512(reduce512_f32, KIND_F32, 0)
REDUCE512(reduce512_bf16, KIND_BF16, 0)
REDUCE512(reduce512_f16, KIND_F16, 0)
REDUCE512(reduce512_f32_exp, KIND_F32, 1)
REDUCE512(reduce512_bf16_exp, KIND_BF16, 1)
REDUCE512(reduce512_f16_exp, KIND_F16, 1)

/* ---- AVX2: 16 values per step, the same algorithm ----------------------------------------------- */
TARGET256 static inline __m256 ld256(const unsigned char *p, int kind) {
    if (kind == KIND_F32) return _mm256_loadu_ps((const float *)p);
    __m128i h = _mm_loadu_si128((const __m128i *)p);
    if (kind == KIND_BF16) return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    return _mm256_cvtph_ps(h);
}

#define STEP256(V, LO, HI, AM, S1A, S2A, S1B, S2B)                                  \
    do {                                                                           \
        LO = _mm256_min_ps(V, LO);                                                 \
        HI = _mm256_max_ps(V, HI);                                                 \
        AM = _mm256_min_ps(_mm256_and_ps(V, absmask), AM);                         \
        __m256d d0 = _mm256_sub_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(V)), kd); \
        __m256d d1 = _mm256_sub_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(V, 1)), kd); \
        S1A = _mm256_add_pd(S1A, d0);                                              \
        S2A = _mm256_fmadd_pd(d0, d0, S2A);                                        \
        S1B = _mm256_add_pd(S1B, d1);                                              \
        S2B = _mm256_fmadd_pd(d1, d1, S2B);                                        \
    } while (0)

TARGET256 static inline float hmin256(__m256 v) {
    __m128 m = _mm_min_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_min_ps(m, _mm_movehl_ps(m, m));
    m = _mm_min_ss(m, _mm_shuffle_ps(m, m, 1));
    return _mm_cvtss_f32(m);
}
TARGET256 static inline float hmax256(__m256 v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 1));
    return _mm_cvtss_f32(m);
}
TARGET256 static inline double hsum256d(__m256d v) {
    __m128d s = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
    return _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)));
}

TARGET256 static inline void reduce256_body(Acc *a, const unsigned char *src, const int kind, Py_ssize_t count,
                                            float tiny, float max_abs) {
    const Py_ssize_t item = kind == KIND_F32 ? 4 : 2;
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    Py_ssize_t start;
    for (start = 0; start < count; start += BLOCK) {
        const Py_ssize_t n = count - start < BLOCK ? count - start : BLOCK;
        const unsigned char *p = src + start * item;
        const float k = load_one(p, kind, 0);
        const __m256d kd = _mm256_set1_pd((double)k);
        __m256 lo0 = _mm256_set1_ps(k), hi0 = lo0, lo1 = lo0, hi1 = lo0;
        __m256 am0 = _mm256_set1_ps(fabsf(k)), am1 = am0;
        __m256d s1a = _mm256_setzero_pd(), s1b = s1a, s1c = s1a, s1d = s1a;
        __m256d s2a = s1a, s2b = s1a, s2c = s1a, s2d = s1a;
        Py_ssize_t i = 0;
        for (; i + 16 <= n; i += 16) {
            __m256 v0 = ld256(p + i * item, kind);
            __m256 v1 = ld256(p + (i + 8) * item, kind);
            STEP256(v0, lo0, hi0, am0, s1a, s2a, s1b, s2b);
            STEP256(v1, lo1, hi1, am1, s1c, s2c, s1d, s2d);
        }
        float lo = hmin256(_mm256_min_ps(lo0, lo1));
        float hi = hmax256(_mm256_max_ps(hi0, hi1));
        float am = hmin256(_mm256_min_ps(am0, am1));
        double s1 = hsum256d(_mm256_add_pd(_mm256_add_pd(s1a, s1b), _mm256_add_pd(s1c, s1d)));
        double s2 = hsum256d(_mm256_add_pd(_mm256_add_pd(s2a, s2b), _mm256_add_pd(s2c, s2d)));
        for (; i < n; i++) {
            float v = load_one(p, kind, i);
            double d = (double)v - (double)k;
            lo = v < lo ? v : lo;
            hi = v > hi ? v : hi;
            am = fabsf(v) < am ? fabsf(v) : am;
            s1 += d;
            s2 += d * d;
        }
        finish_block(a, p, kind, n, lo, hi, am, (double)k, s1, s2, tiny, max_abs);
    }
}

TARGET256 static void reduce256_f32(Acc *a, const unsigned char *s, Py_ssize_t c, float t, float m) {
    reduce256_body(a, s, KIND_F32, c, t, m);
}
TARGET256 static void reduce256_bf16(Acc *a, const unsigned char *s, Py_ssize_t c, float t, float m) {
    reduce256_body(a, s, KIND_BF16, c, t, m);
}
TARGET256 static void reduce256_f16(Acc *a, const unsigned char *s, Py_ssize_t c, float t, float m) {
    reduce256_body(a, s, KIND_F16, c, t, m);
}
#endif /* PINIT_X86 */

static void reduce(Acc *a, const unsigned char *src, int kind, Py_ssize_t count, float tiny, float max_abs, int isa) {
#ifdef PINIT_X86
    if (isa == ISA_AVX512) {
        /* "below tiny" is "exponent field zero" when tiny is the kind's smallest normal number */
        const int exptest = tiny == (kind == KIND_F16 ? 0x1p-14f : 0x1p-126f);
        if (kind == KIND_F32) (exptest ? reduce512_f32_exp : reduce512_f32)(a, src, count, tiny, max_abs);
        else if (kind == KIND_BF16) (exptest ? reduce512_bf16_exp : reduce512_bf16)(a, src, count, tiny, max_abs);
        else (exptest ? reduce512_f16_exp : reduce512_f16)(a, src, count, tiny, max_abs);
        return;
    }
    if (isa == ISA_AVX2) {
        if (kind == KIND_F32) reduce256_f32(a, src, count, tiny, max_abs);
        else if (kind == KIND_BF16) reduce256_bf16(a, src, count, tiny, max_abs);
        else reduce256_f16(a, src, count, tiny, max_abs);
        return;
    }
#else
    (void)isa;
#endif
    reduce_portable(a, src, kind, count, tiny, max_abs);
}

static PyObject *acc_tuple(const Acc *a) {
    return Py_BuildValue("(LdddddLLLLL)", (long long)a->n, a->mean, a->m2, a->total, a->min, a->max,
                         (long long)a->zeros, (long long)a->nan, (long long)a->inf, (long long)a->subnormal,
                         (long long)a->huge);
}

/* the instruction set to use: -1 for the best this CPU has, or one that it has (tests force each) */
static int pick_isa(int isa) {
    if (isa < 0 || isa > best_isa) return isa < 0 ? best_isa : -1;
    return isa;
}

static int check_kind(int kind, Py_ssize_t len) {
    Py_ssize_t item = kind == KIND_F32 ? 4 : 2;
    if (kind < KIND_F32 || kind > KIND_F16 || len % item) {
        PyErr_SetString(PyExc_ValueError, "float_stats: unknown kind, or a length that is not a whole number of values");
        return -1;
    }
    return 0;
}

/* Merge the totals of one chunk into the running ones exactly as pinit.stats merges a chunk's
   tuple (_FloatAccumulator.add_reduced: the same operations in the same order), so that a tensor
   reduced here in chunks of `chunk` bytes gets the very numbers the chunk-by-chunk path gets. */
static void merge_chunk(Acc *t, const Acc *c) {
    t->zeros += c->zeros;
    t->nan += c->nan;
    t->inf += c->inf;
    t->subnormal += c->subnormal;
    t->huge += c->huge;
    merge(t, c->n, c->mean, c->m2 > 0.0 ? c->m2 : 0.0, c->total, c->min, c->max);
}

static const Acc ACC0 = {0, 0.0, 0.0, 0.0, INFINITY, -INFINITY, 0, 0, 0, 0, 0};

/* the float32 bound for huge values: max_abs beyond float32's range compares as infinity */
static float f32_bound(double max_abs) { return max_abs > 3.4028234663852886e38 ? INFINITY : (float)max_abs; }

static PyObject *float_stats(PyObject *self, PyObject *args) {
    Py_buffer view;
    int kind, isa = -1;
    long long chunk = 0;
    double tiny, max_abs;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*idd|iL:float_stats", &view, &kind, &tiny, &max_abs, &isa, &chunk)) return NULL;
    if (check_kind(kind, view.len) < 0) {
        PyBuffer_Release(&view);
        return NULL;
    }
    const Py_ssize_t item = kind == KIND_F32 ? 4 : 2;
    int use = pick_isa(isa);
    if (use < 0 || chunk < 0 || chunk % item) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError,
                        use < 0 ? "float_stats: this CPU lacks that instruction set"
                                : "float_stats: chunk must be a whole number of values");
        return NULL;
    }
    Acc a = ACC0;
    const float fmax_abs = f32_bound(max_abs), ftiny = (float)tiny;
    const unsigned char *src = (const unsigned char *)view.buf;
    const Py_ssize_t len = view.len, step = chunk ? (Py_ssize_t)chunk : (len ? len : 1);
    PyThreadState *ts = len >= GIL_FREE_BYTES ? PyEval_SaveThread() : NULL;
    if (!chunk) {
        reduce(&a, src, kind, len / item, ftiny, fmax_abs, use);
    } else {
        Py_ssize_t at;
        for (at = 0; at < len; at += step) {
            Acc c = ACC0;
            reduce(&c, src + at, kind, (len - at < step ? len - at : step) / item, ftiny, fmax_abs, use);
            merge_chunk(&a, &c);
        }
    }
    if (ts != NULL) PyEval_RestoreThread(ts);
    PyBuffer_Release(&view);
    return acc_tuple(&a);
}

#ifdef PINIT_PREAD
/* Fill buf with n bytes at offset off of fd: 0, or errno (EIO-like -1 for an early end of file). */
static int pread_full(int fd, unsigned char *buf, size_t n, long long off) {
    size_t done = 0;
    while (done < n) {
        ssize_t got = pread(fd, buf + done, n - done, (off_t)(off + (long long)done));
        if (got < 0) {
            if (errno == EINTR) continue;
            return errno ? errno : EIO;
        }
        if (got == 0) return -1;
        done += (size_t)got;
    }
    return 0;
}

static PyObject *io_error(int err) {
    if (err == -1) {
        PyErr_SetString(PyExc_EOFError, "file ended inside tensor data");
    } else {
        errno = err;
        PyErr_SetFromErrno(PyExc_OSError);
    }
    return NULL;
}

static PyObject *file_stats(PyObject *self, PyObject *args) {
    int fd, kind;
    long long offset, nbytes, chunk = 1 << 20, io = IO_CHUNK;
    double tiny, max_abs;
    (void)self;
    if (!PyArg_ParseTuple(args, "iLLidd|LL:file_stats", &fd, &offset, &nbytes, &kind, &tiny, &max_abs, &chunk, &io))
        return NULL;
    if (check_kind(kind, (Py_ssize_t)(nbytes % 4)) < 0) return NULL;
    const int item = kind == KIND_F32 ? 4 : 2, isa = best_isa;
    if (offset < 0 || nbytes < 0 || chunk < item || chunk % item || io < item || io % item) {
        PyErr_SetString(PyExc_ValueError,
                        "file_stats: negative offset or size, or a chunk or io size that is not whole values");
        return NULL;
    }
    Acc a = ACC0;
    const float fmax_abs = f32_bound(max_abs), ftiny = (float)tiny;
    const size_t size = (size_t)(nbytes < io ? nbytes : io);
    unsigned char *buf = (unsigned char *)malloc(size ? size : 1);
    if (buf == NULL) return PyErr_NoMemory();
    int err = 0;
    Py_BEGIN_ALLOW_THREADS
    long long done = 0;
    while (done < nbytes && !err) { /* one chunk (merged as pinit.stats merges chunks), read in pieces */
        const long long end = nbytes - done < chunk ? nbytes : done + chunk;
        Acc c = ACC0;
        while (done < end) {
            size_t n = (size_t)(end - done < (long long)size ? end - done : (long long)size);
            err = pread_full(fd, buf, n, offset + done);
            if (err) break;
            reduce(&c, buf, kind, (Py_ssize_t)(n / item), ftiny, fmax_abs, isa);
            done += (long long)n;
        }
        merge_chunk(&a, &c);
    }
    Py_END_ALLOW_THREADS
    free(buf);
    if (err) return io_error(err);
    return acc_tuple(&a);
}

/* -1 when the nbytes at off_a of fd_a equal those at off_b of fd_b, else the offset (from the
   regions' starts) of the first chunk that differs */
static PyObject *files_equal(PyObject *self, PyObject *args) {
    int fa, fb;
    long long oa, ob, nbytes, chunk = IO_CHUNK;
    (void)self;
    if (!PyArg_ParseTuple(args, "iLiLL|L:files_equal", &fa, &oa, &fb, &ob, &nbytes, &chunk)) return NULL;
    if (oa < 0 || ob < 0 || nbytes < 0 || chunk < 1) {
        PyErr_SetString(PyExc_ValueError, "files_equal: negative offset, size or chunk");
        return NULL;
    }
    const size_t size = (size_t)(nbytes < chunk ? nbytes : chunk);
    unsigned char *buf = (unsigned char *)malloc(2 * (size ? size : 1));
    if (buf == NULL) return PyErr_NoMemory();
    long long first = -1, done = 0;
    int err = 0;
    Py_BEGIN_ALLOW_THREADS
    while (done < nbytes) {
        size_t n = (size_t)(nbytes - done < (long long)size ? nbytes - done : (long long)size);
        err = pread_full(fa, buf, n, oa + done);
        if (!err) err = pread_full(fb, buf + size, n, ob + done);
        if (err) break;
        if (memcmp(buf, buf + size, n) != 0) {
            first = done;
            break;
        }
        done += (long long)n;
    }
    Py_END_ALLOW_THREADS
    free(buf);
    if (err) return io_error(err);
    return PyLong_FromLongLong(first);
}
#endif /* PINIT_PREAD */

static PyObject *bytes_equal(PyObject *self, PyObject *args) {
    Py_buffer va, vb;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*y*:bytes_equal", &va, &vb)) return NULL;
    int same = va.len == vb.len;
    if (same && va.len >= GIL_FREE_BYTES) {
        Py_BEGIN_ALLOW_THREADS
        same = memcmp(va.buf, vb.buf, (size_t)va.len) == 0;
        Py_END_ALLOW_THREADS
    } else if (same) {
        same = memcmp(va.buf, vb.buf, (size_t)va.len) == 0;
    }
    PyBuffer_Release(&va);
    PyBuffer_Release(&vb);
    return PyBool_FromLong(same);
}

typedef struct {
    int64_t differ, mismatched, nan_a, nan_b, inf;
    double max_abs, sq_diff, sq_a;
} DiffAcc;

static inline double load_wide(const unsigned char *p, int kind, Py_ssize_t i) {
    if (kind == KIND_F64) {
        double d;
        memcpy(&d, p + 8 * i, 8);
        return d;
    }
    return (double)load_one(p, kind, i);
}

static inline uint64_t bits_at(const unsigned char *p, Py_ssize_t item, Py_ssize_t i) {
    if (item == 8) {
        uint64_t v;
        memcpy(&v, p + 8 * i, 8);
        return v;
    }
    if (item == 4) {
        uint32_t v;
        memcpy(&v, p + 4 * i, 4);
        return v;
    }
    uint16_t v;
    memcpy(&v, p + 2 * i, 2);
    return v;
}

static inline int same_bits(const unsigned char *a, const unsigned char *b, Py_ssize_t item, Py_ssize_t i) {
    return bits_at(a, item, i) == bits_at(b, item, i);
}

/* One pass over two chunks of one dtype, in float64, with numpy's semantics: values close when
   |a - b| <= atol + rtol * |b| for finite ones, equal for the others, NaN close to NaN. */
PINIT_CLONES
static void diff_pass(DiffAcc *d, const unsigned char *pa, const unsigned char *pb, int kind, Py_ssize_t count,
                      double atol, double rtol) {
    const Py_ssize_t item = kind == KIND_F64 ? 8 : kind == KIND_F32 ? 4 : 2;
    Py_ssize_t i;
    for (i = 0; i < count; i++) {
        if (same_bits(pa, pb, item, i)) { /* the common case: only ||a|| grows */
            double x = load_wide(pa, kind, i);
            if (isfinite(x)) d->sq_a += x * x;
            continue;
        }
        d->differ++;
        double x = load_wide(pa, kind, i), y = load_wide(pb, kind, i);
        int fx = isfinite(x), fy = isfinite(y), na = isnan(x), nb = isnan(y), close;
        if (fx && fy) {
            double e = fabs(x - y);
            if (e > d->max_abs) d->max_abs = e;
            d->sq_diff += e * e;
            d->sq_a += x * x;
            double tol = rtol * fabs(y);
            tol = atol + tol;
            close = e <= tol;
        } else {
            close = x == y || (na && nb);
        }
        d->mismatched += !close;
        d->nan_a += na && !nb;
        d->nan_b += nb && !na;
        d->inf += !(na || nb) && (isinf(x) || isinf(y)) && x != y;
    }
}

static PyObject *diff_float(PyObject *self, PyObject *args) {
    Py_buffer va, vb;
    int kind;
    double atol, rtol;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*y*idd:diff_float", &va, &vb, &kind, &atol, &rtol)) return NULL;
    Py_ssize_t item = kind == KIND_F64 ? 8 : kind == KIND_F32 ? 4 : 2;
    if (kind < KIND_F32 || kind > KIND_F64 || va.len != vb.len || va.len % item) {
        PyBuffer_Release(&va);
        PyBuffer_Release(&vb);
        PyErr_SetString(PyExc_ValueError, "diff_float: unknown kind, buffers of different sizes, or partial values");
        return NULL;
    }
    DiffAcc d = {0, 0, 0, 0, 0, 0.0, 0.0, 0.0};
    Py_BEGIN_ALLOW_THREADS
    diff_pass(&d, (const unsigned char *)va.buf, (const unsigned char *)vb.buf, kind, va.len / item, atol, rtol);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&va);
    PyBuffer_Release(&vb);
    return Py_BuildValue("(LdddLLLL)", (long long)d.differ, d.max_abs, d.sq_diff, d.sq_a, (long long)d.mismatched,
                         (long long)d.nan_a, (long long)d.nan_b, (long long)d.inf);
}

static PyObject *isa(PyObject *self, PyObject *noargs) {
    (void)self;
    (void)noargs;
    return Py_BuildValue("(si)", isa_names[best_isa], best_isa);
}

static PyMethodDef methods[] = {
    {"float_stats", float_stats, METH_VARARGS,
     "float_stats(buffer, kind, tiny, max_abs, isa=-1, chunk=0) -> (n_finite, mean, m2, total, min, max, zeros, nan, "
     "inf, subnormal, huge)\n\nkind: 0 float32, 1 bfloat16, 2 float16 (little-endian). mean, m2 (sum of squared "
     "deviations), total, min and max cover the finite values. isa: -1 the best this CPU has, 0 portable, 1 AVX2, "
     "2 AVX-512. chunk: if not 0, the buffer is reduced in chunks of that many bytes whose totals are merged as "
     "pinit.stats merges the tuples of successive calls (the same numbers as one call per chunk)."},
#ifdef PINIT_PREAD
    {"file_stats", file_stats, METH_VARARGS,
     "file_stats(fd, offset, nbytes, kind, tiny, max_abs, chunk=1048576, io=262144) -> as float_stats(..., chunk), "
     "for the nbytes at offset of the file fd, read with pread in pieces of io bytes (OSError; EOFError for an "
     "early end of file)."},
    {"files_equal", files_equal, METH_VARARGS,
     "files_equal(fd_a, offset_a, fd_b, offset_b, nbytes, chunk=262144) -> -1 if the two regions hold the same "
     "bytes, else the offset of the first chunk that differs."},
#endif
    {"bytes_equal", bytes_equal, METH_VARARGS, "bytes_equal(a, b) -> whether two buffers hold the same bytes."},
    {"diff_float", diff_float, METH_VARARGS,
     "diff_float(a, b, kind, atol, rtol) -> (differ, max_abs, sq_diff, sq_a, mismatched, nan_a, nan_b, inf)\n\n"
     "kind: 0 float32, 1 bfloat16, 2 float16, 3 float64. differ: values whose bits differ; max_abs, sq_diff: of "
     "|a - b| where both are finite; sq_a: sum of a^2 there; mismatched: values not close (numpy.isclose, NaN "
     "equal to NaN); nan_a / nan_b: NaN on that side only; inf: infinity against another value, no NaN."},
    {"isa", isa, METH_NOARGS, "isa() -> (name, level) of the instruction set float_stats uses by default."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "pinit._kernel", NULL, -1, methods};

PyMODINIT_FUNC PyInit__kernel(void) {
#ifdef PINIT_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
        __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("popcnt"))
        best_isa = ISA_AVX512;
    else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) /* every such CPU has F16C */
        best_isa = ISA_AVX2;
#endif
    PyObject *m = PyModule_Create(&module);
#ifdef Py_GIL_DISABLED
    if (m != NULL) PyUnstable_Module_SetGIL(m, Py_MOD_GIL_NOT_USED); /* no state shared between calls */
#endif
    return m;
}
