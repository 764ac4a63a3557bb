/* pinit._kernel: the statistics of float32, bfloat16 or float16 values in C, and the byte
 * comparison and difference statistics of ``diff``.
 *
 * An optional accelerator for pinit.stats and pinit.diff (which have numpy paths that give the same
 * results when this extension is not built).
 *
 * Statistics.  A buffer is reduced a block of 2,048 values at a time.  On x86-64 CPUs with AVX-512
 * or AVX2 (chosen when the module loads) a block is read once: each vector of values is decoded in
 * registers (bfloat16: a shift or a mask; float16: vcvtph2ps) and feeds min, max, a test for zeros
 * and subnormals (the exponent field, or the smallest magnitude) and the float64 sums of d = x - k
 * and d*d.  k is 0 for a block whose values straddle zero and the block's first value otherwise;
 * either way n*(mean-k)^2 <= 2n*M2, so M2 = sum d^2 - (sum d)^2 / n loses at most log2(2n) of
 * float64's 53 bits (see reduce512_body).  Elsewhere a portable loop does the same in two passes
 * over a decoded copy of the block.  Zeros, subnormals and huge values are counted in a further
 * pass only when the first shows there may be some (float16 counts them on the way: its weights
 * hold subnormals everywhere); a block whose sums are not finite holds NaN or infinity and is
 * reduced again by a plain loop over its finite values.  Blocks are merged with Chan et al.'s
 * formula, and chunks of a tensor exactly as pinit.stats merges them, so that every path gives the
 * same numbers.  ``file_stats`` reads a file region itself with pread, so that no Python code runs
 * per chunk.  The GIL is released while bytes are read and reduced: pinit's worker threads run in
 * parallel.
 *
 * diff.  ``bytes_equal`` and ``files_equal`` compare bytes (memcmp; the latter reads both file
 * regions with pread); ``diff_float`` and ``files_diff`` compute the difference statistics of two
 * chunks or file regions in one pass, in float64, with numpy's semantics (np.isclose with
 * equal_nan, |a - b| over positions finite on both sides).
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

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(_WIN32) && !defined(PINIT_NO_SIMD)
#define PINIT_X86 1
#include <immintrin.h>
#define TARGET512 __attribute__((target("avx512f,avx512dq,avx512bw,avx512vl,fma,f16c,popcnt")))
#define TARGET256 __attribute__((target("avx2,fma,f16c")))
#endif

#define BLOCK 2048              /* values per block: 8 KiB of float32, resident in L1 */
/* bytes per pread: measured on the 2-core Zen 4 VM, page cache warm, two threads: statistics read
   13.2 GB/s of fp32 in 1 MiB pieces against 11.9 in 256 KiB ones (bf16: 11.4 / 10.0); comparisons
   of two files 17.5 GB/s in 512 KiB pieces (two buffers) against 15.3 in 256 KiB and 16.7 in 1 MiB */
#define IO_STATS (1 << 20)
#define IO_COMPARE (512 * 1024)
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
/* ---- AVX-512: 32 values per step, decoded in registers, one read of each block ----------------
 *
 * The sums s1, s2 are of d = x - k with k = 0 (no subtraction) when the block's values straddle
 * zero (lo <= 0 <= hi): then sum x^2 <= n (hi - lo)^2 <= 2n M2, so M2 = s2 - s1^2/n loses at most
 * log2(2n) bits, as with k = the block's first value, which is used otherwise (a block of values
 * far from zero: its mean dwarfs its spread). A block is first summed the way the previous one
 * needed, and summed again with the other k when that was the wrong guess. x^2 and x*y of float32
 * values are exact in float64. */
typedef struct {
    __m512 lo0, lo1, hi0, hi1, am0, am1;
    __m512d s1a, s1b, s1c, s1d, s2a, s2b, s2c, s2d;
    __mmask32 small;
    int64_t nsmall, nzero;
} Lanes512;

