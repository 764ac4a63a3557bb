/* pinit._kernel: the statistics of a chunk of float32, bfloat16 or float16 values in C.
 *
 * An optional accelerator for pinit.stats (which has a numpy path that gives the same results
 * when this extension is not built).  One call reduces one buffer, a block of 2,048 values at a
 * time (16-bit values are decoded to float32 into a buffer that stays in the first-level cache),
 * and each block is read twice: once for min, max, counts and a rough sum, once for the sums of
 * deviations from the block's rough mean (the corrected two-pass algorithm, in float64).  Blocks
 * are merged with Chan et al.'s formula.  Zeros and huge values are counted in a further pass only
 * when the first pass shows there may be some.  A block holding NaN or infinity (or values whose
 * float32 sum overflows) is reduced again by a plain loop over its finite values.  The GIL is
 * released while the buffer is reduced, so pinit's worker threads run in parallel.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <stdint.h>
#include <string.h>

#define BLOCK 2048 /* values per block: 8 KiB of float32, resident in L1 */

enum { KIND_F32 = 0, KIND_BF16 = 1, KIND_F16 = 2 };

/* One build, three instruction sets (AVX-512, AVX2, baseline), chosen when the module loads; GCC
   11+ on glibc only (it needs ifunc), elsewhere the compiler's default target. */
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

PINIT_CLONES
static void reduce_blocks(Acc *a, const unsigned char *src, int kind, Py_ssize_t count, float tiny, float max_abs) {
    float buf[BLOCK];
    Py_ssize_t start;
    for (start = 0; start < count; start += BLOCK) {
        const Py_ssize_t n = count - start < BLOCK ? count - start : BLOCK;
        /* pass 1: min, max, a rough float32 sum (NaN or infinity makes it non-finite, and so does
           an overflow from huge values: such blocks go to block_slow), values below tiny; 16-bit
           values are decoded into buf on the way */
        const float *x = buf;
        float lo = INFINITY, hi = -INFINITY, s = 0.0f;
        int small = 0;
        Py_ssize_t i;
        if (kind == KIND_BF16) {
            const unsigned char *p = src + start * 2;
#pragma omp simd reduction(min : lo) reduction(max : hi) reduction(+ : s, small)
            for (i = 0; i < n; i++) {
                uint16_t h;
                memcpy(&h, p + 2 * i, 2);
                float v = bits_to_float((uint32_t)h << 16);
                buf[i] = v;
                lo = v < lo ? v : lo;
                hi = v > hi ? v : hi;
                s += v;
                small += fabsf(v) < tiny;
            }
        } else {
            if (kind == KIND_F16) {
                const unsigned char *p = src + start * 2;
                for (i = 0; i < n; i++) { /* decoded apart: this loop vectorizes on its own */
                    uint16_t h;
                    memcpy(&h, p + 2 * i, 2);
                    buf[i] = half_to_float(h);
                }
            } else if (((uintptr_t)(src + start * 4) % sizeof(float)) == 0) {
                x = (const float *)(src + start * 4);
            } else {
                memcpy(buf, src + start * 4, (size_t)n * 4);
            }
#pragma omp simd reduction(min : lo) reduction(max : hi) reduction(+ : s, small)
            for (i = 0; i < n; i++) {
                float v = x[i];
                lo = v < lo ? v : lo;
                hi = v > hi ? v : hi;
                s += v;
                small += fabsf(v) < tiny;
            }
        }
        if (!isfinite(s)) {
            block_slow(a, x, n, tiny, max_abs);
            continue;
        }
        if (small) {
            int zeros = 0;
#pragma omp simd reduction(+ : zeros)
            for (i = 0; i < n; i++) zeros += x[i] == 0.0f;
            a->zeros += zeros;
            a->subnormal += small - zeros;
        }
        if (-lo > max_abs || hi > max_abs) {
            int huge = 0;
#pragma omp simd reduction(+ : huge)
            for (i = 0; i < n; i++) huge += fabsf(x[i]) > max_abs;
            a->huge += huge;
        }
        if (lo == hi) { /* one value throughout: exactly that mean, exactly no spread */
            merge(a, n, lo, 0.0, (double)lo * n, lo, hi);
            continue;
        }
        /* pass 2: deviations from the rough mean, in float64 */
        const double m = (double)s / (double)n;
        double d1, d2;
        deviations(x, n, m, &d1, &d2);
        const double mean = m + d1 / (double)n;
        merge(a, n, mean, d2 - d1 * d1 / (double)n, mean * (double)n, lo, hi);
    }
}

static PyObject *float_stats(PyObject *self, PyObject *args) {
    Py_buffer view;
    int kind;
    double tiny, max_abs;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*idd:float_stats", &view, &kind, &tiny, &max_abs)) return NULL;
    Py_ssize_t item = kind == KIND_F32 ? 4 : 2;
    if (kind < KIND_F32 || kind > KIND_F16 || view.len % item) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "float_stats: unknown kind, or a length that is not a whole number of values");
        return NULL;
    }
    Acc a = {0, 0.0, 0.0, 0.0, INFINITY, -INFINITY, 0, 0, 0, 0, 0};
    /* max_abs beyond float32's range compares as infinity: no finite value is huge */
    float fmax_abs = max_abs > 3.4028234663852886e38 ? INFINITY : (float)max_abs;
    Py_BEGIN_ALLOW_THREADS
    reduce_blocks(&a, (const unsigned char *)view.buf, kind, view.len / item, (float)tiny, fmax_abs);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&view);
    return Py_BuildValue("(LdddddLLLLL)", (long long)a.n, a.mean, a.m2, a.total, a.min, a.max, (long long)a.zeros,
                         (long long)a.nan, (long long)a.inf, (long long)a.subnormal, (long long)a.huge);
}

static PyMethodDef methods[] = {
    {"float_stats", float_stats, METH_VARARGS,
     "float_stats(buffer, kind, tiny, max_abs) -> (n_finite, mean, m2, total, min, max, zeros, nan, inf, subnormal, "
     "huge)\n\nkind: 0 float32, 1 bfloat16, 2 float16 (little-endian). mean, m2 (sum of squared deviations), "
     "total, min and max cover the finite values."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "pinit._kernel", NULL, -1, methods};

PyMODINIT_FUNC PyInit__kernel(void) {
    PyObject *m = PyModule_Create(&module);
#ifdef Py_GIL_DISABLED
    if (m != NULL) PyUnstable_Module_SetGIL(m, Py_MOD_GIL_NOT_USED); /* no state shared between calls */
#endif
    return m;
}