#define STEP512(V, LO, HI, S1A, S2A, S1B, S2B)                                                    \
    do {                                                                                          \
        LO = _mm512_min_ps(V, LO); /* NaN in V: LO kept (the sums catch NaN) */                   \
        HI = _mm512_max_ps(V, HI);                                                                \
        __m512d d0 = _mm512_cvtps_pd(_mm512_castps512_ps256(V));                                  \
        __m512d d1 = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(V), 1))); \
        if (shift) {                                                                              \
            d0 = _mm512_sub_pd(d0, kd);                                                           \
            d1 = _mm512_sub_pd(d1, kd);                                                           \
        }                                                                                         \
        S1A = _mm512_add_pd(S1A, d0);                                                             \
        S2A = _mm512_fmadd_pd(d0, d0, S2A);                                                       \
        S1B = _mm512_add_pd(S1B, d1);                                                             \
        S2B = _mm512_fmadd_pd(d1, d1, S2B);                                                       \
    } while (0)

/* the vector part of one block: values [0, m) with m a multiple of 32 */
TARGET512 static inline __attribute__((always_inline)) void lanes512(Lanes512 *L, const unsigned char *p,
                                                                     Py_ssize_t m, const int kind,
                                                                     const int exptest, const int shift, float k) {
    const __m512i expmask = kind == KIND_F32    ? _mm512_set1_epi32(0x7f800000)
                            : kind == KIND_BF16 ? _mm512_set1_epi16(0x7f80)
                                                : _mm512_set1_epi16(0x7c00);
    const __m512i absmask = _mm512_set1_epi16(0x7fff), himask = _mm512_set1_epi32((int)0xffff0000u);
    const __m512d kd = _mm512_set1_pd((double)k);
    const int counted = exptest && kind == KIND_F16;
    __m512 lo0 = _mm512_set1_ps(k), hi0 = lo0, lo1 = lo0, hi1 = lo0;
    __m512 am0 = _mm512_set1_ps(fabsf(k)), am1 = am0;
    __m512d s1a = _mm512_setzero_pd(), s1b = s1a, s1c = s1a, s1d = s1a;
    __m512d s2a = s1a, s2b = s1a, s2c = s1a, s2d = s1a;
    __mmask32 small = 0;
    int64_t nsmall = 0, nzero = 0;
    Py_ssize_t i;
    for (i = 0; i < m; i += 32) {
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
            if (kind == KIND_BF16) { /* values 0, 2, 4, ... and 1, 3, 5, ...: the order does not matter */
                v0 = _mm512_castsi512_ps(_mm512_slli_epi32(r, 16));
                v1 = _mm512_castsi512_ps(_mm512_and_si512(r, himask));
            } else {
                v0 = _mm512_cvtph_ps(_mm512_castsi512_si256(r));
                v1 = _mm512_cvtph_ps(_mm512_extracti64x4_epi64(r, 1));
            }
        }
        if (!exptest) {
            am0 = _mm512_min_ps(_mm512_abs_ps(v0), am0);
            am1 = _mm512_min_ps(_mm512_abs_ps(v1), am1);
        }
        STEP512(v0, lo0, hi0, s1a, s2a, s1b, s2b);
        STEP512(v1, lo1, hi1, s1c, s2c, s1d, s2d);
    }
    L->lo0 = lo0, L->lo1 = lo1, L->hi0 = hi0, L->hi1 = hi1, L->am0 = am0, L->am1 = am1;
    L->s1a = s1a, L->s1b = s1b, L->s1c = s1c, L->s1d = s1d, L->s2a = s2a, L->s2b = s2b, L->s2c = s2c, L->s2d = s2d;
    L->small = small, L->nsmall = nsmall, L->nzero = nzero;
}

/* exptest: tiny is the kind's smallest normal number, so "below tiny" (zero or subnormal) is "exponent
   field zero", tested on the raw bits (one mask test per 32 16-bit values); otherwise the smallest
   magnitude is tracked. */
TARGET512 static inline void reduce512_body(Acc *a, const unsigned char *src, const int kind, const int exptest,
                                            Py_ssize_t count, float tiny, float max_abs) {
    const Py_ssize_t item = kind == KIND_F32 ? 4 : 2;
    const int counted = exptest && kind == KIND_F16;
    int shift = 0; /* the previous block's choice of k (see above) */
    Py_ssize_t start;
    for (start = 0; start < count; start += BLOCK) {
        const Py_ssize_t n = count - start < BLOCK ? count - start : BLOCK, m = n - n % 32;
        const unsigned char *p = src + start * item;
        const float first = load_one(p, kind, 0);
        for (;;) {
            Lanes512 L;
            if (shift)
                lanes512(&L, p, m, kind, exptest, 1, first);
            else
                lanes512(&L, p, m, kind, exptest, 0, first);
            const double k = shift ? (double)first : 0.0;
            float lo = _mm512_reduce_min_ps(_mm512_min_ps(L.lo0, L.lo1));
            float hi = _mm512_reduce_max_ps(_mm512_max_ps(L.hi0, L.hi1));
            float am = exptest ? (L.small ? 0.0f : INFINITY) : _mm512_reduce_min_ps(_mm512_min_ps(L.am0, L.am1));
            double s1 = _mm512_reduce_add_pd(_mm512_add_pd(_mm512_add_pd(L.s1a, L.s1b), _mm512_add_pd(L.s1c, L.s1d)));
            double s2 = _mm512_reduce_add_pd(_mm512_add_pd(_mm512_add_pd(L.s2a, L.s2b), _mm512_add_pd(L.s2c, L.s2d)));
            int64_t nsmall = L.nsmall, nzero = L.nzero;
            Py_ssize_t i;
            for (i = m; i < n; i++) {
                float v = load_one(p, kind, i);
                double d = (double)v - k;
                lo = v < lo ? v : lo;
                hi = v > hi ? v : hi;
                am = fabsf(v) < am ? fabsf(v) : am;
                nsmall += fabsf(v) < tiny;
                nzero += v == 0.0f;
                s1 += d;
                s2 += d * d;
            }
            const int finite = isfinite(s1) && isfinite(s2);
            const int straddles = lo <= 0.0f && hi >= 0.0f;
            if (finite && !shift && !straddles) { /* far from zero: summed again with k = first */
                shift = 1;
                continue;
            }
            if (finite) shift = !straddles;
            if (exptest && fabsf(first) < tiny) am = 0.0f; /* first itself (in no lane when n < 32) */
            if (counted && finite) { /* (a block with NaN or inf is counted again) */
                a->zeros += nzero;
                a->subnormal += nsmall - nzero;
                am = -1.0f;
            }
            finish_block(a, p, kind, n, lo, hi, am, k, s1, s2, tiny, max_abs);
            break;
        }
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
        __m256d d0 = _mm256_cvtps_pd(_mm256_castps256_ps128(V));                   \
        __m256d d1 = _mm256_cvtps_pd(_mm256_extractf128_ps(V, 1));                 \
        if (shift) {                                                               \
            d0 = _mm256_sub_pd(d0, kd);                                            \
            d1 = _mm256_sub_pd(d1, kd);                                            \
        }                                                                          \
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

typedef struct {
    float lo, hi, am;
    double s1, s2;
} Sums;

/* the vector part of one block, values [0, m) with m a multiple of 16; k subtracted when shift */
TARGET256 static inline __attribute__((always_inline)) Sums lanes256(const unsigned char *p, Py_ssize_t m,
                                                                     const int kind, const int shift, float k) {
    const Py_ssize_t item = kind == KIND_F32 ? 4 : 2;
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    const __m256d kd = _mm256_set1_pd((double)k);
    __m256 lo0 = _mm256_set1_ps(k), hi0 = lo0, lo1 = lo0, hi1 = lo0;
    __m256 am0 = _mm256_set1_ps(fabsf(k)), am1 = am0;
    __m256d s1a = _mm256_setzero_pd(), s1b = s1a, s1c = s1a, s1d = s1a;
    __m256d s2a = s1a, s2b = s1a, s2c = s1a, s2d = s1a;
    Py_ssize_t i;
    for (i = 0; i < m; i += 16) {
        __m256 v0 = ld256(p + i * item, kind);
        __m256 v1 = ld256(p + (i + 8) * item, kind);
        STEP256(v0, lo0, hi0, am0, s1a, s2a, s1b, s2b);
        STEP256(v1, lo1, hi1, am1, s1c, s2c, s1d, s2d);
    }
    Sums r;
    r.lo = hmin256(_mm256_min_ps(lo0, lo1));
    r.hi = hmax256(_mm256_max_ps(hi0, hi1));
    r.am = hmin256(_mm256_min_ps(am0, am1));
    r.s1 = hsum256d(_mm256_add_pd(_mm256_add_pd(s1a, s1b), _mm256_add_pd(s1c, s1d)));
    r.s2 = hsum256d(_mm256_add_pd(_mm256_add_pd(s2a, s2b), _mm256_add_pd(s2c, s2d)));
    return r;
}

/* as reduce512_body (k = 0 for blocks that straddle zero, else the block's first value) */
TARGET256 static inline void reduce256_body(Acc *a, const unsigned char *src, const int kind, Py_ssize_t count,
                                            float tiny, float max_abs) {
    const Py_ssize_t item = kind == KIND_F32 ? 4 : 2;
    int shift = 0;
    Py_ssize_t start;
    for (start = 0; start < count; start += BLOCK) {
        const Py_ssize_t n = count - start < BLOCK ? count - start : BLOCK, m = n - n % 16;
        const unsigned char *p = src + start * item;
        const float first = load_one(p, kind, 0);
        for (;;) {
            Sums r = shift ? lanes256(p, m, kind, 1, first) : lanes256(p, m, kind, 0, first);
            const double k = shift ? (double)first : 0.0;
            Py_ssize_t i;
            for (i = m; i < n; i++) {
                float v = load_one(p, kind, i);
                double d = (double)v - k;
                r.lo = v < r.lo ? v : r.lo;
                r.hi = v > r.hi ? v : r.hi;
                r.am = fabsf(v) < r.am ? fabsf(v) : r.am;
                r.s1 += d;
                r.s2 += d * d;
            }
            const int finite = isfinite(r.s1) && isfinite(r.s2);
            const int straddles = r.lo <= 0.0f && r.hi >= 0.0f;
            if (finite && !shift && !straddles) {
                shift = 1;
                continue;
            }
            if (finite) shift = !straddles;
            finish_block(a, p, kind, n, r.lo, r.hi, r.am, k, r.s1, r.s2, tiny, max_abs);
            break;
        }
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
    long long offset, nbytes, chunk = 1 << 20, io = IO_STATS;
    double tiny, max_abs;
    (void)self;
    if (!PyArg_ParseTuple(args, "iLLidd|LL:file_stats", &fd, &offset, &nbytes, &kind, &tiny, &max_abs, &chunk, &io))
        return NULL;
    if (check_kind(kind, (Py_ssize_t)(nbytes % 4)) < 0) return NULL; /* (nbytes % 4) % item == nbytes % item */
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
    long long oa, ob, nbytes, chunk = IO_COMPARE;
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

/* One pass over two chunks of one dtype, in float64, with numpy's semantics: values close when
   |a - b| <= atol + rtol * |b| for finite ones, equal for the others, NaN close to NaN. Written
   without branches (masks), one loop per kind, so that the compiler can vectorize it. */
static inline __attribute__((always_inline)) void diff_body(DiffAcc *d, const unsigned char *pa,
                                                            const unsigned char *pb, const int kind,
                                                            Py_ssize_t count, double atol, double rtol) {
    const Py_ssize_t item = kind == KIND_F64 ? 8 : kind == KIND_F32 ? 4 : 2;
    double max_abs = d->max_abs, sq_diff = 0.0, sq_a = 0.0;
    int64_t differ = 0, mismatched = 0, nan_a = 0, nan_b = 0, inf = 0;
    Py_ssize_t i;
#pragma omp simd reduction(max : max_abs) reduction(+ : sq_diff, sq_a, differ, mismatched, nan_a, nan_b, inf)
    for (i = 0; i < count; i++) {
        const double x = load_wide(pa, kind, i), y = load_wide(pb, kind, i);
        const int na = x != x, nb = y != y;
        const int fx = fabs(x) <= 1.7976931348623157e308, fy = fabs(y) <= 1.7976931348623157e308;
        const int both = fx & fy;
        const double e = fabs(x - y);
        const double eb = both ? e : 0.0, xb = both ? x : 0.0;
        double tol = rtol * fabs(y);
        tol = atol + tol;
        const int close = both ? e <= tol : (x == y) | (na & nb);
        differ += bits_at(pa, item, i) != bits_at(pb, item, i);
        max_abs = eb > max_abs ? eb : max_abs;
        sq_diff += eb * eb;
        sq_a += xb * xb;
        mismatched += !close;
        nan_a += na & !nb;
        nan_b += nb & !na;
        inf += !(na | nb) & !both & (x != y);
    }
    d->max_abs = max_abs;
    d->sq_diff += sq_diff;
    d->sq_a += sq_a;
    d->differ += differ;
    d->mismatched += mismatched;
    d->nan_a += nan_a;
    d->nan_b += nan_b;
    d->inf += inf;
}

#ifdef PINIT_X86
/* diff_body for 16 values at a time (float32, bfloat16, float16), in float64 like it; groups of 16
   with equal bits only add to sum a^2 */
TARGET512 static inline __m512 widen16(__m256i h, int kind) {
    if (kind == KIND_BF16) return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    return _mm512_cvtph_ps(h);
}

TARGET512 static inline __m512d half_pd(__m512 v, int hi) {
    return _mm512_cvtps_pd(hi ? _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1))
                              : _mm512_castps512_ps256(v));
}

TARGET512 static Py_ssize_t diff512(DiffAcc *d, const unsigned char *pa, const unsigned char *pb, int kind,
                                    Py_ssize_t count, double atol, double rtol) {
    const Py_ssize_t m = count - count % 16;
    const __m512d vat = _mm512_set1_pd(atol), vrt = _mm512_set1_pd(rtol), big = _mm512_set1_pd(1.7976931348623157e308);
    __m512d vmax = _mm512_setzero_pd(), vsqd = vmax, vsqa = vmax;
    int64_t differ = 0, mism = 0, nan_a = 0, nan_b = 0, inf = 0;
    Py_ssize_t i;
    for (i = 0; i < m; i += 16) {
        __m512 xa, xb;
        __mmask16 dif;
        if (kind == KIND_F32) {
            __m512i ra = _mm512_loadu_si512((const void *)(pa + 4 * i)), rb = _mm512_loadu_si512((const void *)(pb + 4 * i));
            dif = _mm512_cmpneq_epi32_mask(ra, rb);
            xa = _mm512_castsi512_ps(ra);
            xb = _mm512_castsi512_ps(rb);
        } else {
            __m256i ha = _mm256_loadu_si256((const __m256i *)(pa + 2 * i));
            __m256i hb = _mm256_loadu_si256((const __m256i *)(pb + 2 * i));
            dif = _mm256_cmpneq_epi16_mask(ha, hb);
            xa = widen16(ha, kind);
            xb = widen16(hb, kind);
        }
        int h;
        if (!dif) {
            for (h = 0; h < 2; h++) {
                __m512d x = half_pd(xa, h);
                __mmask8 fin = _mm512_cmp_pd_mask(_mm512_abs_pd(x), big, _CMP_LE_OQ);
                vsqa = _mm512_mask3_fmadd_pd(x, x, vsqa, fin);
            }
            continue;
        }
        differ += _mm_popcnt_u32(dif);
        for (h = 0; h < 2; h++) {
            __m512d x = half_pd(xa, h), y = half_pd(xb, h), ay = _mm512_abs_pd(y);
            __mmask8 both = _mm512_cmp_pd_mask(_mm512_abs_pd(x), big, _CMP_LE_OQ) & _mm512_cmp_pd_mask(ay, big, _CMP_LE_OQ);
            __m512d e = _mm512_abs_pd(_mm512_sub_pd(x, y));
            vmax = _mm512_mask_max_pd(vmax, both, vmax, e);
            vsqd = _mm512_mask3_fmadd_pd(e, e, vsqd, both);
            vsqa = _mm512_mask3_fmadd_pd(x, x, vsqa, both);
            __m512d tol = _mm512_add_pd(vat, _mm512_mul_pd(vrt, ay)); /* two roundings, as numpy */
            __mmask8 eq = _mm512_cmp_pd_mask(x, y, _CMP_EQ_OQ);
            __mmask8 nx = _mm512_cmp_pd_mask(x, x, _CMP_UNORD_Q), ny = _mm512_cmp_pd_mask(y, y, _CMP_UNORD_Q);
            __mmask8 close = (_mm512_cmp_pd_mask(e, tol, _CMP_LE_OQ) & both) | (~both & (eq | (nx & ny)));
            mism += _mm_popcnt_u32((unsigned)(~close) & 0xffu);
            nan_a += _mm_popcnt_u32((unsigned)(nx & ~ny) & 0xffu);
            nan_b += _mm_popcnt_u32((unsigned)(ny & ~nx) & 0xffu);
            inf += _mm_popcnt_u32((unsigned)(~(nx | ny) & ~both & ~eq) & 0xffu);
        }
    }
    double mx = _mm512_reduce_max_pd(vmax);
    if (mx > d->max_abs) d->max_abs = mx;
    d->sq_diff += _mm512_reduce_add_pd(vsqd);
    d->sq_a += _mm512_reduce_add_pd(vsqa);
    d->differ += differ;
    d->mismatched += mism;
    d->nan_a += nan_a;
    d->nan_b += nan_b;
    d->inf += inf;
    return m;
}
#endif

PINIT_CLONES
static void diff_portable(DiffAcc *d, const unsigned char *pa, const unsigned char *pb, int kind, Py_ssize_t count,
                          double atol, double rtol) {
    if (kind == KIND_F32) diff_body(d, pa, pb, KIND_F32, count, atol, rtol);
    else if (kind == KIND_BF16) diff_body(d, pa, pb, KIND_BF16, count, atol, rtol);
    else if (kind == KIND_F16) diff_body(d, pa, pb, KIND_F16, count, atol, rtol);
    else diff_body(d, pa, pb, KIND_F64, count, atol, rtol);
}

static void diff_pass(DiffAcc *d, const unsigned char *pa, const unsigned char *pb, int kind, Py_ssize_t count,
                      double atol, double rtol, int isa) {
    Py_ssize_t done = 0;
#ifdef PINIT_X86
    if (isa == ISA_AVX512 && kind != KIND_F64) done = diff512(d, pa, pb, kind, count, atol, rtol);
#else
    (void)isa;
#endif
    const Py_ssize_t item = kind == KIND_F64 ? 8 : kind == KIND_F32 ? 4 : 2;
    if (done < count) diff_portable(d, pa + done * item, pb + done * item, kind, count - done, atol, rtol);
}

static PyObject *diff_tuple(const DiffAcc *d) {
    return Py_BuildValue("(LdddLLLL)", (long long)d->differ, d->max_abs, d->sq_diff, d->sq_a, (long long)d->mismatched,
                         (long long)d->nan_a, (long long)d->nan_b, (long long)d->inf);
}

static PyObject *diff_float(PyObject *self, PyObject *args) {
    Py_buffer va, vb;
    int kind, isa = -1;
    double atol, rtol;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*y*idd|i:diff_float", &va, &vb, &kind, &atol, &rtol, &isa)) return NULL;
    Py_ssize_t item = kind == KIND_F64 ? 8 : kind == KIND_F32 ? 4 : 2;
    isa = pick_isa(isa);
    if (kind < KIND_F32 || kind > KIND_F64 || va.len != vb.len || va.len % item || isa < 0) {
        PyBuffer_Release(&va);
        PyBuffer_Release(&vb);
        PyErr_SetString(PyExc_ValueError,
                        "diff_float: unknown kind or instruction set, buffers of different sizes, or partial values");
        return NULL;
    }
    DiffAcc d = {0, 0, 0, 0, 0, 0.0, 0.0, 0.0};
    Py_BEGIN_ALLOW_THREADS
    diff_pass(&d, (const unsigned char *)va.buf, (const unsigned char *)vb.buf, kind, va.len / item, atol, rtol, isa);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&va);
    PyBuffer_Release(&vb);
    return diff_tuple(&d);
}

#ifdef PINIT_PREAD
/* diff_float over two file regions, read with pread in pieces of chunk bytes (whole values) */
static PyObject *files_diff(PyObject *self, PyObject *args) {
    int fa, fb, kind;
    long long oa, ob, nbytes, chunk = IO_COMPARE;
    double atol, rtol;
    (void)self;
    if (!PyArg_ParseTuple(args, "iLiLLidd|L:files_diff", &fa, &oa, &fb, &ob, &nbytes, &kind, &atol, &rtol, &chunk))
        return NULL;
    const long long item = kind == KIND_F64 ? 8 : kind == KIND_F32 ? 4 : 2;
    if (kind < KIND_F32 || kind > KIND_F64 || oa < 0 || ob < 0 || nbytes < 0 || nbytes % item || chunk < item ||
        chunk % item) {
        PyErr_SetString(PyExc_ValueError, "files_diff: unknown kind, negative offset or size, or partial values");
        return NULL;
    }
    const size_t size = (size_t)(nbytes < chunk ? nbytes : chunk);
    unsigned char *buf = (unsigned char *)malloc(2 * (size ? size : 1));
    if (buf == NULL) return PyErr_NoMemory();
    DiffAcc d = {0, 0, 0, 0, 0, 0.0, 0.0, 0.0};
    int err = 0;
    Py_BEGIN_ALLOW_THREADS
    long long done = 0;
    while (done < nbytes) {
        size_t n = (size_t)(nbytes - done < (long long)size ? nbytes - done : (long long)size);
        err = pread_full(fa, buf, n, oa + done);
        if (!err) err = pread_full(fb, buf + size, n, ob + done);
        if (err) break;
        diff_pass(&d, buf, buf + size, kind, (Py_ssize_t)(n / item), atol, rtol, best_isa);
        done += (long long)n;
    }
    Py_END_ALLOW_THREADS
    free(buf);
    if (err) return io_error(err);
    return diff_tuple(&d);
}
#endif

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
     "file_stats(fd, offset, nbytes, kind, tiny, max_abs, chunk=1048576, io=1048576) -> as float_stats(..., chunk), "
     "for the nbytes at offset of the file fd, read with pread in pieces of io bytes (OSError; EOFError for an "
     "early end of file)."},
    {"files_equal", files_equal, METH_VARARGS,
     "files_equal(fd_a, offset_a, fd_b, offset_b, nbytes, chunk=524288) -> -1 if the two regions hold the same "
     "bytes, else the offset of the first chunk that differs."},
#endif
    {"bytes_equal", bytes_equal, METH_VARARGS, "bytes_equal(a, b) -> whether two buffers hold the same bytes."},
    {"diff_float", diff_float, METH_VARARGS,
     "diff_float(a, b, kind, atol, rtol, isa=-1) -> (differ, max_abs, sq_diff, sq_a, mismatched, nan_a, nan_b, inf)"
     "\n\n"
     "kind: 0 float32, 1 bfloat16, 2 float16, 3 float64. differ: values whose bits differ; max_abs, sq_diff: of "
     "|a - b| where both are finite; sq_a: sum of a^2 there; mismatched: values not close (numpy.isclose, NaN "
     "equal to NaN); nan_a / nan_b: NaN on that side only; inf: infinity against another value, no NaN. isa: as "
     "for float_stats (AVX-512 or portable)."},
#ifdef PINIT_PREAD
    {"files_diff", files_diff, METH_VARARGS,
     "files_diff(fd_a, offset_a, fd_b, offset_b, nbytes, kind, atol, rtol, chunk=524288) -> as diff_float, for two "
     "file regions read with pread in pieces of chunk bytes (OSError; EOFError for an early end of file)."},
#endif
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
