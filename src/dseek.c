/* dseek.c - the whole dseek inference engine for DeepSeek-V2 / V3 / R1 checkpoints.
 *
 * Read top to bottom:
 *   1. utilities (errors, number formats, dseek's quantized block formats)
 *   2. config.json
 *   3. safetensors files and the tensor table
 *   4. binding weights to the model structs
 *   5. kernels (matmul, norms, RoPE)
 *   6. the forward pass: MLA attention, MoE routing, experts
 *   7. sessions
 *   8. sampling
 *   9. tokenizer and chat templates
 *  10. generation with MTP speculative decoding
 *
 * Shapes: T tokens in a forward step, D hidden size, H heads, R kv_lora_rank,
 * nope / rope / v the per-head dims, E routed experts, k experts per token.
 * The maths follows ../shared/SPEC.md; comments say where a choice comes from. */
#define _GNU_SOURCE
#include "dseek.h"

#include <cjson/cJSON.h>
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <sched.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#ifdef _OPENMP
#include <omp.h>
#endif
#include <cblas.h>
#undef I /* complex.h (pulled in by cblas.h) defines I; dseek uses it as a name */

/* ============================================================================
 * 1. Utilities
 * ========================================================================== */

/* Error messages are one line: control characters that names from a file (tensor names,
 * JSON keys and values) or a path may hold are shown as '?'. */
static void oneline(char *s) {
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || *s == 0x7f) *s = '?';
}

static void seterr(char *err, size_t errlen, const char *fmt, ...) {
    if (!err || !errlen) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    oneline(err);
}

#define DS_ASSERT(c)                                                                       \
    do {                                                                                   \
        if (!(c)) {                                                                        \
            fprintf(stderr, "dseek: internal error at %s:%d: %s\n", __FILE__, __LINE__, #c); \
            abort();                                                                       \
        }                                                                                  \
    } while (0)

static void *xcalloc(size_t n, size_t sz) { return n && sz ? calloc(n, sz) : calloc(1, 1); }

static float bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* float32 to bfloat16, rounded to nearest with ties to even; a NaN stays a NaN. */
static uint16_t f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)(u >> 16 | 0x40);
    return (uint16_t)((u + 0x7fffu + (u >> 16 & 1)) >> 16);
}

static float f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h >> 15) << 31, exp = (h >> 10) & 0x1f, man = h & 0x3ff, u;
    if (exp == 0) {
        if (man == 0) u = sign;
        else { /* subnormal: renormalize */
            exp = 127 - 15 + 1;
            while (!(man & 0x400)) { man <<= 1; exp--; }
            u = sign | (exp << 23) | ((man & 0x3ff) << 13);
        }
    } else if (exp == 31) u = sign | 0x7f800000u | (man << 13);
    else u = sign | ((exp + 127 - 15) << 23) | (man << 13);
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* F8_E4M3 ("e4m3fn"): 1 sign, 4 exponent (bias 7), 3 mantissa bits, no infinities,
 * S.1111.111 is NaN. Decoded through a table filled once. */
static float fp8_table[256];
static void fp8_table_init(void) {
    for (int i = 0; i < 256; i++) {
        int s = i >> 7, e = (i >> 3) & 15, m = i & 7;
        float v;
        if (e == 15 && m == 7) v = NAN;
        else if (e == 0) v = ldexpf((float)m / 8.0f, -6);
        else v = ldexpf(1.0f + (float)m / 8.0f, e - 7);
        fp8_table[i] = s ? -v : v;
    }
}

/* IEEE half from float, round to nearest even (overflow gives infinity). Portable and
 * exact, so quantized files are byte-identical whatever machine writes them. */
static uint16_t f32_to_f16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000, ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u) return (uint16_t)(sign | 0x7c00 | (ax > 0x7f800000u ? 0x200 : 0)); /* inf, nan */
    if (ax >= 0x477ff000u) return (uint16_t)(sign | 0x7c00);       /* >= 65520 rounds to inf */
    if (ax < 0x38800000u) {                                         /* below 2^-14: subnormal */
        float a;
        memcpy(&a, &ax, 4);
        return (uint16_t)(sign | (uint32_t)lrintf(a * 16777216.0f)); /* units of 2^-24, exact scaling */
    }
    uint32_t r = ax - 0x38000000u;                                  /* rebias 127 -> 15 */
    r += 0x0fff + ((r >> 13) & 1);                                  /* round the 13 dropped bits */
    return (uint16_t)(sign | (r >> 13));
}

/* ----------------------------------------------------------------------------
 * dseek's quantized block formats: Q8_0, Q4_0 and Q4_K
 *
 * Q8_0 and Q4_0 cut every row of a weight matrix [rows, cols] into blocks of 32 consecutive
 * columns with one scale d per block (an IEEE half):
 *   Q8_0  w = d * q,        q int8 in [-127, 127], d = max|w| / 127           8.5 bits/weight
 *   Q4_0  w = d * (q - 8),  q 4-bit in [0, 15],  d chosen by a small search  4.5 bits/weight
 * Q4_K cuts a row into super-blocks of 256 columns, each of 8 sub-blocks of 32, with two
 * halves d and dmin per super-block and a 6-bit scale sc and a 6-bit min m per sub-block:
 *   Q4_K  w = (d * sc) * q - (dmin * m),  q 4-bit in [0, 15],  sc, m in [0, 63]
 *         (16 + 16 + 8 * 12 bits per 256 weights on top of the quants)      4.5 bits/weight
 * Both products are exact in float32 (11 by 6 significant bits), so d * sc and dmin * m
 * are plain numbers: the sub-block's step and offset.
 *
 * Layout. The bytes are arranged for the int8 dot-product kernels (section 5) rather than
 * row by row: rows are taken in groups of 16 (the last group padded with zero rows) and
 * columns in blocks of 32 (the last block padded with zero columns). A tensor is
 * ng = ceil(rows/16) row groups one after the other; a row group is nb = ceil(cols/32)
 * tiles in column order; a tile holds the 16 x 32 weights of one row group and one block:
 *   bytes 0..31  the 16 scales d[r] (little-endian half), r = row within the group
 *   Q8_0, then 512 bytes:  byte 32 + 64k + 4r + i = q of row r, column 4k + i     (k < 8, i < 4)
 *   Q4_0, then 256 bytes:  byte 32 + 64k + 4r + i = q of row r, column 4k + i      (low nibble)
 *                                                   | q of row r, column 16+4k+i << 4 (high)
 * Q4_K tiles are 16 rows x 256 columns, 2304 bytes, ceil(cols/256) per row group; the last
 * one, when cols is not a multiple of 256, holds only the sub-blocks that have columns
 * (ceil(cols/32) % 8 of them: 256 + 256 * that many bytes; the sc and m of the others are 0),
 * and the last sub-block is padded with zero columns:
 *   bytes   0..31   d[r]     (half)
 *   bytes  32..63   dmin[r]  (half)
 *   bytes  64..191  byte 64 + 16j + r = (sc[r][j] & 15) | (m[r][j] & 15) << 4   (sub-block j < 8)
 *   bytes 192..255  byte 192 + 16(j%4) + r, bits 4(j/4) .. 4(j/4)+3 = sc[r][j] >> 4 | (m[r][j] >> 4) << 2
 *   bytes 256 + 256j ..  sub-block j's quants, arranged as a Q4_0 tile's (256 bytes):
 *                   byte 256 + 256j + 64k + 4r + i = q of row r, column 32j + 4k + i (low nibble)
 *                                                  | q of row r, column 32j + 16+4k+i << 4
 * Why: one 64-byte line then holds 4 consecutive columns of all 16 rows (Q4_0, Q4_K: 2 x 4),
 * which is exactly one VNNI dot-product instruction whose 16 int32 lanes are the 16 rows. The
 * kernel streams memory in order, never sums across lanes, and its result for row r is the
 * plain sequential sum over blocks, which any other kernel (AVX2, portable C) reproduces bit
 * for bit (section 5). The 16 rows' sc and m of one sub-block are 16 consecutive bytes (and
 * 16 more for their high bits), one vector load each. The cost is that a row is not
 * contiguous: tensor_row gathers it.
 *
 * Files store a quantized tensor as a 1-D U8 safetensors tensor of ng * (tiles per group) *
 * tile bytes, zero-padded to a multiple of 64 (section 11 describes the container).
 * ------------------------------------------------------------------------- */

/* Stored tensor dtypes: the safetensors ones dseek computes with, then its own. */
enum { DT_F32, DT_BF16, DT_F16, DT_F8, DT_Q8_0, DT_Q4_0, DT_Q4_K, DT_OTHER };

enum { QK = 32, QR = 16 };                 /* block columns, rows per group */
enum { QKK = 256, QKS = QKK / QK };        /* Q4_K super-block columns, sub-blocks per super-block */
enum { Q8_TILE = 32 + QR * QK, Q4_TILE = 32 + QR * QK / 2, Q4K_TILE = 256 + QR * QKK / 2 };

static int is_quant(int dt) { return dt == DT_Q8_0 || dt == DT_Q4_0 || dt == DT_Q4_K; }
/* bytes of one element of a float dtype (DT_F32, DT_BF16, DT_F16, DT_F8); 2 for the
 * quantized ones, the size of their half scales */
static size_t elem_bytes(int dt) { return dt == DT_F32 ? 4 : dt == DT_F8 ? 1 : 2; }
static size_t qtile_bytes(int dt) { return dt == DT_Q8_0 ? Q8_TILE : dt == DT_Q4_0 ? Q4_TILE : Q4K_TILE; }
static size_t qtile_cols(int dt) { return dt == DT_Q4_K ? QKK : QK; }
/* bytes of one row group of a quantized matrix with `cols` columns (Q4_K: the last tile
 * cut after its last sub-block) */
static size_t qgroup_bytes(int dt, size_t cols) {
    if (dt != DT_Q4_K) return (cols + QK - 1) / QK * qtile_bytes(dt);
    const size_t rest = (cols % QKK + QK - 1) / QK;
    return cols / QKK * Q4K_TILE + (rest ? 256 + 256 * rest : 0);
}
/* bytes of a quantized [rows, cols] matrix, without the file's padding */
static size_t qtensor_bytes(int dt, size_t rows, size_t cols) { return (rows + QR - 1) / QR * qgroup_bytes(dt, cols); }

static size_t round_up(size_t n, size_t m) { return (n + m - 1) / m * m; }

/* The block quantizers below are written so that the compiler can vectorize them and still
 * give the same bytes on every machine and build: sums go through 8 fixed lanes
 * (no reassociation), rounding to the nearest integer (ties to even, as lrintf) is the
 * exact float trick (v + 1.5 * 2^23) - 1.5 * 2^23, valid for |v| < 2^22, and every product
 * is a statement of its own, so that no compiler fuses it into a multiply-add (clang does
 * within one expression by default). */
#define RND_MAGIC 12582912.0f

/* The largest |x[i]| of a block, as the largest of the values' bits with the sign cleared:
 * for floats of one sign the bits order as the values do, and a NaN anywhere in the block
 * comes out (its bits lie above infinity's), where a float comparison would skip it and
 * the NaN would be quantized as a 0. */
static float absmax32(const float *x) {
    uint32_t m[16] = {0};
    for (int j = 0; j < QK; j += 16)
        for (int k = 0; k < 16; k++) {
            uint32_t u;
            memcpy(&u, x + j + k, sizeof u);
            u &= 0x7fffffffu;
            m[k] = u > m[k] ? u : m[k];
        }
    for (int k = 1; k < 16; k++) m[0] = m[k] > m[0] ? m[k] : m[0];
    float r;
    memcpy(&r, &m[0], sizeof r);
    return r;
}

/* Q8_0 of one block x[32]: scale d, q[32]. Returns -1 if x holds a non-finite value or a
 * scale too large for a half. Maxima below 1e-30 give an all-zero block. */
static int q8_0_block(const float *x, uint16_t *d, int8_t *q) {
    float amax = absmax32(x);
    if (!(amax <= 3.4e38f)) return -1;
    *d = amax < 1e-30f ? 0 : f32_to_f16(amax / 127.0f);
    float ds = f16_to_f32(*d);
    if (isinf(ds)) return -1;
    float id = ds > 0 ? 1.0f / ds : 0.0f; /* quantize with the scale as stored */
    for (int i = 0; i < QK; i++) {
        float v = x[i] * id;
        v = (v + RND_MAGIC) - RND_MAGIC;
        v = v > 127.0f ? 127.0f : v < -127.0f ? -127.0f : v;
        q[i] = (int8_t)(int)v;
    }
    return 0;
}

/* Q4_0 of one block x[32]: scale d, q[32] in [0, 15]. The plain rule d = m / -8 (m the
 * value of largest magnitude, which then maps to q = 0) wastes resolution when the other
 * values are small; instead a few divisors around it are tried (m maps to -9 .. -7 before
 * clamping, or to +7, +7.5) and for each rounding the least-squares scale d = Sxq / Sqq
 * is taken, whose squared error is Sxx - Sxq^2 / Sqq: the largest Sxq^2 / Sqq wins. On
 * Gaussian blocks that is 5.5% lower RMS error than max/-8. */
static int q4_0_block(const float *x, uint16_t *d, uint8_t *q) {
    static const float div[] = {-9.0f, -8.5f, -8.0f, -7.5f, -7.0f, 7.0f, 7.5f};
    float amax = absmax32(x), m = 0;
    if (!(amax <= 3.4e38f)) return -1;
    for (int i = 0; i < QK; i++)
        if (fabsf(x[i]) == amax) { m = x[i]; break; }
    if (amax < 1e-30f) {
        *d = 0;
        memset(q, 8, QK);
        return 0;
    }
    float best = -1, best_d = 0, qb[QK];
    for (size_t c = 0; c < sizeof div / sizeof div[0]; c++) {
        const float id = div[c] / m;
        float qc[QK], sxq[8] = {0}, sqq[8] = {0};
        for (int j = 0; j < QK; j += 8)
            for (int k = 0; k < 8; k++) {
                float v = x[j + k] * id;
                v = (v + RND_MAGIC) - RND_MAGIC;
                v = v > 7.0f ? 7.0f : v < -8.0f ? -8.0f : v;
                qc[j + k] = v;
                float xv = x[j + k] * v;
                sxq[k] += xv;
                sqq[k] += v * v; /* small integers: exact, fused or not */
            }
        for (int k = 1; k < 8; k++) {
            sxq[0] += sxq[k];
            sqq[0] += sqq[k];
        }
        float score = sxq[0] * sxq[0] / sqq[0]; /* sqq >= 49: m itself maps to |v| >= 7 */
        if (score > best) {
            best = score;
            best_d = sxq[0] / sqq[0];
            memcpy(qb, qc, sizeof qb);
        }
    }
    *d = f32_to_f16(best_d);
    if (isinf(f16_to_f32(*d))) return -1;
    for (int i = 0; i < QK; i++) q[i] = (uint8_t)((int)qb[i] + 8);
    return 0;
}

/* Q4_K, step 1: the step s >= 0 and offset mn >= 0 (w = s q - mn, q in [0, 15]) of one
 * sub-block x[32]. The range [min(0, min x), max x] is cut into nmax steps for a few nmax
 * around 15; for each, x is rounded to q and the line x = s q + b refitted by least
 * squares (with b kept <= 0: the fit through the origin, s = Sxq / Sqq, when b would be
 * positive), and the candidate with the least squared error wins. x holds finite values;
 * returns -1 if its range or the sums overflow. */
static int q4_k_fit(const float *x, float *s_out, float *mn_out) {
    static const float nmax[] = {14.0f, 14.25f, 14.5f, 14.75f, 15.0f, 15.25f, 15.5f, 15.75f, 16.0f};
    float lo[8], hi[8];
    for (int k = 0; k < 8; k++) lo[k] = hi[k] = x[k];
    for (int j = 8; j < QK; j += 8)
        for (int k = 0; k < 8; k++) {
            lo[k] = x[j + k] < lo[k] ? x[j + k] : lo[k];
            hi[k] = x[j + k] > hi[k] ? x[j + k] : hi[k];
        }
    for (int k = 1; k < 8; k++) {
        lo[0] = lo[k] < lo[0] ? lo[k] : lo[0];
        hi[0] = hi[k] > hi[0] ? hi[k] : hi[0];
    }
    const float xmin = lo[0] < 0 ? lo[0] : 0.0f, range = hi[0] - xmin;
    if (!(range <= 3.4e38f)) return -1;
    *s_out = 0;
    *mn_out = 0.0f - xmin;            /* a constant block (zero, or one value <= 0): exact */
    if (!(range >= 1e-30f)) return 0;
    float best = INFINITY;
    for (size_t c = 0; c < sizeof nmax / sizeof nmax[0]; c++) {
        const float is = nmax[c] / range;
        float qc[QK], sq[8] = {0}, sqq[8] = {0}, sx[8] = {0}, sxq[8] = {0};
        for (int j = 0; j < QK; j += 8)
            for (int k = 0; k < 8; k++) {
                float v = x[j + k] - xmin;
                v = v * is;
                v = (v + RND_MAGIC) - RND_MAGIC;
                v = v > 15.0f ? 15.0f : v < 0.0f ? 0.0f : v;
                qc[j + k] = v;
                float xv = x[j + k] * v;
                sq[k] += v;
                sqq[k] += v * v;      /* small integers: exact */
                sx[k] += x[j + k];
                sxq[k] += xv;
            }
        for (int k = 1; k < 8; k++) {
            sq[0] += sq[k];
            sqq[0] += sqq[k];
            sx[0] += sx[k];
            sxq[0] += sxq[k];
        }
        const float n = (float)QK, det = n * sqq[0] - sq[0] * sq[0]; /* exact: integers below 2^18 */
        float s = 0, b = sx[0] / n;   /* all q equal: the mean */
        if (det > 0) {
            float t1 = n * sxq[0], t2 = sq[0] * sx[0], t3 = sqq[0] * sx[0], t4 = sq[0] * sxq[0];
            s = (t1 - t2) / det;
            b = (t3 - t4) / det;
        }
        if (b > 0) {
            b = 0;
            s = sqq[0] > 0 ? sxq[0] / sqq[0] : 0.0f;
        }
        if (!(s >= 0 && s <= 3.4e38f && b >= -3.4e38f)) continue;
        float e[8] = {0};
        for (int j = 0; j < QK; j += 8)
            for (int k = 0; k < 8; k++) {
                float v = qc[j + k] * s;
                v = v + b;
                v = v - x[j + k];
                float v2 = v * v;
                e[k] += v2;
            }
        for (int k = 1; k < 8; k++) e[0] += e[k];
        if (e[0] < best) {
            best = e[0];
            *s_out = s;
            *mn_out = 0.0f - b;
        }
    }
    return best < INFINITY ? 0 : -1; /* none: the sums overflowed (values near the float range) */
}

/* Q4_K of one row's super-block x[256]: halves d and dmin, sc[8] and m[8] in [0, 63],
 * q[256] in [0, 15]. Each sub-block is fitted (q4_k_fit); d and dmin are the largest step
 * and offset over 63; each sub-block then takes, of the 3 x 3 pairs (sc, m) around
 * (s / d, mn / dmin) with d and dmin as stored, the one whose re-rounded quants have the
 * least squared error. Returns -1 if x holds a non-finite value or d or dmin is beyond
 * the range of a half. */
static int q4_k_superblock(const float *x, uint16_t *d, uint16_t *dmin, uint8_t *sc, uint8_t *mq, uint8_t *q) {
    float s[QKS], mn[QKS], smax = 0, mmax = 0;
    for (int j = 0; j < QKS; j++) {
        if (!(absmax32(x + j * QK) <= 3.4e38f) || q4_k_fit(x + j * QK, &s[j], &mn[j])) return -1;
        smax = s[j] > smax ? s[j] : smax;
        mmax = mn[j] > mmax ? mn[j] : mmax;
    }
    *d = f32_to_f16(smax / 63.0f);
    *dmin = f32_to_f16(mmax / 63.0f);
    const float D = f16_to_f32(*d), M = f16_to_f32(*dmin);
    if (isinf(D) || isinf(M)) return -1;
    for (int j = 0; j < QKS; j++) {
        const float *xb = x + j * QK;
        float c0 = D > 0 ? s[j] / D : 0.0f, m0 = M > 0 ? mn[j] / M : 0.0f;
        c0 = (c0 + RND_MAGIC) - RND_MAGIC;
        m0 = (m0 + RND_MAGIC) - RND_MAGIC;
        c0 = c0 > 63.0f ? 63.0f : c0;
        m0 = m0 > 63.0f ? 63.0f : m0;
        static const float step[3] = {0.0f, -1.0f, 1.0f}; /* the rounded pair first: it wins ties */
        float best = INFINITY;
        for (int a = 0; a < 3; a++)
            for (int b = 0; b < 3; b++) {
                const float cs = c0 + step[a], cm = m0 + step[b];
                if (cs < 0 || cs > 63.0f || cm < 0 || cm > 63.0f) continue;
                const float S = D * cs, N = M * cm, iS = S > 0 ? 1.0f / S : 0.0f; /* S, N exact */
                float qc[QK], e[8] = {0};
                for (int i = 0; i < QK; i += 8)
                    for (int k = 0; k < 8; k++) {
                        float v = xb[i + k] + N;
                        v = v * iS;
                        v = (v + RND_MAGIC) - RND_MAGIC;
                        v = v > 15.0f ? 15.0f : v < 0.0f ? 0.0f : v;
                        qc[i + k] = v;
                        float w = S * v;
                        w = w - N;
                        w = w - xb[i + k];
                        float w2 = w * w;
                        e[k] += w2;
                    }
                for (int k = 1; k < 8; k++) e[0] += e[k];
                if (e[0] < best) {
                    best = e[0];
                    sc[j] = (uint8_t)(int)cs;
                    mq[j] = (uint8_t)(int)cm;
                    for (int i = 0; i < QK; i++) q[j * QK + i] = (uint8_t)(int)qc[i];
                }
            }
    }
    return 0;
}

/* Sub-block j's 6-bit scale and min for row r of a Q4_K tile t. */
static void q4k_scale_min(const uint8_t *t, int j, int r, int *sc, int *m) {
    const int lo = t[64 + 16 * j + r], hi = t[192 + 16 * (j % 4) + r] >> (4 * (j / 4));
    *sc = (lo & 15) | (hi & 3) << 4;
    *m = lo >> 4 | (hi & 12) << 2;
}

static float half_at(const uint8_t *p, int i) { return f16_to_f32((uint16_t)(p[2 * i] | p[2 * i + 1] << 8)); }

/* A Q4_K row group: x holds 16 rows of cols_p floats (cols_p a multiple of 32); the last
 * tile gets only the sub-blocks that have columns. */
static int quant_group_q4k(const float *x, size_t cols_p, uint8_t *out) {
    for (size_t sb = 0; sb * QKK < cols_p; sb++) {
        uint8_t *t = out + sb * Q4K_TILE;
        const size_t n = cols_p - sb * QKK < QKK ? cols_p - sb * QKK : QKK;
        memset(t + 192, 0, 64);
        for (int r = 0; r < QR; r++) {
            uint16_t d, dmin;
            uint8_t sc[QKS], m[QKS], q[QKK];
            float xs[QKK] = {0};
            memcpy(xs, x + (size_t)r * cols_p + sb * QKK, n * sizeof(float));
            if (q4_k_superblock(xs, &d, &dmin, sc, m, q)) return -1;
            t[2 * r] = (uint8_t)(d & 0xff);
            t[2 * r + 1] = (uint8_t)(d >> 8);
            t[32 + 2 * r] = (uint8_t)(dmin & 0xff);
            t[32 + 2 * r + 1] = (uint8_t)(dmin >> 8);
            for (int j = 0; j < QKS; j++) {
                t[64 + 16 * j + r] = (uint8_t)((sc[j] & 15) | (m[j] & 15) << 4);
                t[192 + 16 * (j % 4) + r] |= (uint8_t)(((sc[j] >> 4) | (m[j] >> 4) << 2) << (4 * (j / 4)));
                if ((size_t)j * QK >= n) continue; /* zero columns: sc = m = 0, no quants stored */
                uint8_t *p = t + 256 + 256 * j + 4 * r;
                for (int c = 0; c < QK / 2; c++) p[64 * (c / 4) + c % 4] = (uint8_t)(q[QK * j + c] | q[QK * j + c + 16] << 4);
            }
        }
    }
    return 0;
}

/* Quantizes one row group: x holds 16 rows of cols_p floats (cols_p = nb * 32, rows and
 * columns past the matrix already zero) and out receives its tiles (qgroup_bytes). Returns
 * -1 on a value that cannot be quantized. */
static int quant_group(int dt, const float *x, size_t cols_p, uint8_t *out) {
    if (dt == DT_Q4_K) return quant_group_q4k(x, cols_p, out);
    const size_t nb = cols_p / QK, tile = qtile_bytes(dt);
    for (size_t b = 0; b < nb; b++) {
        uint8_t *t = out + b * tile;
        for (int r = 0; r < QR; r++) {
            const float *xb = x + (size_t)r * cols_p + b * QK;
            uint16_t d;
            uint8_t q[QK];
            if ((dt == DT_Q8_0 ? q8_0_block(xb, &d, (int8_t *)q) : q4_0_block(xb, &d, q))) return -1;
            t[2 * r] = (uint8_t)(d & 0xff);
            t[2 * r + 1] = (uint8_t)(d >> 8);
            uint8_t *p = t + 32 + 4 * r;
            if (dt == DT_Q8_0)
                for (int c = 0; c < QK; c++) p[64 * (c / 4) + c % 4] = q[c];
            else
                for (int c = 0; c < QK / 2; c++) p[64 * (c / 4) + c % 4] = (uint8_t)(q[c] | q[c + 16] << 4);
        }
    }
    return 0;
}

/* Dequantizes row r (of a matrix with `cols` columns) from quantized data: the reference
 * meaning of the formats above. */
static void qrow_dequant(int dt, const uint8_t *data, size_t cols, size_t r, float *out) {
    if (dt == DT_Q4_K) { /* w = (d * sc) * q - dmin * m */
        const size_t ns = (cols + QKK - 1) / QKK;
        const int lr = (int)(r % QR);
        const uint8_t *g = data + (r / QR) * qgroup_bytes(DT_Q4_K, cols);
        for (size_t sb = 0; sb < ns; sb++) {
            const uint8_t *t = g + sb * Q4K_TILE;
            const float d = half_at(t, lr), dmin = half_at(t + 32, lr);
            for (int j = 0; j < QKS && sb * QKK + (size_t)j * QK < cols; j++) {
                const size_t c0 = sb * QKK + (size_t)j * QK, n = cols - c0 < QK ? cols - c0 : QK;
                int sc, m;
                q4k_scale_min(t, j, lr, &sc, &m);
                const float ds = d * (float)sc, dm = dmin * (float)m;
                const uint8_t *p = t + 256 + 256 * j + 4 * lr;
                for (size_t c = 0; c < n; c++) {
                    uint8_t v = p[64 * ((c % 16) / 4) + c % 4];
                    float w = ds * (float)(c < 16 ? v & 15 : v >> 4);
                    out[c0 + c] = w - dm;
                }
            }
        }
        return;
    }
    const size_t nb = (cols + QK - 1) / QK, tile = qtile_bytes(dt), lr = r % QR;
    const uint8_t *g = data + (r / QR) * nb * tile;
    for (size_t b = 0; b < nb; b++) {
        const uint8_t *t = g + b * tile, *p = t + 32 + 4 * lr;
        float d = f16_to_f32((uint16_t)(t[2 * lr] | t[2 * lr + 1] << 8));
        size_t n = cols - b * QK < QK ? cols - b * QK : QK;
        float *o = out + b * QK;
        if (dt == DT_Q8_0)
            for (size_t c = 0; c < n; c++) o[c] = d * (float)(int8_t)p[64 * (c / 4) + c % 4];
        else
            for (size_t c = 0; c < n; c++) {
                uint8_t v = p[64 * ((c % 16) / 4) + c % 4];
                o[c] = d * (float)((c < 16 ? v & 15 : v >> 4) - 8);
            }
    }
}

/* ============================================================================
 * 2. Config (config.json), HF key names
 * ========================================================================== */

enum { SCORE_SOFTMAX, SCORE_SIGMOID };
enum { TOPK_GREEDY, TOPK_GROUP_LIMITED, TOPK_NOAUX_TC };

typedef struct {
    int hidden_size;              /* D */
    int num_hidden_layers;        /* L, not counting MTP layers */
    int num_attention_heads;      /* H */
    int q_lora_rank;              /* 0 when null: plain q_proj */
    int kv_lora_rank;             /* R */
    int qk_nope_head_dim;         /* nope */
    int qk_rope_head_dim;         /* rope */
    int v_head_dim;               /* v */
    int intermediate_size;        /* dense MLP width */
    int moe_intermediate_size;    /* width of one expert */
    int n_routed_experts;         /* E, 0 when null: no MoE */
    int n_shared_experts;         /* shared experts, one MLP of width moe_inter * this */
    int num_experts_per_tok;      /* k */
    int first_k_dense_replace;    /* layers < this are dense */
    int moe_layer_freq;           /* MoE when layer % freq == 0 (after the dense ones) */
    int n_group, topk_group;      /* group-limited routing */
    int norm_topk_prob;           /* renormalize chosen weights */
    int scoring_func;             /* SCORE_* */
    int topk_method;              /* TOPK_* */
    float routed_scaling_factor;
    float rms_norm_eps;
    double rope_theta;
    int yarn;                     /* rope_scaling is yarn */
    double yarn_factor, yarn_beta_fast, yarn_beta_slow, yarn_mscale, yarn_mscale_all_dim;
    int yarn_original_max_pos;
    int vocab_size;
    int bos_token_id, eos_token_id;
    int max_position_embeddings;
    int num_nextn_predict_layers;
    int tie_word_embeddings;
    int fp8_block_rows, fp8_block_cols; /* quantization_config.weight_block_size */
} Config;

/* Reads an integer field. Missing: *out = def, or an error when def < -1 (required).
 * allow_null: a JSON null gives 0 (q_lora_rank, n_routed_experts). */
static int cfg_int(const cJSON *root, const char *key, int *out, long def, long lo, long hi,
                   int allow_null, char *err, size_t errlen) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!v) {
        if (def < -1) { seterr(err, errlen, "config.json: %s: required field missing", key); return DSEEK_EFORMAT; }
        *out = (int)def;
        return 0;
    }
    if (cJSON_IsNull(v) && allow_null) { *out = 0; return 0; }
    if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) || v->valuedouble < lo ||
        v->valuedouble > hi) {
        seterr(err, errlen, "config.json: %s: expected an integer in [%ld, %ld]", key, lo, hi);
        return DSEEK_EFORMAT;
    }
    *out = (int)v->valuedouble;
    return 0;
}

static int cfg_num(const cJSON *root, const char *key, double *out, double def, double lo,
                   double hi, char *err, size_t errlen) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!v) { *out = def; return 0; }
    if (!cJSON_IsNumber(v) || !(v->valuedouble >= lo && v->valuedouble <= hi)) {
        seterr(err, errlen, "config.json: %s: expected a number in [%g, %g]", key, lo, hi);
        return DSEEK_EFORMAT;
    }
    *out = v->valuedouble;
    return 0;
}

static int cfg_bool(const cJSON *root, const char *key, int *out, int def, char *err, size_t errlen) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!v || cJSON_IsNull(v)) { *out = def; return 0; }
    if (!cJSON_IsBool(v)) { seterr(err, errlen, "config.json: %s: expected true or false", key); return DSEEK_EFORMAT; }
    *out = cJSON_IsTrue(v);
    return 0;
}

/* Reads a string field into one of `names` (returns its index in *out). */
static int cfg_enum(const cJSON *root, const char *key, int *out, int def, const char *const *names,
                    int n, char *err, size_t errlen) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!v || cJSON_IsNull(v)) { *out = def; return 0; }
    if (!cJSON_IsString(v)) { seterr(err, errlen, "config.json: %s: expected a string", key); return DSEEK_EFORMAT; }
    for (int i = 0; i < n; i++)
        if (!strcmp(v->valuestring, names[i])) { *out = i; return 0; }
    seterr(err, errlen, "config.json: %s: unsupported value \"%.64s\"", key, v->valuestring);
    return DSEEK_EUNSUP;
}

static char *read_file(const char *path, size_t *len, size_t maxlen) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *buf = NULL;
    size_t cap = 0, n = 0;
    for (;;) {
        if (n + 65536 + 1 > cap) {
            cap = (n + 65536 + 1) * 2;
            char *nb = realloc(buf, cap);
            if (!nb) { free(buf); fclose(f); return NULL; }
            buf = nb;
        }
        size_t r = fread(buf + n, 1, cap - n - 1, f);
        n += r;
        if (r == 0 || n > maxlen) break;
    }
    fclose(f);
    if (n > maxlen) { free(buf); errno = EFBIG; return NULL; }
    buf[n] = 0;
    if (len) *len = n;
    return buf;
}

static int config_parse(const char *dir, Config *c, char *err, size_t errlen) {
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", dir);
    char *text = read_file(path, NULL, 16u << 20);
    if (!text) { seterr(err, errlen, "%s: cannot read: %s", path, strerror(errno)); return DSEEK_EIO; }
    cJSON *root = cJSON_Parse(text);
    free(text);
    if (!root || !cJSON_IsObject(root)) {
        seterr(err, errlen, "%s: not a JSON object", path);
        cJSON_Delete(root);
        return DSEEK_EFORMAT;
    }
    memset(c, 0, sizeof *c);
    int rc = 0;
    const int BIG = 1 << 20;
#define CFG_INT(key, def, lo, hi, nul) if (!rc) rc = cfg_int(root, #key, &c->key, def, lo, hi, nul, err, errlen)
    CFG_INT(hidden_size, -2, 1, 65536, 0);
    CFG_INT(num_hidden_layers, -2, 1, 4096, 0);
    CFG_INT(num_attention_heads, -2, 1, 4096, 0);
    CFG_INT(q_lora_rank, 0, 1, 65536, 1);
    CFG_INT(kv_lora_rank, -2, 1, 65536, 0);
    CFG_INT(qk_nope_head_dim, -2, 0, 4096, 0);
    CFG_INT(qk_rope_head_dim, -2, 2, 4096, 0);
    CFG_INT(v_head_dim, -2, 1, 4096, 0);
    CFG_INT(intermediate_size, -2, 1, BIG, 0);
    CFG_INT(moe_intermediate_size, 0, 1, BIG, 0);
    CFG_INT(n_routed_experts, 0, 1, 65536, 1);
    CFG_INT(n_shared_experts, 0, 0, 1024, 1);
    CFG_INT(num_experts_per_tok, 0, 1, 65536, 1);
    CFG_INT(first_k_dense_replace, 0, 0, 4096, 0);
    CFG_INT(moe_layer_freq, 1, 1, 4096, 0);
    CFG_INT(n_group, 1, 1, 65536, 1);
    CFG_INT(topk_group, 1, 1, 65536, 1);
    CFG_INT(vocab_size, -2, 1, 1 << 24, 0);
    CFG_INT(bos_token_id, 0, 0, 1 << 24, 1);
    CFG_INT(eos_token_id, 1, 0, 1 << 24, 1);
    CFG_INT(max_position_embeddings, 4096, 1, 1 << 30, 0);
    CFG_INT(num_nextn_predict_layers, 0, 0, 16, 1);
#undef CFG_INT
    static const char *const scorers[] = {"softmax", "sigmoid"};
    static const char *const methods[] = {"greedy", "group_limited_greedy", "noaux_tc"};
    if (!rc) rc = cfg_enum(root, "scoring_func", &c->scoring_func, SCORE_SOFTMAX, scorers, 2, err, errlen);
    if (!rc) rc = cfg_enum(root, "topk_method", &c->topk_method, TOPK_GREEDY, methods, 3, err, errlen);
    if (!rc) rc = cfg_bool(root, "norm_topk_prob", &c->norm_topk_prob, 0, err, errlen);
    if (!rc) rc = cfg_bool(root, "tie_word_embeddings", &c->tie_word_embeddings, 0, err, errlen);
    double d;
    if (!rc && !(rc = cfg_num(root, "routed_scaling_factor", &d, 1.0, 0, 1e6, err, errlen))) c->routed_scaling_factor = (float)d;
    if (!rc && !(rc = cfg_num(root, "rms_norm_eps", &d, 1e-6, 0, 1, err, errlen))) c->rms_norm_eps = (float)d;
    if (!rc) rc = cfg_num(root, "rope_theta", &c->rope_theta, 10000.0, 1.0, 1e12, err, errlen);

    /* things dseek refuses rather than computes wrongly */
    int b = 0;
    if (!rc && !(rc = cfg_bool(root, "attention_bias", &b, 0, err, errlen)) && b) {
        seterr(err, errlen, "config.json: attention_bias: true is not supported");
        rc = DSEEK_EUNSUP;
    }
    const cJSON *act = cJSON_GetObjectItemCaseSensitive(root, "hidden_act");
    if (!rc && act && !(cJSON_IsString(act) && !strcmp(act->valuestring, "silu"))) {
        seterr(err, errlen, "config.json: hidden_act: only \"silu\" is supported");
        rc = DSEEK_EUNSUP;
    }
    if (!rc && c->n_routed_experts) {
        if (!c->moe_intermediate_size) { seterr(err, errlen, "config.json: moe_intermediate_size: required with n_routed_experts"); rc = DSEEK_EFORMAT; }
        else if (c->num_experts_per_tok < 1 || c->num_experts_per_tok > c->n_routed_experts) { seterr(err, errlen, "config.json: num_experts_per_tok: must be in [1, n_routed_experts]"); rc = DSEEK_EFORMAT; }
        else if (c->topk_method != TOPK_GREEDY && (c->n_group < 1 || c->n_routed_experts % c->n_group)) { seterr(err, errlen, "config.json: n_group: must divide n_routed_experts"); rc = DSEEK_EFORMAT; }
        else if (c->topk_method != TOPK_GREEDY && (c->topk_group < 1 || c->topk_group > c->n_group)) { seterr(err, errlen, "config.json: topk_group: must be in [1, n_group]"); rc = DSEEK_EFORMAT; }
        else if (c->topk_method != TOPK_GREEDY && (long)c->topk_group * (c->n_routed_experts / c->n_group) < c->num_experts_per_tok) { seterr(err, errlen, "config.json: topk_group: the kept groups hold fewer than num_experts_per_tok experts"); rc = DSEEK_EFORMAT; }
        else if (c->topk_method == TOPK_NOAUX_TC && c->n_routed_experts / c->n_group < 2) { seterr(err, errlen, "config.json: n_group: noaux_tc needs at least 2 experts per group"); rc = DSEEK_EFORMAT; }
    }
    if (!rc && c->qk_rope_head_dim % 2) { seterr(err, errlen, "config.json: qk_rope_head_dim: must be even"); rc = DSEEK_EFORMAT; }

    /* rope_scaling: null or yarn */
    const cJSON *rs = cJSON_GetObjectItemCaseSensitive(root, "rope_scaling");
    if (!rc && rs && !cJSON_IsNull(rs)) {
        const cJSON *ty = cJSON_GetObjectItemCaseSensitive(rs, "type");
        if (!ty) ty = cJSON_GetObjectItemCaseSensitive(rs, "rope_type");
        if (!cJSON_IsObject(rs) || !cJSON_IsString(ty)) {
            seterr(err, errlen, "config.json: rope_scaling: expected null or an object with a \"type\"");
            rc = DSEEK_EFORMAT;
        } else if (strcmp(ty->valuestring, "yarn")) {
            seterr(err, errlen, "config.json: rope_scaling.type: \"%.32s\" is not supported (only yarn)", ty->valuestring);
            rc = DSEEK_EUNSUP;
        } else {
            c->yarn = 1;
            char e2[256] = "";
            int orig = 0;
            rc = cfg_num(rs, "factor", &c->yarn_factor, 1.0, 1e-3, 1e6, e2, sizeof e2);
            if (!rc) rc = cfg_num(rs, "beta_fast", &c->yarn_beta_fast, 32, 1e-6, 1e6, e2, sizeof e2);
            if (!rc) rc = cfg_num(rs, "beta_slow", &c->yarn_beta_slow, 1, 1e-6, 1e6, e2, sizeof e2);
            if (!rc) rc = cfg_num(rs, "mscale", &c->yarn_mscale, 1, 0, 1e6, e2, sizeof e2);
            if (!rc) rc = cfg_num(rs, "mscale_all_dim", &c->yarn_mscale_all_dim, 0, 0, 1e6, e2, sizeof e2);
            if (!rc) rc = cfg_int(rs, "original_max_position_embeddings", &orig, 4096, 1, 1 << 30, 0, e2, sizeof e2);
            c->yarn_original_max_pos = orig;
            if (rc) seterr(err, errlen, "config.json: rope_scaling.%s", e2 + strlen("config.json: "));
            else if (c->rope_theta <= 1.0) { /* yarn divides by ln(rope_theta) */
                seterr(err, errlen, "config.json: rope_theta: must be greater than 1 with yarn rope_scaling");
                rc = DSEEK_EFORMAT;
            }
        }
    }

    /* quantization_config: only DeepSeek's fp8 block format */
    c->fp8_block_rows = c->fp8_block_cols = 128;
    const cJSON *qc = cJSON_GetObjectItemCaseSensitive(root, "quantization_config");
    if (!rc && qc && !cJSON_IsNull(qc)) {
        const cJSON *qm = cJSON_GetObjectItemCaseSensitive(qc, "quant_method");
        const cJSON *bs = cJSON_GetObjectItemCaseSensitive(qc, "weight_block_size");
        const cJSON *fmt = cJSON_GetObjectItemCaseSensitive(qc, "fmt");
        if (!cJSON_IsObject(qc)) {
            seterr(err, errlen, "config.json: quantization_config: expected null or an object");
            rc = DSEEK_EFORMAT;
        } else if (!cJSON_IsString(qm) || strcmp(qm->valuestring, "fp8")) {
            seterr(err, errlen, "config.json: quantization_config.quant_method: only \"fp8\" is supported");
            rc = DSEEK_EUNSUP;
        } else if (fmt && !(cJSON_IsString(fmt) && !strcmp(fmt->valuestring, "e4m3"))) {
            seterr(err, errlen, "config.json: quantization_config.fmt: only \"e4m3\" is supported");
            rc = DSEEK_EUNSUP;
        } else if (bs) {
            if (!cJSON_IsArray(bs) || cJSON_GetArraySize(bs) != 2 || !cJSON_IsNumber(cJSON_GetArrayItem(bs, 0)) ||
                !cJSON_IsNumber(cJSON_GetArrayItem(bs, 1)) || cJSON_GetArrayItem(bs, 0)->valuedouble < 1 ||
                cJSON_GetArrayItem(bs, 1)->valuedouble < 1 || cJSON_GetArrayItem(bs, 0)->valuedouble > 65536 ||
                cJSON_GetArrayItem(bs, 1)->valuedouble > 65536) {
                seterr(err, errlen, "config.json: quantization_config.weight_block_size: expected [rows, cols]");
                rc = DSEEK_EFORMAT;
            } else {
                c->fp8_block_rows = (int)cJSON_GetArrayItem(bs, 0)->valuedouble;
                c->fp8_block_cols = (int)cJSON_GetArrayItem(bs, 1)->valuedouble;
            }
        }
    }
    cJSON_Delete(root);
    return rc;
}

/* ============================================================================
 * 3. Safetensors files and the tensor table
 * ========================================================================== */


typedef struct {
    char *name;               /* tensor name (owned) */
    int file;                 /* index into Model.files */
    int dtype;                /* DT_* */
    int ndim;
    uint64_t shape[4];
    const uint8_t *data;      /* first byte inside the file's mapping */
    size_t nbytes;
} TensorEntry;

typedef struct {
    char *path;               /* for messages */
    uint8_t *map;             /* whole file, read-only (mmap of the file, or of anonymous memory) */
    size_t size;
    int load, lock;           /* how to bring it in: DSEEK_LOAD_*, mlock */
} MappedFile;

/* Open-addressing hash from name to TensorEntry index. */
typedef struct {
    TensorEntry *v;           /* entries */
    size_t n, cap;
    int *slots;               /* index+1, 0 = empty */
    size_t nslots;
} TensorTable;

static uint64_t hash_str(const char *s) {
    uint64_t h = 1469598103934665603ull;
    while (*s) h = (h ^ (uint8_t)*s++) * 1099511628211ull;
    return h;
}

static TensorEntry *table_get(const TensorTable *t, const char *name) {
    if (!t->nslots) return NULL;
    for (size_t i = hash_str(name) & (t->nslots - 1);; i = (i + 1) & (t->nslots - 1)) {
        int s = t->slots[i];
        if (!s) return NULL;
        if (!strcmp(t->v[s - 1].name, name)) return &t->v[s - 1];
    }
}

static int table_rehash(TensorTable *t, size_t nslots) {
    int *slots = calloc(nslots, sizeof(int));
    if (!slots) return DSEEK_ENOMEM;
    for (size_t k = 0; k < t->n; k++) {
        size_t i = hash_str(t->v[k].name) & (nslots - 1);
        while (slots[i]) i = (i + 1) & (nslots - 1);
        slots[i] = (int)k + 1;
    }
    free(t->slots);
    t->slots = slots;
    t->nslots = nslots;
    return 0;
}

/* Adds an entry (takes ownership of e->name). Returns 1 if the name already exists. */
static int table_add(TensorTable *t, TensorEntry *e) {
    if (table_get(t, e->name)) return 1;
    if (t->n == t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 1024;
        TensorEntry *v = realloc(t->v, cap * sizeof *v);
        if (!v) return DSEEK_ENOMEM;
        t->v = v;
        t->cap = cap;
    }
    t->v[t->n++] = *e;
    if (t->n * 2 > t->nslots) {
        if (table_rehash(t, t->nslots ? t->nslots * 2 : 2048)) { t->n--; return DSEEK_ENOMEM; }
    } else {
        size_t i = hash_str(e->name) & (t->nslots - 1);
        while (t->slots[i]) i = (i + 1) & (t->nslots - 1);
        t->slots[i] = (int)t->n;
    }
    return 0;
}

static void table_free(TensorTable *t) {
    for (size_t i = 0; i < t->n; i++) free(t->v[i].name);
    free(t->v);
    free(t->slots);
    memset(t, 0, sizeof *t);
}

static int dtype_parse(const char *s, int *dt, size_t *size) {
    static const struct { const char *n; int dt; size_t sz; } tbl[] = {
        {"F32", DT_F32, 4}, {"BF16", DT_BF16, 2}, {"F16", DT_F16, 2}, {"F8_E4M3", DT_F8, 1},
        {"F64", DT_OTHER, 8}, {"I64", DT_OTHER, 8}, {"I32", DT_OTHER, 4}, {"I16", DT_OTHER, 2},
        {"I8", DT_OTHER, 1}, {"U8", DT_OTHER, 1}, {"BOOL", DT_OTHER, 1}, {"F8_E5M2", DT_OTHER, 1},
        {"U16", DT_OTHER, 2}, {"U32", DT_OTHER, 4}, {"U64", DT_OTHER, 8},
    };
    for (size_t i = 0; i < sizeof tbl / sizeof tbl[0]; i++)
        if (!strcmp(s, tbl[i].n)) { *dt = tbl[i].dt; *size = tbl[i].sz; return 0; }
    return -1;
}

static const char *dtype_name(int dt) {
    static const char *const n[] = {"F32", "BF16", "F16", "F8_E4M3", "q8_0", "q4_0", "q4_k", "other"};
    return n[dt];
}

static int json_uint(const cJSON *v, uint64_t max, uint64_t *out) {
    if (!cJSON_IsNumber(v) || v->valuedouble < 0 || v->valuedouble > (double)max ||
        v->valuedouble != floor(v->valuedouble))
        return -1;
    *out = (uint64_t)v->valuedouble;
    return 0;
}

typedef struct { uint64_t b, e; const char *name; } Span;
static int span_cmp(const void *a, const void *b) {
    const Span *x = a, *y = b;
    return x->b < y->b ? -1 : x->b > y->b ? 1 : (x->e < y->e ? -1 : x->e > y->e);
}

/* The block types named in a dseek file's __metadata__ (section 11). */
static int qtype_parse(const char *s) {
    return !strcmp(s, "q8_0") ? DT_Q8_0 : !strcmp(s, "q4_0") ? DT_Q4_0 : !strcmp(s, "q4_k") ? DT_Q4_K : -1;
}

/* A dseek-quantized file (__metadata__ "format": "dseek") describes each quantized tensor
 * by a key "dseek.q.<tensor name>" with the value "<block type> [rows,cols]". Reads them
 * into qm (name -> dtype and logical shape); 0 when the file is not a dseek file. */
static int st_quant_meta(const char *path, const cJSON *h, TensorTable *qm, char *err, size_t errlen) {
    const cJSON *meta = cJSON_GetObjectItemCaseSensitive(h, "__metadata__");
    const cJSON *fmt = cJSON_GetObjectItemCaseSensitive(meta, "format");
    if (!cJSON_IsString(fmt) || strcmp(fmt->valuestring, "dseek")) return 0;
    const cJSON *ver = cJSON_GetObjectItemCaseSensitive(meta, "dseek.version");
    if (!cJSON_IsString(ver) || strcmp(ver->valuestring, "1")) {
        seterr(err, errlen, "%s: __metadata__: dseek.version %s%.20s%s is not supported (this dseek reads version 1)",
               path, cJSON_IsString(ver) ? "\"" : "", cJSON_IsString(ver) ? ver->valuestring : "missing",
               cJSON_IsString(ver) ? "\"" : "");
        return DSEEK_EFORMAT;
    }
    for (const cJSON *it = meta->child; it; it = it->next) {
        if (strncmp(it->string, "dseek.q.", 8)) continue;
        const char *name = it->string + 8;
        char ty[16];
        unsigned long long r, c;
        int end = 0;
        TensorEntry e = {0};
        if (!cJSON_IsString(it) || sscanf(it->valuestring, "%15s [%llu,%llu]%n", ty, &r, &c, &end) != 3 ||
            it->valuestring[end]) {
            seterr(err, errlen, "%s: %s: __metadata__ entry must read \"<block type> [rows,cols]\"", path, name);
            return DSEEK_EFORMAT;
        }
        if ((e.dtype = qtype_parse(ty)) < 0) {
            seterr(err, errlen, "%s: %s: unknown block type \"%s\" (dseek knows q8_0, q4_0, q4_k)", path, name, ty);
            return DSEEK_EFORMAT;
        }
        /* at most 2^50 elements, as for any safetensors shape: the byte count then fits */
        if (r < 1 || c < 1 || r > (1ull << 32) || c > (1ull << 32) || r > (1ull << 50) / c) {
            seterr(err, errlen, "%s: %s: logical shape [%llu,%llu] is not valid", path, name, r, c);
            return DSEEK_EFORMAT;
        }
        e.ndim = 2;
        e.shape[0] = r;
        e.shape[1] = c;
        if (!(e.name = strdup(name))) return DSEEK_ENOMEM;
        int rc = table_add(qm, &e);
        if (rc) {
            free(e.name);
            if (rc == 1) seterr(err, errlen, "%s: %s: described twice in __metadata__", path, name);
            return rc == 1 ? DSEEK_EFORMAT : rc;
        }
    }
    return 0;
}

/* Brings a weight file into memory as *map (size bytes, read-only use), per `load`:
 * POPULATE maps it and has the kernel read every page now, in large sequential reads (decode
 * then never waits on a page fault; the pages stay shared with the page cache); LAZY maps it
 * and lets pages come on first use; READ copies it into anonymous memory with transparent
 * huge pages asked for (fewer TLB misses over tens of GB of experts), refusing a file bigger
 * than RAM. Either way the result is released with munmap. */
static int map_file(int fd, const char *path, size_t size, int load, uint8_t **map, char *err, size_t errlen) {
    if (load != DSEEK_LOAD_READ) {
        int flags = MAP_PRIVATE | (load == DSEEK_LOAD_POPULATE ? MAP_POPULATE : 0);
        void *p = mmap(NULL, size, PROT_READ, flags, fd, 0);
        if (p == MAP_FAILED) { seterr(err, errlen, "%s: mmap failed: %s", path, strerror(errno)); return DSEEK_EIO; }
        if (load == DSEEK_LOAD_POPULATE) madvise(p, size, MADV_WILLNEED);
        *map = p;
        return 0;
    }
    long pages = sysconf(_SC_PHYS_PAGES), psz = sysconf(_SC_PAGESIZE);
    if (pages > 0 && psz > 0 && size / (size_t)psz >= (size_t)pages) {
        seterr(err, errlen, "%s: --no-mmap: the file (%zu bytes) is larger than this machine's memory", path, size);
        return DSEEK_ENOMEM;
    }
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) { seterr(err, errlen, "%s: --no-mmap: cannot allocate %zu bytes", path, size); return DSEEK_ENOMEM; }
#ifdef MADV_HUGEPAGE
    madvise(p, size, MADV_HUGEPAGE);
#endif
    const size_t chunk = (size_t)64 << 20;
    for (size_t off = 0; off < size;) {
        size_t want = size - off < chunk ? size - off : chunk;
        ssize_t got = pread(fd, (uint8_t *)p + off, want, (off_t)off);
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0) {
            seterr(err, errlen, "%s: read failed at byte %zu: %s", path, off, got < 0 ? strerror(errno) : "file shrank");
            munmap(p, size);
            return DSEEK_EIO;
        }
#ifdef POSIX_FADV_DONTNEED
        posix_fadvise(fd, (off_t)off, got, POSIX_FADV_DONTNEED); /* the copy is what stays */
#endif
        off += (size_t)got;
    }
    *map = p;
    return 0;
}

/* *size bytes of zeroed memory in huge pages where the kernel gives them: an anonymous map
 * aligned to 2 MiB, *size rounded up to a multiple of it, with MADV_HUGEPAGE; released with
 * munmap(p, *size). NULL if it cannot be had. For the latent cache: in 4 KiB pages a growing
 * context faults in a page every other token in every layer (10 us per layer and token of
 * a V2-Lite decode, a tenth of its attention). */
static void *huge_zalloc(size_t *size) {
    const size_t huge = (size_t)2 << 20;
    if (!*size || *size > SIZE_MAX - 2 * huge) return NULL;
    const size_t len = (*size + huge - 1) / huge * huge;
    uint8_t *p = mmap(NULL, len + huge, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return NULL;
    uint8_t *a = p + (huge - (uintptr_t)p % huge) % huge; /* the first 2 MiB boundary */
    if (a > p) munmap(p, (size_t)(a - p));
    if (p + len + huge > a + len) munmap(a + len, (size_t)(p + len + huge - (a + len)));
#ifdef MADV_HUGEPAGE
    madvise(a, len, MADV_HUGEPAGE);
#endif
    *size = len;
    return a;
}

/* Maps one safetensors file and adds its tensors to the table. `only` (may be NULL) is the
 * index's weight_map: when given, only tensors it assigns to this file are added. Every
 * header field is validated: lengths, dtypes, shapes, offsets within the data area, and
 * no two tensors overlapping. */
static int st_load(const char *path, const char *fname, int fidx, MappedFile *mf, TensorTable *t,
                   const cJSON *only, char *err, size_t errlen) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) { seterr(err, errlen, "%s: cannot open: %s", path, strerror(errno)); return DSEEK_EIO; }
    struct stat st;
    if (fstat(fd, &st) || !S_ISREG(st.st_mode)) {
        seterr(err, errlen, "%s: not a regular file", path);
        close(fd);
        return DSEEK_EIO;
    }
    size_t size = (size_t)st.st_size;
    if (size < 8) {
        seterr(err, errlen, "%s: truncated: %zu bytes, the header length alone needs 8", path, size);
        close(fd);
        return DSEEK_EFORMAT;
    }
    uint8_t *map;
    int mrc = map_file(fd, path, size, mf->load, &map, err, errlen);
    close(fd);
    if (mrc) return mrc;
    mf->path = strdup(path);
    mf->map = map;
    mf->size = size;
    if (!mf->path) return DSEEK_ENOMEM;
    if (mf->lock && mlock(map, size)) {
        seterr(err, errlen, "%s: --mlock: cannot lock %zu bytes in memory: %s (see ulimit -l)", path, size,
               strerror(errno));
        return DSEEK_EIO;
    }

    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = hlen << 8 | map[i];
    if (hlen > size - 8) {
        seterr(err, errlen, "%s: header length %llu runs past the end of the file (%zu bytes)", path,
               (unsigned long long)hlen, size);
        return DSEEK_EFORMAT;
    }
    if (hlen > (256u << 20)) {
        seterr(err, errlen, "%s: header length %llu is absurdly large", path, (unsigned long long)hlen);
        return DSEEK_EFORMAT;
    }
    cJSON *h = cJSON_ParseWithLength((const char *)map + 8, (size_t)hlen);
    if (!h || !cJSON_IsObject(h)) {
        seterr(err, errlen, "%s: header is not a JSON object", path);
        cJSON_Delete(h);
        return DSEEK_EFORMAT;
    }
    const uint8_t *base = map + 8 + hlen;
    uint64_t data_size = size - 8 - hlen;
    int n = cJSON_GetArraySize(h), ns = 0, rc = 0;
    TensorTable qm = {0}; /* quantized tensors described in __metadata__ */
    Span *spans = xcalloc((size_t)n, sizeof *spans);
    if (!spans) { cJSON_Delete(h); return DSEEK_ENOMEM; }
    rc = st_quant_meta(path, h, &qm, err, errlen);
    for (const cJSON *it = h->child; it && !rc; it = it->next) {
        const char *name = it->string;
        if (!strcmp(name, "__metadata__")) continue;
        const cJSON *dt = cJSON_GetObjectItemCaseSensitive(it, "dtype");
        const cJSON *sh = cJSON_GetObjectItemCaseSensitive(it, "shape");
        const cJSON *of = cJSON_GetObjectItemCaseSensitive(it, "data_offsets");
        TensorEntry e = {0};
        size_t esz = 0;
        uint64_t b, en, numel = 1;
        if (!cJSON_IsObject(it) || !cJSON_IsString(dt) || dtype_parse(dt->valuestring, &e.dtype, &esz)) {
            seterr(err, errlen, "%s: %s: missing or unknown dtype", path, name);
            rc = DSEEK_EFORMAT;
            break;
        }
        if (!cJSON_IsArray(sh) || cJSON_GetArraySize(sh) > 4) {
            seterr(err, errlen, "%s: %s: shape must be an array of at most 4 sizes", path, name);
            rc = DSEEK_EFORMAT;
            break;
        }
        e.ndim = cJSON_GetArraySize(sh);
        for (int d = 0; d < e.ndim && !rc; d++) {
            if (json_uint(cJSON_GetArrayItem(sh, d), 1ull << 40, &e.shape[d]) ||
                (e.shape[d] && numel > (1ull << 50) / e.shape[d])) {
                seterr(err, errlen, "%s: %s: shape[%d] is not a valid size", path, name, d);
                rc = DSEEK_EFORMAT;
            }
            numel *= e.shape[d];
        }
        if (rc) break;
        if (!cJSON_IsArray(of) || cJSON_GetArraySize(of) != 2 || json_uint(cJSON_GetArrayItem(of, 0), UINT64_MAX >> 12, &b) ||
            json_uint(cJSON_GetArrayItem(of, 1), UINT64_MAX >> 12, &en) || b > en) {
            seterr(err, errlen, "%s: %s: data_offsets must be [begin, end] with begin <= end", path, name);
            rc = DSEEK_EFORMAT;
            break;
        }
        if (en > data_size) {
            seterr(err, errlen, "%s: %s: data_offsets [%llu, %llu] run past the end of the data (%llu bytes)", path,
                   name, (unsigned long long)b, (unsigned long long)en, (unsigned long long)data_size);
            rc = DSEEK_EFORMAT;
            break;
        }
        if (en - b != numel * esz) {
            seterr(err, errlen, "%s: %s: data_offsets span %llu bytes but %s %s needs %llu", path, name,
                   (unsigned long long)(en - b), dt->valuestring, "of that shape", (unsigned long long)(numel * esz));
            rc = DSEEK_EFORMAT;
            break;
        }
        TensorEntry *q = table_get(&qm, name);
        if (q) { /* a quantized tensor: U8 bytes holding the blocks of a logical matrix */
            size_t want = round_up(qtensor_bytes(q->dtype, q->shape[0], q->shape[1]), 64);
            q->file = 1; /* seen */
            if (strcmp(dt->valuestring, "U8") || e.ndim != 1) {
                seterr(err, errlen, "%s: %s: a %s tensor must be stored as 1-D U8, not %s", path, name,
                       dtype_name(q->dtype), dt->valuestring);
                rc = DSEEK_EFORMAT;
                break;
            }
            if (en - b != want) {
                seterr(err, errlen, "%s: %s: %llu bytes, but %s [%llu,%llu] needs %zu", path, name,
                       (unsigned long long)(en - b), dtype_name(q->dtype), (unsigned long long)q->shape[0],
                       (unsigned long long)q->shape[1], want);
                rc = DSEEK_EFORMAT;
                break;
            }
            e.dtype = q->dtype;
            e.ndim = 2;
            e.shape[0] = q->shape[0];
            e.shape[1] = q->shape[1];
        }
        spans[ns++] = (Span){b, en, name};
        if (only) {
            const cJSON *f = cJSON_GetObjectItemCaseSensitive(only, name);
            if (!cJSON_IsString(f) || strcmp(f->valuestring, fname)) continue;
        }
        e.name = strdup(name);
        e.file = fidx;
        e.data = base + b;
        e.nbytes = (size_t)(en - b);
        if (!e.name) { rc = DSEEK_ENOMEM; break; }
        int r = table_add(t, &e);
        if (r == 1) {
            seterr(err, errlen, "%s: %s: tensor defined twice", path, name);
            free(e.name);
            rc = DSEEK_EFORMAT;
        } else if (r) {
            free(e.name);
            rc = r;
        }
    }
    if (!rc) { /* no two tensors may share bytes: each starts at or after the furthest end so far */
        qsort(spans, (size_t)ns, sizeof *spans, span_cmp);
        const Span *far = NULL;   /* the non-empty span reaching furthest */
        for (int i = 0; i < ns; i++) {
            if (spans[i].e == spans[i].b) continue; /* empty tensors own no bytes */
            if (far && spans[i].b < far->e) {
                seterr(err, errlen, "%s: %s: data_offsets overlap those of %s", path, spans[i].name, far->name);
                rc = DSEEK_EFORMAT;
                break;
            }
            if (!far || spans[i].e > far->e) far = &spans[i];
        }
    }
    for (size_t i = 0; i < qm.n && !rc; i++)
        if (!qm.v[i].file) {
            seterr(err, errlen, "%s: %s: described in __metadata__ but not in the header", path, qm.v[i].name);
            rc = DSEEK_EFORMAT;
        }
    table_free(&qm);
    free(spans);
    cJSON_Delete(h);
    return rc;
}

/* ============================================================================
 * 4. Weights: the model structs and binding tensors to them
 * ========================================================================== */

/* A weight matrix [rows = out, cols = in] in its stored dtype. */
typedef struct {
    const uint8_t *data;      /* rows*cols elements, row-major, in the mmap (or an aligned copy);
                                 Q8_0 / Q4_0: row groups of tiles (section 1) */
    const float *scale;       /* F8 only: scale_inv [ceil(rows/br), ceil(cols/bc)] */
    size_t rows, cols;
    int dtype;                /* DT_F32 / DT_BF16 / DT_F16 / DT_F8 / DT_Q8_0 / DT_Q4_0 / DT_Q4_K */
    int br, bc;               /* F8 block size */
    size_t scols;             /* columns of the scale grid */
} Tensor;

typedef struct {
    Tensor gate, up, down;    /* [I, D], [I, D], [D, I] */
} MLP;

typedef struct {
    int is_moe;
    float *attn_norm;         /* input_layernorm [D] */
    float *ffn_norm;          /* post_attention_layernorm [D] */
    Tensor q_proj;            /* [H*(nope+rope), D]        when q_lora_rank is null */
    Tensor q_a;               /* [q_lora, D]               otherwise */
    float *q_a_norm;          /* [q_lora] */
    Tensor q_b;               /* [H*(nope+rope), q_lora] */
    Tensor kv_a;              /* kv_a_proj_with_mqa [R+rope, D] */
    float *kv_a_norm;         /* [R] */
    Tensor kv_b;              /* [H*(nope+v), R]: per head W_UK (nope rows) then W_UV (v rows) */
    Tensor kb_t;              /* quantized kv_b only: W_UK of each head transposed, [H*R, nope] in
                                 Q8_0, made at load (build_kb_t); data NULL otherwise */
    Tensor kb_v;              /* with kb_t: the heads' W_UV rows of kv_b side by side, [H*v, R] in
                                 kv_b's type (build_kb_t) */
    Tensor o_proj;            /* [D, H*v] */
    MLP mlp;                  /* dense layers */
    float *router;            /* mlp.gate.weight [E, D], float32 */
    float *router_bias;       /* e_score_correction_bias [E] or NULL */
    MLP *experts;             /* [E] */
    MLP shared;               /* shared experts, width moe_inter * n_shared (absent if 0) */
    /* MTP layer only */
    Tensor embed;             /* its own embed_tokens [V, D] */
    float *enorm, *hnorm;     /* [D] */
    Tensor eh_proj;           /* [D, 2D] */
    float *head_norm;         /* shared_head.norm [D] */
    Tensor head;              /* shared_head.head [V, D] */
} Layer;

/* A huge-page region of memory the model owns (model_own): `used` of its `len` bytes taken. */
typedef struct {
    uint8_t *p;
    size_t len, used;
} OwnRegion;

struct dseek_model {
    char *dir;                /* the checkpoint folder, for messages */
    Config c;
    dseek_info info;
    MappedFile *files;
    int n_files;
    TensorTable tt;
    Tensor embed;             /* model.embed_tokens [V, D] */
    Layer *layers;            /* [L + n_mtp] */
    float *final_norm;        /* model.norm [D] */
    Tensor lm_head;           /* [V, D] */
    float *inv_freq;          /* RoPE inverse frequencies [rope/2] */
    float rope_mscale;        /* yarn factor on cos/sin */
    float softmax_scale;      /* attention score scale */
    void **owned;             /* small copies made at load (norms, router, misaligned tensors) */
    size_t n_owned, cap_owned;
    OwnRegion *regions;       /* huge-page regions of the big ones (model_own) */
    size_t n_regions, cap_regions;
    size_t shared_region;     /* 1 + index of the region small pieces go to now, 0 before the first */
    size_t bytes_fixed;       /* weight bytes a main forward reads besides routed experts */
    size_t bytes_expert;      /* bytes of one routed expert MLP */
    size_t bytes_mtp_fixed;   /* weight bytes an MTP step reads besides routed experts */
    size_t max_in;            /* largest input dim of any matmul */
    size_t max_inter;         /* largest MLP width */
    size_t moe_inter;         /* largest width of a routed or shared expert */
    int quant_to;             /* --quant: DT_Q8_0 / DT_Q4_0 / DT_Q4_K to quantize matrices at load, else 0 */
    int load, lock;           /* dseek_load_cfg's load and mlock */
    int progress;             /* print a progress bar while quantizing at load */
    size_t q_total, q_done;   /* source bytes to quantize at load, and done */
    double q_t0, q_last;      /* progress clock */
};

/* Memory the model owns until it is freed. Pieces of OWN_HUGE bytes or more (a --quant
 * load's quantized matrices, the absorbed W_UK^T, copies of misaligned tensors) come from
 * 2 MiB-aligned regions in huge pages, as the loaded weights do: in 4 KiB pages a decode
 * reads them 10-15% slower (8-layer V2-Lite quantized to Q8_0 at load, 2 threads, 60 against
 * 65-68 tok/s for the same weights from a quantized file). Regions of OWN_REGION bytes are
 * shared by the smaller of these pieces; a bigger piece gets a region of its own. */
enum { OWN_HUGE = 64 << 10, OWN_REGION = 32 << 20 };
/* A new region of at least `len` bytes, its first `used` of them taken. */
static uint8_t *own_region(dseek_model *m, size_t len, size_t used) {
    if (m->n_regions == m->cap_regions) {
        size_t cap = m->cap_regions ? m->cap_regions * 2 : 16;
        void *r = realloc(m->regions, cap * sizeof *m->regions);
        if (!r) return NULL;
        m->regions = r;
        m->cap_regions = cap;
    }
    uint8_t *p = huge_zalloc(&len);
    if (p) m->regions[m->n_regions++] = (OwnRegion){p, len, used};
    return p;
}

static void *model_own(dseek_model *m, size_t bytes) {
    if (bytes >= OWN_HUGE) {
        if (bytes > SIZE_MAX / 2) return NULL;
        const size_t need = round_up(bytes, 64);
        if (need > OWN_REGION / 2) return own_region(m, need, need);
        OwnRegion *r = m->shared_region ? &m->regions[m->shared_region - 1] : NULL;
        if (!r || r->len - r->used < need) {
            if (!own_region(m, OWN_REGION, 0)) return NULL;
            m->shared_region = m->n_regions;
            r = &m->regions[m->n_regions - 1];
        }
        r->used += need;
        return r->p + r->used - need;
    }
    if (m->n_owned == m->cap_owned) {
        size_t cap = m->cap_owned ? m->cap_owned * 2 : 256;
        void **o = realloc(m->owned, cap * sizeof *o);
        if (!o) return NULL;
        m->owned = o;
        m->cap_owned = cap;
    }
    void *p = NULL;
    if (posix_memalign(&p, 64, bytes ? bytes : 64)) return NULL;
    m->owned[m->n_owned++] = p;
    return p;
}

/* Looks a tensor up and checks dtype and shape. rows/cols: expected shape ([rows] for 1-D
 * when cols == 0). dtmask: accepted dtypes as a bit mask of 1 << DT_*. */
static int find_tensor(dseek_model *m, const char *name, int dtmask, size_t rows, size_t cols,
                       TensorEntry **out, char *err, size_t errlen) {
    TensorEntry *e = table_get(&m->tt, name);
    if (!e) { seterr(err, errlen, "%s: %s: tensor missing from the checkpoint", m->dir, name); return DSEEK_EFORMAT; }
    const char *f = m->files[e->file].path;
    int ok = cols ? (e->ndim == 2 && e->shape[0] == rows && e->shape[1] == cols) : (e->ndim == 1 && e->shape[0] == rows);
    if (!ok) {
        char got[96] = "[", want[64];
        for (int d = 0; d < e->ndim; d++)
            snprintf(got + strlen(got), sizeof got - strlen(got), "%s%llu", d ? "," : "", (unsigned long long)e->shape[d]);
        strcat(got, "]");
        if (cols) snprintf(want, sizeof want, "[%zu,%zu]", rows, cols);
        else snprintf(want, sizeof want, "[%zu]", rows);
        seterr(err, errlen, "%s: %s: shape %s, config.json needs %s", f, name, got, want);
        return DSEEK_EFORMAT;
    }
    if (!(dtmask & (1 << e->dtype))) {
        seterr(err, errlen, "%s: %s: dtype %s is not supported here", f, name,
               e->dtype == DT_OTHER ? "(integer or other)" : dtype_name(e->dtype));
        return DSEEK_EFORMAT;
    }
    *out = e;
    return 0;
}

static int quant_target(const char *name);
static double clock_s(void);
static int quantize_at_load(dseek_model *m, Tensor *t, const char *name, char *err, size_t errlen);
static size_t tensor_bytes(const Tensor *t);

/* Binds a 2-D weight. F8 weights also bind <name>_scale_inv. With --quant, a matrix that
 * quant_target names is quantized here, and its source pages are let go. */
static int bind_matrix(dseek_model *m, Tensor *t, const char *name, size_t rows, size_t cols, char *err, size_t errlen) {
    TensorEntry *e;
    int rc = find_tensor(m, name, 1 << DT_F32 | 1 << DT_BF16 | 1 << DT_F16 | 1 << DT_F8 | 1 << DT_Q8_0 | 1 << DT_Q4_0 | 1 << DT_Q4_K,
                         rows, cols, &e, err, errlen);
    if (rc) return rc;
    memset(t, 0, sizeof *t);
    t->rows = rows;
    t->cols = cols;
    t->dtype = e->dtype;
    t->data = e->data;
    size_t align = elem_bytes(e->dtype); /* (quantized blocks: 2, for their half scales) */
    if ((uintptr_t)t->data % align) { /* a misaligned tensor gets an aligned copy */
        void *p = model_own(m, e->nbytes);
        if (!p) return DSEEK_ENOMEM;
        memcpy(p, e->data, e->nbytes);
        t->data = p;
    }
    if (e->dtype == DT_F8) {
        char sname[600];
        snprintf(sname, sizeof sname, "%s_scale_inv", name);
        t->br = m->c.fp8_block_rows;
        t->bc = m->c.fp8_block_cols;
        size_t sr = (rows + (size_t)t->br - 1) / (size_t)t->br, sc = (cols + (size_t)t->bc - 1) / (size_t)t->bc;
        TensorEntry *s;
        if ((rc = find_tensor(m, sname, 1 << DT_F32, sr, sc, &s, err, errlen))) return rc;
        t->scale = (const float *)s->data;
        if ((uintptr_t)s->data % 4) {
            float *p = model_own(m, s->nbytes);
            if (!p) return DSEEK_ENOMEM;
            memcpy(p, s->data, s->nbytes);
            t->scale = p;
        }
        t->scols = sc;
    }
    size_t bytes = e->nbytes;
    if (m->quant_to && quant_target(name)) {
        if ((rc = quantize_at_load(m, t, name, err, errlen))) return rc;
        bytes = tensor_bytes(t);
    }
    if (cols > m->max_in) m->max_in = cols;
    m->info.n_params += rows * cols;
    m->info.weight_bytes += bytes;
    return 0;
}

/* Converts row r of t to float32. */
static void tensor_row(const Tensor *t, size_t r, float *out) {
    size_t n = t->cols;
    switch (t->dtype) {
    case DT_F32: memcpy(out, t->data + r * n * 4, n * 4); break;
    case DT_BF16: {
        const uint16_t *p = (const uint16_t *)t->data + r * n;
        for (size_t i = 0; i < n; i++) out[i] = bf16_to_f32(p[i]);
        break;
    }
    case DT_F16: {
        const uint16_t *p = (const uint16_t *)t->data + r * n;
        for (size_t i = 0; i < n; i++) out[i] = f16_to_f32(p[i]);
        break;
    }
    case DT_F8: {
        const uint8_t *p = t->data + r * n;
        const float *sc = t->scale + (r / (size_t)t->br) * t->scols;
        for (size_t j0 = 0, b = 0; j0 < n; j0 += (size_t)t->bc, b++) {
            size_t j1 = j0 + (size_t)t->bc < n ? j0 + (size_t)t->bc : n;
            float s = sc[b];
            for (size_t j = j0; j < j1; j++) out[j] = fp8_table[p[j]] * s;
        }
        break;
    }
    case DT_Q8_0:
    case DT_Q4_0:
    case DT_Q4_K: qrow_dequant(t->dtype, t->data, n, r, out); break;
    default: DS_ASSERT(0);
    }
}

/* Index of the first NaN or Inf in v[0..n), or -1. */
static long first_nonfinite(const float *v, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!isfinite(v[i])) return (long)i;
    return -1;
}

/* Refuses a float32 copy made at load that holds NaN or Inf (always on: these tensors
 * are small and already converted, so the check is free). */
static int check_copy(const dseek_model *m, const TensorEntry *e, const char *name, const float *v, size_t n,
                      char *err, size_t errlen) {
    long bad = first_nonfinite(v, n);
    if (bad < 0) return 0;
    seterr(err, errlen, "%s: %s: element %ld is %s (the weights must be finite)", m->files[e->file].path, name, bad,
           isnan(v[bad]) ? "NaN" : "Inf");
    return DSEEK_EFORMAT;
}

/* Dequantizes the nr rows of one row group (its tiles at g) into out[nr, cols]: the same
 * values as qrow_dequant row by row, a tile at a time, in the order the bytes lie. */
static void qgroup_dequant(int dt, const uint8_t *g, size_t cols, float *out, int nr) {
    if (dt == DT_Q4_K) {
        for (size_t sb = 0; sb * QKK < cols; sb++) {
            const uint8_t *t = g + sb * Q4K_TILE;
            for (int j = 0; j < QKS && sb * QKK + (size_t)j * QK < cols; j++) {
                const size_t c0 = sb * QKK + (size_t)j * QK, n = cols - c0 < QK ? cols - c0 : QK;
                const uint8_t *p = t + 256 + 256 * j;
                float v[QR][QK];
                for (int r = 0; r < QR; r++) {
                    int sc, m;
                    q4k_scale_min(t, j, r, &sc, &m);
                    const float ds = half_at(t, r) * (float)sc, dm = half_at(t + 32, r) * (float)m;
                    for (int k = 0; k < 4; k++)
                        for (int i = 0; i < 4; i++) {
                            uint8_t q = p[64 * k + 4 * r + i];
                            float lo = ds * (float)(q & 15), hi = ds * (float)(q >> 4);
                            v[r][4 * k + i] = lo - dm;
                            v[r][16 + 4 * k + i] = hi - dm;
                        }
                }
                for (int r = 0; r < nr; r++) memcpy(out + (size_t)r * cols + c0, v[r], n * sizeof(float));
            }
        }
        return;
    }
    const size_t nb = (cols + QK - 1) / QK, tile = qtile_bytes(dt);
    for (size_t b = 0; b < nb; b++) {
        const uint8_t *t = g + b * tile, *p = t + 32;
        float d[QR], v[QR][QK];
        for (int r = 0; r < QR; r++) d[r] = f16_to_f32((uint16_t)(t[2 * r] | t[2 * r + 1] << 8));
        if (dt == DT_Q8_0)
            for (int k = 0; k < 8; k++)
                for (int r = 0; r < QR; r++)
                    for (int i = 0; i < 4; i++) v[r][4 * k + i] = d[r] * (float)(int8_t)p[64 * k + 4 * r + i];
        else
            for (int k = 0; k < 4; k++)
                for (int r = 0; r < QR; r++)
                    for (int i = 0; i < 4; i++) {
                        uint8_t q = p[64 * k + 4 * r + i];
                        v[r][4 * k + i] = d[r] * (float)((q & 15) - 8);
                        v[r][16 + 4 * k + i] = d[r] * (float)((q >> 4) - 8);
                    }
        size_t n = cols - b * QK < QK ? cols - b * QK : QK;
        for (int r = 0; r < nr; r++) memcpy(out + (size_t)r * cols + b * QK, v[r], n * sizeof(float));
    }
}

/* Matrices that dseek quantizes (dseek quantize, --quant): the attention and MLP / expert
 * projections, the MTP eh_proj and the output heads. Embeddings stay as they are: decode
 * reads one row of them per token, so quantizing them gains no speed, and their rows enter
 * every layer; likewise norms, the router (kept in float32) and its bias. */
static int quant_target(const char *name) {
    static const char *const suffix[] = {".q_proj.weight", ".q_a_proj.weight", ".q_b_proj.weight",
                                         ".kv_a_proj_with_mqa.weight", ".kv_b_proj.weight", ".o_proj.weight",
                                         ".gate_proj.weight", ".up_proj.weight", ".down_proj.weight",
                                         ".eh_proj.weight", ".shared_head.head.weight"};
    if (!strcmp(name, "lm_head.weight")) return 1;
    size_t n = strlen(name);
    for (size_t i = 0; i < sizeof suffix / sizeof suffix[0]; i++) {
        size_t k = strlen(suffix[i]);
        if (n > k && !strcmp(name + n - k, suffix[i])) return 1;
    }
    return 0;
}

/* Quantizes row groups [g0, g1) of src to dt into out (group g0's tiles first), in
 * parallel. src is read one row at a time through tensor_row, so an F8 or BF16 source is
 * never expanded beyond 16 rows of float32 per thread. Returns 0, 1 if a value cannot be
 * quantized (not finite, or a block scale beyond the range of a half), 2 out of memory. */
static int quantize_groups(const Tensor *src, int dt, size_t g0, size_t g1, uint8_t *out) {
    const size_t cols_p = round_up(src->cols, QK), gbytes = qgroup_bytes(dt, src->cols);
    int bad = 0;
#pragma omp parallel reduction(| : bad)
    {
        float *buf = malloc(QR * cols_p * sizeof(float));
#pragma omp for schedule(dynamic, 4)
        for (size_t g = g0; g < g1; g++) {
            if (!buf) { bad |= 2; continue; }
            memset(buf, 0, QR * cols_p * sizeof(float));
            for (size_t r = 0; r < QR && g * QR + r < src->rows; r++) tensor_row(src, g * QR + r, buf + r * cols_p);
            if (quant_group(dt, buf, cols_p, out + (g - g0) * gbytes)) bad |= 1;
        }
        free(buf);
    }
    return bad;
}

/* Lets the kernel drop the pages of [p, p+n) if they lie in one of the model's mappings:
 * a source tensor that has been quantized is not read again. */
static void drop_source_pages(const dseek_model *m, const void *p, size_t n) {
    const uint8_t *a = p;
    for (int i = 0; i < m->n_files; i++) {
        const MappedFile *f = &m->files[i];
        if (!f->map || a < f->map || a + n > f->map + f->size) continue;
        size_t pg = (size_t)sysconf(_SC_PAGESIZE);
        uintptr_t b = round_up((uintptr_t)a, pg), e = ((uintptr_t)a + n) / pg * pg;
        if (e > b) madvise((void *)b, e - b, MADV_DONTNEED);
    }
}

static void quant_progress(dseek_model *m, size_t add) {
    m->q_done += add;
    if (!m->progress || m->q_total < (256u << 20)) return;
    int tty = isatty(2), final = m->q_done >= m->q_total;
    double t = clock_s();
    if (!final && t - m->q_last < (tty ? 0.25 : 10.0)) return;
    m->q_last = t;
    fprintf(stderr, "%sdseek: quantizing to %s: %.2f / %.2f GB (%3.0f%%), %.0f s%s", tty ? "\r" : "",
            dtype_name(m->quant_to), m->q_done / 1e9, m->q_total / 1e9, 100.0 * m->q_done / m->q_total,
            t - m->q_t0, tty && !final ? "" : "\n");
}

/* --quant: replaces the bound matrix t by its quantized form, owned by the model. */
static int quantize_at_load(dseek_model *m, Tensor *t, const char *name, char *err, size_t errlen) {
    const int dt = m->quant_to;
    const size_t ng = (t->rows + QR - 1) / QR, src_bytes = tensor_bytes(t);
    uint8_t *q = model_own(m, qtensor_bytes(dt, t->rows, t->cols));
    if (!q) return DSEEK_ENOMEM;
    int bad = quantize_groups(t, dt, 0, ng, q);
    if (bad & 2) return DSEEK_ENOMEM;
    if (bad) {
        seterr(err, errlen, "%s: %s: cannot be quantized to %s: a value is not finite or a block's scale is beyond "
               "the range of a half", m->dir, name, dtype_name(dt));
        return DSEEK_EFORMAT;
    }
    size_t data_bytes = t->dtype == DT_F8 ? t->rows * t->cols : src_bytes; /* as the table counts them */
    drop_source_pages(m, t->data, data_bytes);
    *t = (Tensor){.data = q, .rows = t->rows, .cols = t->cols, .dtype = dt};
    quant_progress(m, data_bytes);
    return 0;
}

/* Binds a 1-D vector (norm weight, bias) as an owned float32 copy. */
static int bind_vector(dseek_model *m, float **out, const char *name, size_t n, char *err, size_t errlen) {
    TensorEntry *e;
    int rc = find_tensor(m, name, 1 << DT_F32 | 1 << DT_BF16 | 1 << DT_F16, n, 0, &e, err, errlen);
    if (rc) return rc;
    float *p = model_own(m, n * sizeof(float));
    if (!p) return DSEEK_ENOMEM;
    Tensor t = {.data = e->data, .rows = 1, .cols = n, .dtype = e->dtype};
    if ((uintptr_t)e->data % (e->dtype == DT_F32 ? 4 : 2)) { /* unaligned: go through bytes */
        uint8_t *tmp = malloc(e->nbytes);
        if (!tmp) return DSEEK_ENOMEM;
        memcpy(tmp, e->data, e->nbytes);
        t.data = tmp;
        tensor_row(&t, 0, p);
        free(tmp);
    } else tensor_row(&t, 0, p);
    if ((rc = check_copy(m, e, name, p, n, err, errlen))) return rc;
    m->info.n_params += n;
    m->info.weight_bytes += e->nbytes;
    *out = p;
    return 0;
}

/* The router is small and read for every token: kept as float32. */
static int bind_router(dseek_model *m, float **out, const char *name, size_t rows, size_t cols, char *err, size_t errlen) {
    Tensor t;
    int rc = bind_matrix(m, &t, name, rows, cols, err, errlen);
    if (rc) return rc;
    float *p = model_own(m, rows * cols * sizeof(float));
    if (!p) return DSEEK_ENOMEM;
    for (size_t r = 0; r < rows; r++) tensor_row(&t, r, p + r * cols);
    if ((rc = check_copy(m, table_get(&m->tt, name), name, p, rows * cols, err, errlen))) return rc;
    *out = p;
    return 0;
}

static int bind_mlp(dseek_model *m, MLP *mlp, const char *prefix, size_t inter, char *err, size_t errlen) {
    char n[512];
    size_t D = (size_t)m->c.hidden_size;
    int rc;
    snprintf(n, sizeof n, "%s.gate_proj.weight", prefix);
    if ((rc = bind_matrix(m, &mlp->gate, n, inter, D, err, errlen))) return rc;
    snprintf(n, sizeof n, "%s.up_proj.weight", prefix);
    if ((rc = bind_matrix(m, &mlp->up, n, inter, D, err, errlen))) return rc;
    snprintf(n, sizeof n, "%s.down_proj.weight", prefix);
    if ((rc = bind_matrix(m, &mlp->down, n, D, inter, err, errlen))) return rc;
    if (inter > m->max_inter) m->max_inter = inter;
    return 0;
}

/* Binds decoder layer `li` (the MTP layer when mtp is set). */
static int bind_layer(dseek_model *m, int li, int mtp, char *err, size_t errlen) {
    const Config *c = &m->c;
    Layer *ly = &m->layers[li];
    size_t D = (size_t)c->hidden_size, H = (size_t)c->num_attention_heads, R = (size_t)c->kv_lora_rank;
    size_t nope = (size_t)c->qk_nope_head_dim, rope = (size_t)c->qk_rope_head_dim, v = (size_t)c->v_head_dim;
    char p[256], n[512];
    int rc;
    snprintf(p, sizeof p, "model.layers.%d", li);
#define NAME(fmt) (snprintf(n, sizeof n, "%s." fmt, p), n)
    if ((rc = bind_vector(m, &ly->attn_norm, NAME("input_layernorm.weight"), D, err, errlen))) return rc;
    if ((rc = bind_vector(m, &ly->ffn_norm, NAME("post_attention_layernorm.weight"), D, err, errlen))) return rc;
    if (c->q_lora_rank) {
        size_t ql = (size_t)c->q_lora_rank;
        if ((rc = bind_matrix(m, &ly->q_a, NAME("self_attn.q_a_proj.weight"), ql, D, err, errlen))) return rc;
        if ((rc = bind_vector(m, &ly->q_a_norm, NAME("self_attn.q_a_layernorm.weight"), ql, err, errlen))) return rc;
        if ((rc = bind_matrix(m, &ly->q_b, NAME("self_attn.q_b_proj.weight"), H * (nope + rope), ql, err, errlen))) return rc;
    } else if ((rc = bind_matrix(m, &ly->q_proj, NAME("self_attn.q_proj.weight"), H * (nope + rope), D, err, errlen)))
        return rc;
    if ((rc = bind_matrix(m, &ly->kv_a, NAME("self_attn.kv_a_proj_with_mqa.weight"), R + rope, D, err, errlen))) return rc;
    if ((rc = bind_vector(m, &ly->kv_a_norm, NAME("self_attn.kv_a_layernorm.weight"), R, err, errlen))) return rc;
    if ((rc = bind_matrix(m, &ly->kv_b, NAME("self_attn.kv_b_proj.weight"), H * (nope + v), R, err, errlen))) return rc;
    if ((rc = bind_matrix(m, &ly->o_proj, NAME("self_attn.o_proj.weight"), D, H * v, err, errlen))) return rc;

    ly->is_moe = c->n_routed_experts > 0 && li >= c->first_k_dense_replace && li % c->moe_layer_freq == 0;
    if (!ly->is_moe) {
        if ((rc = bind_mlp(m, &ly->mlp, NAME("mlp"), (size_t)c->intermediate_size, err, errlen))) return rc;
    } else {
        size_t E = (size_t)c->n_routed_experts, I = (size_t)c->moe_intermediate_size;
        if ((rc = bind_router(m, &ly->router, NAME("mlp.gate.weight"), E, D, err, errlen))) return rc;
        if (c->topk_method == TOPK_NOAUX_TC &&
            (rc = bind_vector(m, &ly->router_bias, NAME("mlp.gate.e_score_correction_bias"), E, err, errlen)))
            return rc;
        ly->experts = xcalloc(E, sizeof(MLP));
        if (!ly->experts) return DSEEK_ENOMEM;
        for (size_t e = 0; e < E; e++) {
            char pe[300];
            snprintf(pe, sizeof pe, "%s.mlp.experts.%zu", p, e);
            if ((rc = bind_mlp(m, &ly->experts[e], pe, I, err, errlen))) return rc;
        }
        if (c->n_shared_experts &&
            (rc = bind_mlp(m, &ly->shared, NAME("mlp.shared_experts"), I * (size_t)c->n_shared_experts, err, errlen)))
            return rc;
        size_t wide = I * (size_t)(c->n_shared_experts > 1 ? c->n_shared_experts : 1);
        if (wide > m->moe_inter) m->moe_inter = wide;
    }
    if (mtp) {
        size_t V = (size_t)c->vocab_size;
        if ((rc = bind_matrix(m, &ly->embed, NAME("embed_tokens.weight"), V, D, err, errlen))) return rc;
        if ((rc = bind_vector(m, &ly->enorm, NAME("enorm.weight"), D, err, errlen))) return rc;
        if ((rc = bind_vector(m, &ly->hnorm, NAME("hnorm.weight"), D, err, errlen))) return rc;
        if ((rc = bind_matrix(m, &ly->eh_proj, NAME("eh_proj.weight"), D, 2 * D, err, errlen))) return rc;
        if ((rc = bind_vector(m, &ly->head_norm, NAME("shared_head.norm.weight"), D, err, errlen))) return rc;
        if ((rc = bind_matrix(m, &ly->head, NAME("shared_head.head.weight"), V, D, err, errlen))) return rc;
    }
#undef NAME
    return 0;
}

/* RoPE inverse frequencies with YaRN (SPEC.md "MLA attention"), and the score scale. */
static void rope_setup(dseek_model *m) {
    const Config *c = &m->c;
    int d = c->qk_rope_head_dim;
    double scale = 1.0 / sqrt((double)(c->qk_nope_head_dim + c->qk_rope_head_dim));
    m->rope_mscale = 1.0f;
    for (int i = 0; i < d / 2; i++) m->inv_freq[i] = (float)pow(c->rope_theta, -2.0 * i / d);
    if (c->yarn) {
        double f = c->yarn_factor, base = c->rope_theta, Lo = c->yarn_original_max_pos;
#define CORR(nrot) (d * log(Lo / ((nrot) * 2 * M_PI)) / (2 * log(base)))
        double lo = floor(CORR(c->yarn_beta_fast)), hi = ceil(CORR(c->yarn_beta_slow));
#undef CORR
        if (lo < 0) lo = 0;
        if (hi > d - 1) hi = d - 1;
        if (lo == hi) hi += 0.001;
        for (int i = 0; i < d / 2; i++) {
            double ramp = (i - lo) / (hi - lo);
            ramp = ramp < 0 ? 0 : ramp > 1 ? 1 : ramp;
            double fr = pow(base, -2.0 * i / d);
            m->inv_freq[i] = (float)(fr / f * ramp + fr * (1 - ramp));
        }
#define MSCALE(s, ms) ((s) <= 1 ? 1.0 : 0.1 * (ms) * log(s) + 1.0)
        m->rope_mscale = (float)(MSCALE(f, c->yarn_mscale) / MSCALE(f, c->yarn_mscale_all_dim));
        if (c->yarn_mscale_all_dim != 0 && f > 1) {
            double ms = MSCALE(f, c->yarn_mscale_all_dim);
            scale *= ms * ms;
        }
#undef MSCALE
    }
    m->softmax_scale = (float)scale;
}

/* The int8 attention path (mla_forward) needs q_lat = W_UK[h]^T q_nope as an ordinary
 * product of quantized rows by int8 activations, so for a quantized kv_b each head's W_UK
 * is transposed here, once at load: rows h*R + r of kb_t hold column r of W_UK[h]. It is
 * quantized to Q8_0 whatever kv_b's type (the values are already quantized once; a second
 * rounding to 8 bits adds little), and is small: R * nope per head (V2-Lite 30 MB, V3
 * 0.5 GB beside 671 GB). The heads' W_UV rows are copied out of kv_b as they are, side by
 * side into kb_v: in kv_b each head's W_UV lies between two W_UK blocks that decode does
 * not read, and 16 blocks of 37 KB with gaps read at 0.55-0.6x the rate of the same bytes
 * in one run (one-token Q4_0 product, 2 threads, from DRAM, Zen 4). Needs every head's rows
 * on whole row groups (nope, v and R multiples of 16); otherwise kb_t stays empty and the
 * float path runs. */
static int build_kb_t(dseek_model *m, Layer *ly) {
    const Config *c = &m->c;
    const size_t H = (size_t)c->num_attention_heads, R = (size_t)c->kv_lora_rank;
    const size_t nope = (size_t)c->qk_nope_head_dim, vd = (size_t)c->v_head_dim, hrows = nope + vd;
    if (!is_quant(ly->kv_b.dtype) || nope % QR || vd % QR || R % QR) return 0;
    const size_t nope_p = round_up(nope, QK), gbytes = nope_p / QK * qtile_bytes(DT_Q8_0);
    const size_t gb_kvb = qgroup_bytes(ly->kv_b.dtype, R);
    uint8_t *out = model_own(m, H * (R / QR) * gbytes), *uv = model_own(m, H * (vd / QR) * gb_kvb);
    float *wuk = malloc(nope * R * sizeof(float)), *buf = calloc(QR * nope_p, sizeof(float));
    int rc = out && uv && wuk && buf ? 0 : DSEEK_ENOMEM;
    for (size_t h = 0; h < H && !rc; h++) {
        memcpy(uv + h * (vd / QR) * gb_kvb, ly->kv_b.data + (h * hrows + nope) / QR * gb_kvb, vd / QR * gb_kvb);
        for (size_t g = 0; g < nope / QR; g++)
            qgroup_dequant(ly->kv_b.dtype, ly->kv_b.data + (h * hrows / QR + g) * gb_kvb, R, wuk + g * QR * R, QR);
        for (size_t r0 = 0; r0 < R && !rc; r0 += QR) {
            for (size_t j = 0; j < QR; j++)
                for (size_t i = 0; i < nope; i++) buf[j * nope_p + i] = wuk[i * R + r0 + j];
            if (quant_group(DT_Q8_0, buf, nope_p, out + (h * R + r0) / QR * gbytes)) rc = DSEEK_EFORMAT;
        }
    }
    free(wuk);
    free(buf);
    if (!rc) {
        ly->kb_t = (Tensor){.rows = H * R, .cols = nope, .dtype = DT_Q8_0, .data = out};
        ly->kb_v = (Tensor){.rows = H * vd, .cols = R, .dtype = ly->kv_b.dtype, .data = uv};
    }
    return rc;
}

static size_t tensor_bytes(const Tensor *t) {
    if (!t->data) return 0;
    if (is_quant(t->dtype)) return qtensor_bytes(t->dtype, t->rows, t->cols);
    size_t b = t->rows * t->cols * elem_bytes(t->dtype);
    if (t->dtype == DT_F8) b += ((t->rows + (size_t)t->br - 1) / (size_t)t->br) * t->scols * sizeof(float);
    return b;
}

static size_t mlp_bytes(const MLP *f) { return tensor_bytes(&f->gate) + tensor_bytes(&f->up) + tensor_bytes(&f->down); }

static size_t attn_bytes(const Layer *ly) {
    /* with kb_t, decode reads it and kb_v (build_kb_t) instead of kv_b */
    const size_t kvb = ly->kb_t.data ? tensor_bytes(&ly->kb_t) + tensor_bytes(&ly->kb_v) : tensor_bytes(&ly->kv_b);
    return tensor_bytes(&ly->q_proj) + tensor_bytes(&ly->q_a) + tensor_bytes(&ly->q_b) + tensor_bytes(&ly->kv_a) + kvb +
           tensor_bytes(&ly->o_proj);
}

/* Weight bytes one decoded token reads (main model): every attention and dense weight, the
 * shared experts, k routed experts per MoE layer, the router, lm_head and one embedding row. */
static size_t decode_bytes(const dseek_model *m) {
    const Config *c = &m->c;
    size_t b = tensor_bytes(&m->lm_head) + tensor_bytes(&m->embed) / (size_t)c->vocab_size;
    for (int l = 0; l < c->num_hidden_layers; l++) {
        const Layer *ly = &m->layers[l];
        b += attn_bytes(ly);
        if (!ly->is_moe) b += mlp_bytes(&ly->mlp);
        else b += mlp_bytes(&ly->shared) + (size_t)c->num_experts_per_tok * mlp_bytes(&ly->experts[0]) +
                  (size_t)c->n_routed_experts * (size_t)c->hidden_size * sizeof(float);
    }
    return b;
}

/* The weight traffic of forwards, for deciding when MTP drafting pays: decoding is bound by
 * memory bandwidth, so a forward costs the bytes it reads, and those depend on how many
 * routed experts the tokens chose (counted as they run). */
static void traffic_model(dseek_model *m) {
    const Config *c = &m->c;
    int moe = 0;
    for (int l = 0; l < c->num_hidden_layers; l++) moe += m->layers[l].is_moe;
    m->bytes_expert = 0; /* from the first MoE layer, which may be an MTP layer (or none) */
    for (int l = 0; l < c->num_hidden_layers + m->info.n_mtp; l++)
        if (m->layers[l].is_moe) { m->bytes_expert = mlp_bytes(&m->layers[l].experts[0]); break; }
    m->bytes_fixed = m->info.decode_bytes_per_token - (size_t)moe * (size_t)c->num_experts_per_tok * m->bytes_expert;
    if (m->info.n_mtp) {
        const Layer *ly = &m->layers[c->num_hidden_layers];
        m->bytes_mtp_fixed = attn_bytes(ly) + tensor_bytes(&ly->eh_proj) + tensor_bytes(&ly->head) +
                             tensor_bytes(&ly->embed) / (size_t)c->vocab_size +
                             (ly->is_moe ? mlp_bytes(&ly->shared) + (size_t)c->n_routed_experts * (size_t)c->hidden_size * 4
                                         : mlp_bytes(&ly->mlp));
    }
}

/* The dtype holding the most matrix bytes of the main model (for bench and messages). */
static const char *matrix_dtype(const dseek_model *m) {
    size_t by[DT_OTHER + 1] = {0};
    by[m->lm_head.dtype] += tensor_bytes(&m->lm_head);
    for (int l = 0; l < m->c.num_hidden_layers; l++) {
        const Layer *ly = &m->layers[l];
        const Tensor *ts[] = {&ly->q_proj, &ly->q_a, &ly->q_b, &ly->kv_a, &ly->kv_b, &ly->o_proj,
                              &ly->mlp.gate, &ly->mlp.up, &ly->mlp.down, &ly->shared.gate, &ly->shared.up, &ly->shared.down};
        for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++) by[ts[i]->dtype] += tensor_bytes(ts[i]);
        if (ly->is_moe) by[ly->experts[0].gate.dtype] += (size_t)m->c.n_routed_experts * mlp_bytes(&ly->experts[0]);
    }
    int best = 0;
    for (int d = 1; d <= DT_OTHER; d++)
        if (by[d] > by[best]) best = d;
    return dtype_name(best);
}

void dseek_model_free(dseek_model *m) {
    if (!m) return;
    if (m->layers)
        for (int i = 0; i < m->c.num_hidden_layers + m->info.n_mtp; i++) free(m->layers[i].experts);
    free(m->layers);
    for (size_t i = 0; i < m->n_owned; i++) free(m->owned[i]);
    free(m->owned);
    for (size_t i = 0; i < m->n_regions; i++) munmap(m->regions[i].p, m->regions[i].len);
    free(m->regions);
    for (int i = 0; i < m->n_files; i++) {
        if (m->files[i].map) munmap(m->files[i].map, m->files[i].size);
        free(m->files[i].path);
    }
    free(m->files);
    table_free(&m->tt);
    free(m->inv_freq);
    free(m->dir);
    free(m);
}

/* MemAvailable of /proc/meminfo in bytes (free memory plus what the kernel can reclaim,
 * the page cache included); 0 if unknown. */
static size_t mem_available(void) {
    FILE *f = fopen("/proc/meminfo", "r");
    if (!f) return 0;
    char line[256];
    unsigned long long kb = 0;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "MemAvailable: %llu kB", &kb) == 1) break;
    fclose(f);
    return (size_t)kb * 1024;
}

/* DSEEK_LOAD_AUTO: the weights are read into huge-page memory when the files (bytes in
 * all) fit in the memory available with room to spare (an eighth of them, at least 1 GiB,
 * for the cache and buffers), else mmapped and populated. In a virtual machine every TLB
 * miss walks two page tables, and a decode step streams gigabytes: the full-size V2-Lite
 * Q8_0 (16.9 GB on a 24 GB machine, 2 threads) decodes 16.1 tok/s from huge pages and
 * 11.1 from the mmapped page cache. A model quantized while loading keeps only its
 * quantized copy, so its float files stay mmapped. */
static int resolve_load(const dseek_model *m, size_t bytes) {
    if (m->load != DSEEK_LOAD_AUTO) return m->load;
    if (m->quant_to) return DSEEK_LOAD_POPULATE;
    size_t avail = mem_available(), room = bytes / 8 > ((size_t)1 << 30) ? bytes / 8 : (size_t)1 << 30;
    return avail > room && bytes <= avail - room ? DSEEK_LOAD_READ : DSEEK_LOAD_POPULATE;
}

static size_t file_size(const char *path) {
    struct stat st;
    return stat(path, &st) ? 0 : (size_t)st.st_size;
}

/* Maps the safetensors files: through model.safetensors.index.json when present (its
 * weight_map decides which file holds each tensor), else model.safetensors. */
static int load_files(dseek_model *m, const char *dir, char *err, size_t errlen) {
    char path[4096];
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    size_t len;
    char *text = read_file(path, &len, 256u << 20);
    if (!text) {
        m->files = xcalloc(1, sizeof(MappedFile));
        if (!m->files) return DSEEK_ENOMEM;
        m->n_files = 1;
        snprintf(path, sizeof path, "%s/model.safetensors", dir);
        m->files[0].load = resolve_load(m, file_size(path));
        m->files[0].lock = m->lock;
        return st_load(path, "model.safetensors", 0, &m->files[0], &m->tt, NULL, err, errlen);
    }
    cJSON *idx = cJSON_ParseWithLength(text, len);
    free(text);
    const cJSON *wm = cJSON_GetObjectItemCaseSensitive(idx, "weight_map");
    int rc = 0;
    if (!cJSON_IsObject(idx)) {
        seterr(err, errlen, "%s: not a JSON object", path);
        rc = DSEEK_EFORMAT;
        goto done;
    }
    if (!cJSON_IsObject(wm)) {
        seterr(err, errlen, "%s: weight_map: missing or not an object", path);
        rc = DSEEK_EFORMAT;
        goto done;
    }
    /* distinct file names, in order of first mention */
    int nent = cJSON_GetArraySize(wm);
    const char **names = xcalloc((size_t)nent, sizeof *names);
    if (!names) { rc = DSEEK_ENOMEM; goto done; }
    int nf = 0;
    for (const cJSON *it = wm->child; it; it = it->next) {
        if (!cJSON_IsString(it) || !it->valuestring[0] || strchr(it->valuestring, '/')) {
            seterr(err, errlen, "%s: weight_map[\"%.200s\"]: expected a file name in the same folder", path, it->string);
            rc = DSEEK_EFORMAT;
            break;
        }
        int seen = 0;
        for (int i = 0; i < nf && !seen; i++) seen = !strcmp(names[i], it->valuestring);
        if (!seen) names[nf++] = it->valuestring;
    }
    if (!rc) {
        m->files = xcalloc((size_t)nf, sizeof(MappedFile));
        if (!m->files) rc = DSEEK_ENOMEM;
    }
    size_t total = 0;
    for (int i = 0; i < nf && !rc; i++) {
        char fp[4096];
        snprintf(fp, sizeof fp, "%s/%s", dir, names[i]);
        total += file_size(fp);
    }
    const int load = resolve_load(m, total);
    for (int i = 0; i < nf && !rc; i++) {
        char fp[4096];
        snprintf(fp, sizeof fp, "%s/%s", dir, names[i]);
        m->n_files = i + 1;
        m->files[i].load = load;
        m->files[i].lock = m->lock;
        rc = st_load(fp, names[i], i, &m->files[i], &m->tt, wm, err, errlen);
    }
    /* every tensor the index names must be in its file */
    for (const cJSON *it = wm->child; it && !rc; it = it->next)
        if (!table_get(&m->tt, it->string)) {
            seterr(err, errlen, "%s: weight_map[\"%.200s\"]: tensor not found in %s", path, it->string, it->valuestring);
            rc = DSEEK_EFORMAT;
        }
    free(names);
done:
    cJSON_Delete(idx);
    return rc;
}

int dseek_quant_parse(const char *name) {
    return !strcmp(name, "q8_0")   ? DSEEK_QUANT_Q8_0
           : !strcmp(name, "q4_0") ? DSEEK_QUANT_Q4_0
           : !strcmp(name, "q4_k") ? DSEEK_QUANT_Q4_K
                                   : -1;
}

/* DSEEK_QUANT_* -> the block dtype, or -1 */
static int quant_dtype(int quant) {
    return quant == DSEEK_QUANT_Q8_0 ? DT_Q8_0 : quant == DSEEK_QUANT_Q4_0 ? DT_Q4_0 : quant == DSEEK_QUANT_Q4_K ? DT_Q4_K : -1;
}

static int qkernels_init(char *err, size_t errlen);

int dseek_model_open(const char *dir, dseek_model **out, char *err, size_t errlen) {
    return dseek_model_open_cfg(dir, NULL, out, err, errlen);
}

int dseek_model_open_cfg(const char *dir, const dseek_load_cfg *cfg, dseek_model **out, char *err, size_t errlen) {
    *out = NULL;
    fp8_table_init();
    openblas_set_num_threads(1); /* sgemm runs inside dseek's own parallel regions */
    if (qkernels_init(err, errlen)) return DSEEK_EARG;
    dseek_model *m = calloc(1, sizeof *m);
    if (!m || !(m->dir = strdup(dir))) {
        free(m);
        seterr(err, errlen, "out of memory");
        return DSEEK_ENOMEM;
    }
    if (cfg && (cfg->load < DSEEK_LOAD_AUTO || cfg->load > DSEEK_LOAD_POPULATE)) {
        seterr(err, errlen, "unknown load mode %d", cfg->load);
        free(m->dir);
        free(m);
        return DSEEK_EARG;
    }
    if (cfg) {
        m->load = cfg->load;
        m->lock = cfg->mlock;
    }
    if (cfg && cfg->quant) {
        if (quant_dtype(cfg->quant) < 0) {
            seterr(err, errlen, "unknown quantization type %d", cfg->quant);
            free(m->dir);
            free(m);
            return DSEEK_EARG;
        }
        m->quant_to = quant_dtype(cfg->quant);
        m->progress = cfg->progress;
    }
    int rc = config_parse(dir, &m->c, err, errlen);
    if (!rc) rc = load_files(m, dir, err, errlen);
    const Config *c = &m->c;
    if (rc) goto fail;
    if (m->quant_to) { /* what the progress bar counts */
        for (size_t i = 0; i < m->tt.n; i++)
            if (m->tt.v[i].ndim == 2 && quant_target(m->tt.v[i].name)) m->q_total += m->tt.v[i].nbytes;
        m->q_t0 = m->q_last = clock_s();
    }
    size_t V = (size_t)c->vocab_size, D = (size_t)c->hidden_size;

    m->info.n_mtp = c->num_nextn_predict_layers;
    m->layers = xcalloc((size_t)(c->num_hidden_layers + m->info.n_mtp), sizeof(Layer));
    m->inv_freq = xcalloc((size_t)c->qk_rope_head_dim / 2, sizeof(float));
    if (!m->layers || !m->inv_freq) { rc = DSEEK_ENOMEM; goto fail; }
    if ((rc = bind_matrix(m, &m->embed, "model.embed_tokens.weight", V, D, err, errlen))) goto fail;
    for (int l = 0; l < c->num_hidden_layers + m->info.n_mtp && !rc; l++)
        rc = bind_layer(m, l, l >= c->num_hidden_layers, err, errlen);
    for (int l = 0; l < c->num_hidden_layers + m->info.n_mtp && !rc; l++)
        if ((rc = build_kb_t(m, &m->layers[l])))
            seterr(err, errlen, "%s: model.layers.%d.self_attn.kv_b_proj.weight: %s", m->dir,
                   l, rc == DSEEK_ENOMEM ? "out of memory" : "a value cannot be quantized");
    if (rc) goto fail;
    if ((rc = bind_vector(m, &m->final_norm, "model.norm.weight", D, err, errlen))) goto fail;
    if (c->tie_word_embeddings && !table_get(&m->tt, "lm_head.weight")) m->lm_head = m->embed;
    else if ((rc = bind_matrix(m, &m->lm_head, "lm_head.weight", V, D, err, errlen))) goto fail;
    if (m->quant_to && m->q_done < m->q_total) quant_progress(m, m->q_total - m->q_done); /* unused tensors */
    /* --mlock covers the weights made at load (a --quant load's matrices, W_UK^T) as well
     * as the files */
    for (size_t i = 0; m->lock && i < m->n_regions; i++)
        if (mlock(m->regions[i].p, m->regions[i].used)) {
            seterr(err, errlen, "%s: --mlock: cannot lock %zu bytes of weights made at load: %s (see ulimit -l)", dir,
                   m->regions[i].used, strerror(errno));
            rc = DSEEK_EIO;
            goto fail;
        }
    rope_setup(m);

    m->info.vocab_size = c->vocab_size;
    m->info.hidden_size = c->hidden_size;
    m->info.n_layers = c->num_hidden_layers;
    m->info.bos_token_id = c->bos_token_id;
    m->info.eos_token_id = c->eos_token_id;
    m->info.max_position = c->max_position_embeddings;
    m->info.experts_per_tok = c->n_routed_experts ? c->num_experts_per_tok : 0;
    m->info.cache_bytes_per_token = (size_t)(c->num_hidden_layers + m->info.n_mtp) *
                                    (size_t)(c->kv_lora_rank + c->qk_rope_head_dim) * sizeof(float);
    if (2 * D > m->max_in) m->max_in = 2 * D;
    m->info.decode_bytes_per_token = decode_bytes(m);
    traffic_model(m);
    m->info.matrix_dtype = matrix_dtype(m);
    m->info.weights_in = m->files[0].load == DSEEK_LOAD_READ ? "huge-page memory"
                         : m->files[0].load == DSEEK_LOAD_LAZY ? "mmap, lazy" : "mmap";
    *out = m;
    return 0;
fail:
    if (rc == DSEEK_ENOMEM) seterr(err, errlen, "%s: out of memory while loading", dir);
    dseek_model_free(m);
    return rc;
}

const dseek_info *dseek_model_info(const dseek_model *m) { return &m->info; }

int dseek_layer_is_moe(const dseek_model *m, int li) {
    return li >= 0 && li < m->c.num_hidden_layers + m->info.n_mtp && m->layers[li].is_moe;
}

/* First NaN or Inf element of a stored tensor (any alignment), or -1; *nan tells which.
 * Works on the bit patterns: an all-ones exponent is Inf (zero mantissa) or NaN;
 * F8_E4M3 has no Inf and S.1111.111 is NaN. */
static long long stored_nonfinite(const uint8_t *p, size_t nbytes, int dtype, int *nan) {
    if (dtype == DT_F32)
        for (size_t i = 0; i + 4 <= nbytes; i += 4) {
            uint32_t u;
            memcpy(&u, p + i, 4);
            if ((u & 0x7f800000u) == 0x7f800000u) { *nan = (u & 0x7fffffu) != 0; return (long long)(i / 4); }
        }
    else if (dtype == DT_BF16 || dtype == DT_F16) {
        const uint16_t ex = dtype == DT_BF16 ? 0x7f80 : 0x7c00, man = dtype == DT_BF16 ? 0x7f : 0x3ff;
        for (size_t i = 0; i + 2 <= nbytes; i += 2) {
            uint16_t h;
            memcpy(&h, p + i, 2);
            if ((h & ex) == ex) { *nan = (h & man) != 0; return (long long)(i / 2); }
        }
    } else if (dtype == DT_F8)
        for (size_t i = 0; i < nbytes; i++)
            if ((p[i] & 0x7f) == 0x7f) { *nan = 1; return (long long)i; }
    return -1;
}

/* The same for a Q8_0 / Q4_0 / Q4_K tensor: its weights are non-finite exactly when a block
 * scale (a half: Q4_K's d or dmin) is; returns the index of the block's first weight,
 * row * cols + column. Scales of the padding rows of the last group are never used and not
 * checked. */
static long long qstored_nonfinite(const TensorEntry *e, int *nan) {
    const size_t rows = e->shape[0], cols = e->shape[1], bc = qtile_cols(e->dtype), nb = (cols + bc - 1) / bc;
    const size_t tile = qtile_bytes(e->dtype), gb = qgroup_bytes(e->dtype, cols);
    for (size_t g = 0; g * QR < rows; g++)
        for (size_t b = 0; b < nb; b++) {
            const uint8_t *t = e->data + g * gb + b * tile;
            for (size_t r = 0; r < QR && g * QR + r < rows; r++)
                for (int k = 0; k < (e->dtype == DT_Q4_K ? 2 : 1); k++) {
                    uint16_t h = (uint16_t)(t[32 * k + 2 * r] | t[32 * k + 2 * r + 1] << 8);
                    if ((h & 0x7c00) == 0x7c00) {
                        *nan = (h & 0x3ff) != 0;
                        return (long long)((g * QR + r) * cols + b * bc);
                    }
                }
        }
    return -1;
}

int dseek_model_check_tensors(const dseek_model *m, char *err, size_t errlen) {
    const TensorTable *t = &m->tt;
    long bad_k = -1;          /* the first offending entry in table order */
    long long bad_i = 0;
    int bad_nan = 0;
#pragma omp parallel for schedule(dynamic, 1)
    for (long k = 0; k < (long)t->n; k++) {
        int nan = 0;
        long long i = is_quant(t->v[k].dtype) ? qstored_nonfinite(&t->v[k], &nan)
                                               : stored_nonfinite(t->v[k].data, t->v[k].nbytes, t->v[k].dtype, &nan);
        if (i >= 0) {
#pragma omp critical
            if (bad_k < 0 || k < bad_k) { bad_k = k; bad_i = i; bad_nan = nan; }
        }
    }
    if (bad_k < 0) return 0;
    const TensorEntry *e = &t->v[bad_k];
    seterr(err, errlen, "%s: %s: element %lld is %s (the weights must be finite)", m->files[e->file].path, e->name,
           bad_i, bad_nan ? "NaN" : "Inf");
    return DSEEK_EFORMAT;
}

/* ============================================================================
 * 5. Kernels
 * ========================================================================== */

static int n_threads(void) {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

static int thread_id(void) {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

static int in_parallel(void) {
#ifdef _OPENMP
    return omp_in_parallel();
#else
    return 0;
#endif
}

static int n_threads_in_team(void) {
#ifdef _OPENMP
    return omp_get_num_threads();
#else
    return 1;
#endif
}

/* A barrier for the threads of a parallel region that spin on a shared word: on a cloud
 * machine whose cores see each other's writes about 250 ns late, OpenMP's barrier cost 1.4-1.6
 * us and this one 0.3-0.6 (2 threads, Zen 5 VM). The last thread to arrive resets the count
 * and moves the generation on; everyone's writes before it are seen by everyone after it
 * (acquire-release through the count and the generation). A waiter yields its core after
 * a while, so that more threads than cores still move on. */
typedef struct {
    _Atomic unsigned count;
    char pad[64 - sizeof(unsigned)];
    _Atomic unsigned gen;
    char pad2[64 - sizeof(unsigned)];
} SpinBarrier;

static void spin_barrier(SpinBarrier *b, int n) {
    const unsigned g = atomic_load_explicit(&b->gen, memory_order_relaxed);
    if (atomic_fetch_add_explicit(&b->count, 1, memory_order_acq_rel) == (unsigned)n - 1) {
        atomic_store_explicit(&b->count, 0, memory_order_relaxed);
        atomic_store_explicit(&b->gen, g + 1, memory_order_release);
        return;
    }
    for (unsigned spins = 0; atomic_load_explicit(&b->gen, memory_order_acquire) == g; spins++) {
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#endif
        if (spins >= 1u << 14) sched_yield();
    }
}

/* Iterations [lo, hi) of n that thread tid of nth takes in a static split. */
static void split_range(size_t n, size_t nth, size_t tid, size_t *lo, size_t *hi) {
    *lo = n * tid / nth;
    *hi = n * (tid + 1) / nth;
}

void dseek_set_threads(int n) {
#ifdef _OPENMP
    if (n <= 0) n = omp_get_num_procs();
    omp_set_num_threads(n);
#endif
    (void)n;
    openblas_set_num_threads(1); /* sgemm runs inside dseek's own parallel regions */
}

/* Streaming reads touch the first line of each 4 KiB page PAGE_AHEAD bytes before they
 * reach it, once per page. The hardware prefetchers follow a stream only within a page, and
 * in a virtual machine each new page's address translation is a two-level walk; asking
 * early lets both happen while the current page streams. A prefetch never faults (past the
 * end of a tensor included) and changes no result. Zen 5 VM, 2 threads, 200 V2-Lite experts
 * from DRAM, alternating in one process: one-token Q8_0 kernel +21%, Q4_0 +26% (against a
 * prefetch of every line 8 tiles ahead, which it replaces); a plain read +20-30%. Anywhere
 * from 8 to 64 KiB ahead measured the same in a microbenchmark; in a full-size decode 32 and
 * 64 KiB read the experts 9% faster than 16. `step` is the bytes the caller moves on by:
 * the page starts in (p + PAGE_AHEAD, p + PAGE_AHEAD + step] are asked for. */
enum { PAGE_AHEAD = 32768 };
/* Whether the streaming loops prefetch pages ahead at all (page_prefetch_init). */
static int page_prefetch = 1;
/* prefetches the first line of every `stride`-byte block (a power of two) that starts in (a, b] */
static inline void prefetch_starts(uintptr_t a, uintptr_t b, uintptr_t stride) {
#if defined(__GNUC__)
    if (!page_prefetch) return;
    for (uintptr_t q = (a | (stride - 1)) + 1; q <= b; q += stride) __builtin_prefetch((const void *)q);
#else
    (void)a, (void)b, (void)stride;
#endif
}
static inline void prefetch_page_starts(uintptr_t a, uintptr_t b) { prefetch_starts(a, b, 4096); }

static inline void prefetch_page_ahead(const void *p, size_t step) {
    prefetch_page_starts((uintptr_t)p + PAGE_AHEAD, (uintptr_t)p + PAGE_AHEAD + step);
}

/* A one-token stream also asks for every line LINE_AHEAD bytes before it reads it. The
 * int8 kernels do enough work per line that the hardware prefetchers alone fall behind:
 * Zen 5 VM, 2 threads, V2-Lite expert products from DRAM against a plain read in the same
 * process, Q4_0 0.80-0.92 of the read without, 0.96-1.1 with; Q4_K 0.49-0.56 -> 0.84-0.97;
 * Q8_0 unchanged (4, 6 and 8 KiB ahead alike; 16 and 24 KiB worse in decode). Many-token
 * products compute long enough per line already: there it only cost (pp512 Q8_0 -15%), so
 * a kernel asks for lines only on its first pass over a row group (`lines`).
 * The Q4_K kernels ask once per 2304-byte tile, for the lines of the tile two on
 * (Q4K_LINE_AHEAD): a thread's window then ends 6.9 KiB ahead rather than 10.5, and one
 * thread streamed from DRAM at 0.95-1.0 of the Q4_0 kernel's rate against 0.85-0.89 with
 * LINE_AHEAD (4-6 KiB alike, 8 worse); 8-layer V2-Lite Q4_K decode +2-8% in each of 4
 * alternating rounds (Zen 5 VM, 2 threads, 75 GB/s). */
enum { LINE_AHEAD = 8192, Q4K_LINE_AHEAD = 2 * Q4K_TILE };
static inline void prefetch_ahead_at(const void *p, size_t step, int lines, size_t ahead) {
    prefetch_page_ahead(p, step);
    if (lines) prefetch_starts((uintptr_t)p + ahead, (uintptr_t)p + ahead + step, 64);
}
static inline void prefetch_ahead(const void *p, size_t step, int lines) { prefetch_ahead_at(p, step, lines, LINE_AHEAD); }

/* The same for the pages of [p, p + n) themselves, where a stream starts (p's own line for
 * the first). */
static inline void prefetch_pages(const void *p, size_t n) {
#if defined(__GNUC__)
    if (!page_prefetch) return;
    __builtin_prefetch(p);
#endif
    prefetch_page_starts((uintptr_t)p, (uintptr_t)p + n - 1);
}

/* A buffer for measuring this machine's read bandwidth (the bench's roofline): parallel
 * passes summing it, timed. A pass is either a plain read or one that touches each page
 * ahead as the kernels do (with the page prefetch on): which is faster depends on the CPU
 * (Zen 5 VM: the page prefetch reads 20-30% faster; Zen 4 VM: 5-10% slower), and the
 * roofline must be the machine's best read either way. The sum runs in independent lanes:
 * one float accumulator would make the loop wait on the adder (4 cycles a float) and
 * measure that instead of memory. */
struct dseek_bw_probe {
    float *buf;
    size_t n; /* floats, a multiple of 64 */
    double sink;
};

dseek_bw_probe *dseek_bw_probe_new(size_t bytes) {
    (void)dseek_page_prefetch(); /* settles page_prefetch when no model has opened yet */
    dseek_bw_probe *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    p->n = bytes / sizeof(float) / 64 * 64;
    /* in huge pages, as the weights are (DSEEK_LOAD_READ): in a virtual machine the page
     * walks of 4 KiB pages cost a streaming read up to half its speed */
    if (!p->n || posix_memalign((void **)&p->buf, (size_t)2 << 20, p->n * sizeof(float))) {
        free(p);
        return NULL;
    }
#ifdef MADV_HUGEPAGE
    madvise(p->buf, p->n * sizeof(float), MADV_HUGEPAGE);
#endif
    float *buf = p->buf;
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < p->n; i++) buf[i] = (float)(i & 1023) * 1e-3f;
    return p;
}

size_t dseek_bw_probe_bytes(const dseek_bw_probe *p) { return p->n * sizeof(float); }

double dseek_bw_probe_pass(dseek_bw_probe *p, int ahead) {
    const float *buf = p->buf;
    const size_t n = p->n;
    ahead = ahead && page_prefetch;
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    float sum = 0;
#pragma omp parallel reduction(+ : sum)
    {
        /* 64 independent sums (four vector registers' worth), so the adds never wait on
         * each other and only the memory limits the loop */
        float acc[64] = {0};
#pragma omp for schedule(static)
        for (size_t i = 0; i < n; i += 64) {
            if (ahead) prefetch_ahead(buf + i, 64 * sizeof(float), 1);
            for (int k = 0; k < 64; k++) acc[k] += buf[i + k];
        }
        for (int k = 0; k < 64; k++) sum += acc[k];
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    p->sink += sum; /* the sum is kept so the reads stay */
    return (double)(b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) * 1e-9;
}

void dseek_bw_probe_free(dseek_bw_probe *p) {
    if (!p) return;
    free(p->buf);
    free(p);
}

/* The best of six passes, plain and page-prefetched in turn: a burst figure, an upper
 * bound of what a sustained read gets at the moment. */
double dseek_memory_bandwidth(size_t bytes) {
    dseek_bw_probe *p = dseek_bw_probe_new(bytes);
    if (!p) return 0;
    double best = 0;
    for (int pass = 0; pass < 6; pass++) {
        const double t = dseek_bw_probe_pass(p, pass & 1), rate = t > 0 ? dseek_bw_probe_bytes(p) / t : 0;
        best = rate > best ? rate : best;
    }
    dseek_bw_probe_free(p);
    return best;
}

/* ----------------------------------------------------------------------------
 * Quantized matrix products
 *
 * y[T, rows] = x[T, cols] W^T with W in Q8_0 / Q4_0 (section 1). The activations are
 * quantized once per product to the same blocks of 32 (int8, one float scale per block),
 * so each block of a weight row meets its block of x in one exact integer dot product:
 *
 *   y[t][r] = sum over blocks b, in order, of  (float)isum(t, r, b) * (dw[r][b] * dx[t][b])
 *
 * where isum is the exact int32 sum of q_w * q_x (q_w - 8 for Q4_0), each product and sum
 * a single float operation (a multiply, then an add: no fused multiply-add) in exactly
 * this order. Q4_K's sub-blocks are the same 32 columns, with an offset: with ds = d * sc
 * and dm = dmin * m (both exact), isum the int32 sum of q_w * q_x (q_w in 0..15) and sx
 * the activation block's sum of q_x,
 *
 *   y[t][r] = sum over sub-blocks b, in order, of
 *             (float)isum(t, r, b) * (ds[r][b] * dx[t][b])  -  dm[r][b] * ((float)sx[t][b] * dx[t][b])
 *
 * (each sub-block's term computed whole, then added: one add per sub-block in the
 * accumulator's dependency chain). The
 * portable kernel computes these formulas one row at a time; the SIMD ones
 * do 16 rows at once, one per lane, with the same operations, so every kernel gives the
 * same bits (tests/test_quant.c holds them together). The error against float32
 * activations is that of rounding x to 8 bits per block: README "Quantized models" gives
 * the measured effect on logits.
 * ------------------------------------------------------------------------- */

/* Activations in Q8 blocks: T rows of cols_p = nb * 32 values. */
typedef struct {
    int8_t *q;                /* [T, cols_p] round(x / dx), in [-127, 127]; zero past cols */
    float *d;                 /* [T, nb] block scales dx = max|x| / 127 */
    int32_t *s;               /* [T, nb] block sums of q (the kernels' weight offset needs them) */
    size_t cols_p, nb;
} QAct;

/* Quantizes x[T, cols] into a. One implementation for every kernel (vectorized by the
 * compiler, with the same bytes whatever it does: see absmax32), so that all kernels see
 * the same input. */
static void qact_quantize_ld(QAct *a, const float *x, size_t ldx, size_t cols, int T) {
    a->nb = (cols + QK - 1) / QK;
    a->cols_p = a->nb * QK;
    for (int t = 0; t < T; t++)
        for (size_t b = 0; b < a->nb; b++) {
            const float *xb = x + (size_t)t * ldx + b * QK;
            int8_t *q = a->q + (size_t)t * a->cols_p + b * QK;
            const size_t n = cols - b * QK < QK ? cols - b * QK : QK;
            float xs[QK];
            if (n < QK) { /* the last block: zero past cols */
                memset(xs, 0, sizeof xs);
                memcpy(xs, xb, n * sizeof(float));
                xb = xs;
            }
            float amax = absmax32(xb);
            if (!(amax <= 3.4e38f)) { /* inf or nan: the rows it meets become nan, as in float32 */
                memset(q, 0, QK);
                a->d[(size_t)t * a->nb + b] = NAN;
                a->s[(size_t)t * a->nb + b] = 0;
                continue;
            }
            float id = amax >= 1e-30f ? 127.0f / amax : 0.0f; /* a tinier block is zero */
            /* rounded in one loop and narrowed and summed in another: both vectorize
             * (decode quantizes about 25k values a layer; 3x faster than one loop) */
            int32_t qi[QK], sum = 0;
            for (int i = 0; i < QK; i++) {
                float v = xb[i] * id;
                v = (v + RND_MAGIC) - RND_MAGIC;
                v = v > 127.0f ? 127.0f : v < -127.0f ? -127.0f : v;
                qi[i] = (int32_t)v;
            }
            for (int i = 0; i < QK; i++) {
                q[i] = (int8_t)qi[i];
                sum += qi[i];
            }
            a->d[(size_t)t * a->nb + b] = id > 0 ? amax / 127.0f : 0.0f;
            a->s[(size_t)t * a->nb + b] = sum;
        }
}

/* x[T, cols] with rows cols apart */
static void qact_quantize(QAct *a, const float *x, size_t cols, int T) { qact_quantize_ld(a, x, cols, cols, T); }

/* One row group: w points at its tiles, nb = ceil(cols / 32) is the number of 32-column
 * blocks of a row (Q8_0, Q4_0: tiles; Q4_K: sub-blocks, ceil(nb / 8) tiles, the last
 * possibly used in part: activation blocks past nb are never read); writes y[t * ys + r]
 * for tokens t < T and rows r < nr (the rows of the group that exist). Every kernel has
 * this signature. */
typedef void (*QGroupFn)(const uint8_t *w, size_t nb, int dt, const QAct *a, int T, float *y, size_t ys, int nr);
/* the same for two full row groups, the second gb bytes after the first (NULL: none) */
typedef void (*QPairFn)(const uint8_t *w, size_t gb, size_t nb, int dt, const QAct *a, int T, float *y, size_t ys);

static float tile_scale(const uint8_t *tile, int r) { return f16_to_f32((uint16_t)(tile[2 * r] | tile[2 * r + 1] << 8)); }

/* The reference: the formula above in plain C, for the 16 rows of the group side by side
 * (independent sums, so the compiler may vectorize them without changing a bit). Also the
 * fallback on CPUs without AVX2. */
static void q4k_portable(const uint8_t *w, size_t nb, const QAct *a, int T, float *y, size_t ys, int nr) {
    for (int t = 0; t < T; t++) {
        const int8_t *xq = a->q + (size_t)t * a->cols_p;
        const float *xd = a->d + (size_t)t * a->nb;
        const int32_t *xs = a->s + (size_t)t * a->nb;
        float acc[QR] = {0};
        for (size_t b = 0; b < nb; b++) {
            const int j = (int)(b % QKS);
            const uint8_t *tl = w + b / QKS * Q4K_TILE, *p = tl + 256 + 256 * j;
            if (j == 0) prefetch_ahead(tl, Q4K_TILE, t == 0);
            const int8_t *x = xq + b * QK;
            int32_t isum[QR] = {0};
            for (int k = 0; k < 4; k++)              /* columns 4k .. 4k+3 and 16+4k .. 16+4k+3 */
                for (int r = 0; r < QR; r++)
                    for (int i = 0; i < 4; i++) {
                        uint8_t v = p[64 * k + 4 * r + i];
                        isum[r] += (v & 15) * x[4 * k + i] + (v >> 4) * x[16 + 4 * k + i];
                    }
            const float xsd = (float)xs[b] * xd[b];
            for (int r = 0; r < QR; r++) {
                int sc, m;
                q4k_scale_min(tl, j, r, &sc, &m);
                const float ds = half_at(tl, r) * (float)sc, dm = half_at(tl + 32, r) * (float)m;
                float s = ds * xd[b];
                float prod = (float)isum[r] * s;
                float pm = dm * xsd;
                float term = prod - pm;
                acc[r] = acc[r] + term;
            }
        }
        memcpy(y + (size_t)t * ys, acc, (size_t)nr * sizeof(float));
    }
}

static void qgroup_portable(const uint8_t *w, size_t nb, int dt, const QAct *a, int T, float *y, size_t ys, int nr) {
    if (dt == DT_Q4_K) {
        q4k_portable(w, nb, a, T, y, ys, nr);
        return;
    }
    const size_t tile = qtile_bytes(dt);
    for (int t = 0; t < T; t++) {
        const int8_t *xq = a->q + (size_t)t * a->cols_p;
        const float *xd = a->d + (size_t)t * a->nb;
        float acc[QR] = {0};
        for (size_t b = 0; b < nb; b++) {
            const uint8_t *tl = w + b * tile, *p = tl + 32;
            prefetch_ahead(tl, tile, t == 0);
            const int8_t *x = xq + b * QK;
            int32_t isum[QR] = {0};
            if (dt == DT_Q8_0)
                for (int k = 0; k < 8; k++)          /* columns 4k .. 4k+3 */
                    for (int r = 0; r < QR; r++)
                        for (int i = 0; i < 4; i++) isum[r] += (int8_t)p[64 * k + 4 * r + i] * x[4 * k + i];
            else
                for (int k = 0; k < 4; k++)          /* columns 4k .. 4k+3 and 16+4k .. 16+4k+3 */
                    for (int r = 0; r < QR; r++)
                        for (int i = 0; i < 4; i++) {
                            uint8_t v = p[64 * k + 4 * r + i];
                            isum[r] += ((v & 15) - 8) * x[4 * k + i] + ((v >> 4) - 8) * x[16 + 4 * k + i];
                        }
            for (int r = 0; r < QR; r++) {
                float s = tile_scale(tl, r) * xd[b];
                float prod = (float)isum[r] * s;
                acc[r] = acc[r] + prod;
            }
        }
        memcpy(y + (size_t)t * ys, acc, (size_t)nr * sizeof(float));
    }
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define DS_X86 1

/* AVX-512 VNNI: one 64-byte line of a tile = 4 columns x 16 rows = one vpdpbusd per token,
 * lane r accumulating row r. vpdpbusd multiplies unsigned by signed bytes, so Q8_0 weights
 * are biased by 128 on the fly (q ^ 0x80 = q + 128) and Q4_0 nibbles are used as stored
 * (0..15); the bias times the activation block sum is subtracted afterwards, which leaves
 * the exact isum. Up to 4 tokens share each weight load. */
#define AVX512_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,f16c")))

/* acc + the unsigned bytes of w times the 4 signed bytes at p (every lane the same 4).
 * The broadcast goes in the instruction's memory operand ({1to16}): from the intrinsics
 * (_mm512_set1_epi32 of the 4 bytes) GCC emits a separate vpbroadcastd for each, and the
 * one-token Q4_0 kernel ran 9-14% faster from cache without them (Zen 4, 1 and 2 threads). */
typedef int32_t i32_any __attribute__((may_alias, aligned(1)));
static inline __attribute__((always_inline)) AVX512_TARGET __m512i dpbusd_bcast(__m512i acc, __m512i w, const int8_t *p) {
    __asm__("vpdpbusd %2%{1to16%}, %1, %0" : "+v"(acc) : "v"(w), "m"(*(const i32_any *)p));
    return acc;
}
static inline __attribute__((always_inline)) AVX512_TARGET void
qgroup_avx512_n(const uint8_t *w, size_t nb, int dt, const QAct *a, int t0, const int NT, float *y, size_t ys, int nr) {
    const size_t tile = qtile_bytes(dt);
    const __m512i bias8 = _mm512_set1_epi8((char)0x80), lo4 = _mm512_set1_epi8(0x0f), hi4 = _mm512_set1_epi8((char)0xf0);
    __m512 acc[4];
    const int8_t *xq[4];
    for (int t = 0; t < NT; t++) {
        acc[t] = _mm512_setzero_ps();
        xq[t] = a->q + (size_t)(t0 + t) * a->cols_p;
    }
    for (size_t b = 0; b < nb; b++) {
        const uint8_t *tl = w + b * tile;
        prefetch_ahead(tl, tile, t0 == 0);
        const __m512 dw = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)tl));
        __m512i isum[4];
        if (dt == DT_Q8_0) {
            /* i0 starts at -128 * sum(q_x): the bias comes out as the products go in */
            __m512i i0[4], i1[4];
            for (int t = 0; t < NT; t++) {
                i0[t] = _mm512_set1_epi32(-128 * a->s[(size_t)(t0 + t) * a->nb + b]);
                i1[t] = _mm512_setzero_si512();
            }
            for (int k = 0; k < 8; k += 2) {
                __m512i v0 = _mm512_xor_si512(_mm512_loadu_si512(tl + 32 + 64 * k), bias8);
                __m512i v1 = _mm512_xor_si512(_mm512_loadu_si512(tl + 96 + 64 * k), bias8);
                for (int t = 0; t < NT; t++) {
                    i0[t] = dpbusd_bcast(i0[t], v0, xq[t] + b * QK + 4 * k);
                    i1[t] = dpbusd_bcast(i1[t], v1, xq[t] + b * QK + 4 * k + 4);
                }
            }
            for (int t = 0; t < NT; t++) isum[t] = _mm512_add_epi32(i0[t], i1[t]);
        } else {
            /* low nibbles as they are; high nibbles as v & 0xf0 = 16 * q (no shift), their
             * exact sum divided by 16 once per tile; -8 * sum(q_x) seeds the low sum */
            __m512i il[4], ih[4];
            for (int t = 0; t < NT; t++) {
                il[t] = _mm512_set1_epi32(-8 * a->s[(size_t)(t0 + t) * a->nb + b]);
                ih[t] = _mm512_setzero_si512();
            }
            for (int k = 0; k < 4; k++) {
                __m512i v = _mm512_loadu_si512(tl + 32 + 64 * k);
                __m512i vl = _mm512_and_si512(v, lo4), vh = _mm512_and_si512(v, hi4);
                for (int t = 0; t < NT; t++) {
                    il[t] = dpbusd_bcast(il[t], vl, xq[t] + b * QK + 4 * k);
                    ih[t] = dpbusd_bcast(ih[t], vh, xq[t] + b * QK + 16 + 4 * k);
                }
            }
            for (int t = 0; t < NT; t++) isum[t] = _mm512_add_epi32(il[t], _mm512_srai_epi32(ih[t], 4));
        }
        for (int t = 0; t < NT; t++) {
            __m512 sc = _mm512_mul_ps(dw, _mm512_set1_ps(a->d[(size_t)(t0 + t) * a->nb + b]));
            acc[t] = _mm512_add_ps(acc[t], _mm512_mul_ps(_mm512_cvtepi32_ps(isum[t]), sc));
        }
    }
    for (int t = 0; t < NT; t++) _mm512_mask_storeu_ps(y + (size_t)(t0 + t) * ys, (__mmask16)((1u << nr) - 1), acc[t]);
}

/* The 6-bit scales and mins of a Q4_K tile as bytes, in registers: sub-block j's 16 scales
 * in 128-bit lane j % 4 of scm[j / 4], its 16 mins in the same lane of scm[2 + j / 4]. */
static inline __attribute__((always_inline)) AVX512_TARGET void q4k_unpack_avx512(const uint8_t *tl, __m512i scm[4]) {
    const __m512i a0 = _mm512_loadu_si512(tl + 64), a1 = _mm512_loadu_si512(tl + 128);
    const __m512i h = _mm512_loadu_si512(tl + 192), lo4 = _mm512_set1_epi8(0x0f), b45 = _mm512_set1_epi8(0x30);
    scm[0] = _mm512_or_si512(_mm512_and_si512(a0, lo4), _mm512_and_si512(_mm512_slli_epi16(h, 4), b45));
    scm[1] = _mm512_or_si512(_mm512_and_si512(a1, lo4), _mm512_and_si512(h, b45));
    scm[2] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(a0, 4), lo4), _mm512_and_si512(_mm512_slli_epi16(h, 2), b45));
    scm[3] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(a1, 4), lo4), _mm512_and_si512(_mm512_srli_epi16(h, 2), b45));
}

/* 128-bit lane i of v (i a constant once the caller's loop is unrolled) */
static inline __attribute__((always_inline)) AVX512_TARGET __m128i lane128(__m512i v, int i) {
    switch (i) {
    case 0: return _mm512_castsi512_si128(v);
    case 1: return _mm512_extracti32x4_epi32(v, 1);
    case 2: return _mm512_extracti32x4_epi32(v, 2);
    default: return _mm512_extracti32x4_epi32(v, 3);
    }
}

/* Sub-block j's steps d * sc and offsets dmin * m, 16 rows, from the widened scales and
 * mins (sc, mm: 16 int32 lanes). */
static inline __attribute__((always_inline)) AVX512_TARGET void
q4k_steps_avx512(__m512i sc, __m512i mm, __m512 d, __m512 dmin, __m512 *ds, __m512 *dm) {
    *ds = _mm512_mul_ps(d, _mm512_cvtepi32_ps(sc));
    *dm = _mm512_mul_ps(dmin, _mm512_cvtepi32_ps(mm));
}

/* The same from the unpacked bytes in registers (the one-group kernel: through a stack
 * buffer, 64-byte stores read back 16 bytes at a time, its one-token pass ran 16-20%
 * slower, Zen 5, one thread, from L2) ... */
static inline __attribute__((always_inline)) AVX512_TARGET void
q4k_scales_avx512(const __m512i scm[4], int j, __m512 d, __m512 dmin, __m512 *ds, __m512 *dm) {
    q4k_steps_avx512(_mm512_cvtepu8_epi32(lane128(scm[j / 4], j % 4)), _mm512_cvtepu8_epi32(lane128(scm[2 + j / 4], j % 4)),
                     d, dmin, ds, dm);
}

/* ... or stored as bytes, sub-block j's at byte 16 (j % 4) of scm[j / 4] and scm[2 + j / 4]
 * (the pair kernel: with two tiles' scales held in registers as well, its four-token pass
 * ran out of registers and prefill lost 13%) */
static inline __attribute__((always_inline)) AVX512_TARGET void
q4k_scales_mem_avx512(const uint8_t (*scm)[64], int j, __m512 d, __m512 dmin, __m512 *ds, __m512 *dm) {
    q4k_steps_avx512(_mm512_cvtepu8_epi32(_mm_load_si128((const __m128i *)(scm[j / 4] + 16 * (j % 4)))),
                     _mm512_cvtepu8_epi32(_mm_load_si128((const __m128i *)(scm[2 + j / 4] + 16 * (j % 4)))), d, dmin, ds, dm);
}

/* Q4_K with VNNI: per tile, the 6-bit scales and mins of all 8 sub-blocks are unpacked to
 * bytes with a few 512-bit operations, and each sub-block's 16 are widened to 32-bit lanes
 * and multiplied by d / dmin once for all tokens; the quants go as Q4_0's, without the -8
 * (vpdpbusd takes the 0..15 nibbles as they are). */
static inline __attribute__((always_inline)) AVX512_TARGET void
q4k_avx512_n(const uint8_t *w, size_t nb, const QAct *a, int t0, const int NT, float *y, size_t ys, int nr) {
    const __m512i lo4 = _mm512_set1_epi8(0x0f), hi4 = _mm512_set1_epi8((char)0xf0);
    __m512 acc[4];
    const int8_t *xq[4];
    const float *xd[4];
    const int32_t *xs[4];
    for (int t = 0; t < NT; t++) {
        acc[t] = _mm512_setzero_ps();
        xq[t] = a->q + (size_t)(t0 + t) * a->cols_p;
        xd[t] = a->d + (size_t)(t0 + t) * a->nb;
        xs[t] = a->s + (size_t)(t0 + t) * a->nb;
    }
    for (size_t b0 = 0; b0 < nb; b0 += QKS) {
        const uint8_t *tl = w + b0 / QKS * Q4K_TILE;
        prefetch_ahead_at(tl, Q4K_TILE, t0 == 0, Q4K_LINE_AHEAD);
        const __m512 d = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)tl));
        const __m512 dmin = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(tl + 32)));
        const int ns = nb - b0 < QKS ? (int)(nb - b0) : QKS;
        __m512i scm[4];
        q4k_unpack_avx512(tl, scm);
#pragma GCC unroll 8
        for (int j = 0; j < QKS; j++) {
            if (j == ns) break;
            const size_t b = b0 + (size_t)j;
            __m512 ds, dm;
            q4k_scales_avx512(scm, j, d, dmin, &ds, &dm);
            const uint8_t *p = tl + 256 + 256 * j;
            __m512i il[4], ih[4];
            for (int t = 0; t < NT; t++) il[t] = ih[t] = _mm512_setzero_si512();
            for (int k = 0; k < 4; k++) {
                __m512i v = _mm512_loadu_si512(p + 64 * k);
                __m512i vl = _mm512_and_si512(v, lo4), vh = _mm512_and_si512(v, hi4);
                for (int t = 0; t < NT; t++) {
                    il[t] = dpbusd_bcast(il[t], vl, xq[t] + b * QK + 4 * k);
                    ih[t] = dpbusd_bcast(ih[t], vh, xq[t] + b * QK + 16 + 4 * k);
                }
            }
            for (int t = 0; t < NT; t++) {
                __m512i isum = _mm512_add_epi32(il[t], _mm512_srai_epi32(ih[t], 4));
                __m512 s = _mm512_mul_ps(ds, _mm512_set1_ps(xd[t][b]));
                const float xsd = (float)xs[t][b] * xd[t][b];
                __m512 term = _mm512_sub_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(isum), s), _mm512_mul_ps(dm, _mm512_set1_ps(xsd)));
                acc[t] = _mm512_add_ps(acc[t], term);
            }
        }
    }
    for (int t = 0; t < NT; t++)
        _mm512_mask_storeu_ps(y + (size_t)(t0 + t) * ys, (__mmask16)((1u << nr) - 1), acc[t]);
}

AVX512_TARGET static void qgroup_avx512(const uint8_t *w, size_t nb, int dt, const QAct *a, int T, float *y, size_t ys,
                                        int nr) {
    int t = 0;
    if (dt == DT_Q4_K) {
        for (; t + 4 <= T; t += 4) q4k_avx512_n(w, nb, a, t, 4, y, ys, nr);
        switch (T - t) {
        case 3: q4k_avx512_n(w, nb, a, t, 3, y, ys, nr); break;
        case 2: q4k_avx512_n(w, nb, a, t, 2, y, ys, nr); break;
        case 1: q4k_avx512_n(w, nb, a, t, 1, y, ys, nr); break;
        }
        return;
    }
    for (; t + 4 <= T; t += 4) qgroup_avx512_n(w, nb, dt, a, t, 4, y, ys, nr);
    switch (T - t) {
    case 3: qgroup_avx512_n(w, nb, dt, a, t, 3, y, ys, nr); break;
    case 2: qgroup_avx512_n(w, nb, dt, a, t, 2, y, ys, nr); break;
    case 1: qgroup_avx512_n(w, nb, dt, a, t, 1, y, ys, nr); break;
    }
}

/* Two full row groups (32 rows, the second gb bytes after the first) at once: each
 * activation broadcast feeds both, which is what bounds the one-group kernel (1.6-1.8x
 * faster for 4 tokens or more, Zen 5, one thread). Per output the same operations in the
 * same order as qgroup_avx512_n, so the same bits. */
static inline __attribute__((always_inline)) AVX512_TARGET void
qpair_avx512_n(const uint8_t *w, size_t gb, size_t nb, int dt, const QAct *a, int t0, const int NT, float *y, size_t ys) {
    const size_t tile = qtile_bytes(dt);
    const __m512i bias8 = _mm512_set1_epi8((char)0x80), lo4 = _mm512_set1_epi8(0x0f), hi4 = _mm512_set1_epi8((char)0xf0);
    __m512 acc[2][4];
    const int8_t *xq[4];
    for (int t = 0; t < NT; t++) {
        acc[0][t] = acc[1][t] = _mm512_setzero_ps();
        xq[t] = a->q + (size_t)(t0 + t) * a->cols_p;
    }
    for (size_t b = 0; b < nb; b++) {
        const uint8_t *tl0 = w + b * tile, *tl1 = tl0 + gb;
        prefetch_page_ahead(tl0, tile);
        prefetch_page_ahead(tl1, tile);
        const __m512 dw0 = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)tl0));
        const __m512 dw1 = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)tl1));
        __m512i is0[4], is1[4];
        if (dt == DT_Q8_0) {
            for (int t = 0; t < NT; t++) is0[t] = is1[t] = _mm512_set1_epi32(-128 * a->s[(size_t)(t0 + t) * a->nb + b]);
            for (int k = 0; k < 8; k++) {
                __m512i v0 = _mm512_xor_si512(_mm512_loadu_si512(tl0 + 32 + 64 * k), bias8);
                __m512i v1 = _mm512_xor_si512(_mm512_loadu_si512(tl1 + 32 + 64 * k), bias8);
                for (int t = 0; t < NT; t++) {
                    int32_t x0; memcpy(&x0, xq[t] + b * QK + 4 * k, 4);
                    __m512i xb = _mm512_set1_epi32(x0);
                    is0[t] = _mm512_dpbusd_epi32(is0[t], v0, xb);
                    is1[t] = _mm512_dpbusd_epi32(is1[t], v1, xb);
                }
            }
        } else {
            __m512i ih0[4], ih1[4];
            for (int t = 0; t < NT; t++) {
                is0[t] = is1[t] = _mm512_set1_epi32(-8 * a->s[(size_t)(t0 + t) * a->nb + b]);
                ih0[t] = ih1[t] = _mm512_setzero_si512();
            }
            for (int k = 0; k < 4; k++) {
                __m512i v0 = _mm512_loadu_si512(tl0 + 32 + 64 * k), v1 = _mm512_loadu_si512(tl1 + 32 + 64 * k);
                __m512i v0l = _mm512_and_si512(v0, lo4), v0h = _mm512_and_si512(v0, hi4);
                __m512i v1l = _mm512_and_si512(v1, lo4), v1h = _mm512_and_si512(v1, hi4);
                for (int t = 0; t < NT; t++) {
                    int32_t x0, x1;
                    memcpy(&x0, xq[t] + b * QK + 4 * k, 4);
                    memcpy(&x1, xq[t] + b * QK + 16 + 4 * k, 4);
                    __m512i xb0 = _mm512_set1_epi32(x0), xb1 = _mm512_set1_epi32(x1);
                    is0[t] = _mm512_dpbusd_epi32(is0[t], v0l, xb0);
                    is1[t] = _mm512_dpbusd_epi32(is1[t], v1l, xb0);
                    ih0[t] = _mm512_dpbusd_epi32(ih0[t], v0h, xb1);
                    ih1[t] = _mm512_dpbusd_epi32(ih1[t], v1h, xb1);
                }
            }
            for (int t = 0; t < NT; t++) {
                is0[t] = _mm512_add_epi32(is0[t], _mm512_srai_epi32(ih0[t], 4));
                is1[t] = _mm512_add_epi32(is1[t], _mm512_srai_epi32(ih1[t], 4));
            }
        }
        for (int t = 0; t < NT; t++) {
            __m512 dx = _mm512_set1_ps(a->d[(size_t)(t0 + t) * a->nb + b]);
            acc[0][t] = _mm512_add_ps(acc[0][t], _mm512_mul_ps(_mm512_cvtepi32_ps(is0[t]), _mm512_mul_ps(dw0, dx)));
            acc[1][t] = _mm512_add_ps(acc[1][t], _mm512_mul_ps(_mm512_cvtepi32_ps(is1[t]), _mm512_mul_ps(dw1, dx)));
        }
    }
    for (int t = 0; t < NT; t++) {
        _mm512_storeu_ps(y + (size_t)(t0 + t) * ys, acc[0][t]);
        _mm512_storeu_ps(y + (size_t)(t0 + t) * ys + 16, acc[1][t]);
    }
}
/* Q4_K, two full row groups at once: each activation broadcast feeds 4 vpdpbusd (2 groups
 * x low and high nibbles). Per output the operations of q4k_avx512_n, so the same bits. */
static inline __attribute__((always_inline)) AVX512_TARGET void
q4k_pair_avx512_n(const uint8_t *w, size_t gb, size_t nb, const QAct *a, int t0, const int NT, float *y, size_t ys) {
    const __m512i lo4 = _mm512_set1_epi8(0x0f);
    __m512 acc[2][4];
    const int8_t *xq[4];
    const float *xd[4];
    const int32_t *xs[4];
    for (int t = 0; t < NT; t++) {
        acc[0][t] = acc[1][t] = _mm512_setzero_ps();
        xq[t] = a->q + (size_t)(t0 + t) * a->cols_p;
        xd[t] = a->d + (size_t)(t0 + t) * a->nb;
        xs[t] = a->s + (size_t)(t0 + t) * a->nb;
    }
    for (size_t b0 = 0; b0 < nb; b0 += QKS) {
        const uint8_t *tl0 = w + b0 / QKS * Q4K_TILE, *tl1 = tl0 + gb;
        prefetch_page_ahead(tl0, Q4K_TILE);
        prefetch_page_ahead(tl1, Q4K_TILE);
        const __m512 d0 = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)tl0));
        const __m512 dmin0 = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(tl0 + 32)));
        const __m512 d1 = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)tl1));
        const __m512 dmin1 = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(tl1 + 32)));
        const int ns = nb - b0 < QKS ? (int)(nb - b0) : QKS;
        uint8_t scm0[4][64] __attribute__((aligned(64))), scm1[4][64] __attribute__((aligned(64)));
        {
            __m512i r0[4], r1[4];
            q4k_unpack_avx512(tl0, r0);
            q4k_unpack_avx512(tl1, r1);
            for (int i = 0; i < 4; i++) {
                _mm512_store_si512(scm0[i], r0[i]);
                _mm512_store_si512(scm1[i], r1[i]);
            }
        }
        for (int j = 0; j < ns; j++) {
            const size_t b = b0 + (size_t)j;
            __m512 ds0, dm0, ds1, dm1;
            q4k_scales_mem_avx512((const uint8_t(*)[64])scm0, j, d0, dmin0, &ds0, &dm0);
            q4k_scales_mem_avx512((const uint8_t(*)[64])scm1, j, d1, dmin1, &ds1, &dm1);
            const uint8_t *p0 = tl0 + 256 + 256 * j, *p1 = tl1 + 256 + 256 * j;
            /* one accumulator per group and token (high nibbles shifted down: 8 independent
             * chains hide vpdpbusd's latency, and 32 registers hold it all) */
            __m512i is0[4], is1[4];
            for (int t = 0; t < NT; t++) is0[t] = is1[t] = _mm512_setzero_si512();
            for (int k = 0; k < 4; k++) {
                __m512i v0 = _mm512_loadu_si512(p0 + 64 * k), v1 = _mm512_loadu_si512(p1 + 64 * k);
                __m512i v0l = _mm512_and_si512(v0, lo4), v0h = _mm512_and_si512(_mm512_srli_epi16(v0, 4), lo4);
                __m512i v1l = _mm512_and_si512(v1, lo4), v1h = _mm512_and_si512(_mm512_srli_epi16(v1, 4), lo4);
                for (int t = 0; t < NT; t++) {
                    int32_t x0, x1;
                    memcpy(&x0, xq[t] + b * QK + 4 * k, 4);
                    memcpy(&x1, xq[t] + b * QK + 16 + 4 * k, 4);
                    __m512i xb0 = _mm512_set1_epi32(x0), xb1 = _mm512_set1_epi32(x1);
                    is0[t] = _mm512_dpbusd_epi32(is0[t], v0l, xb0);
                    is1[t] = _mm512_dpbusd_epi32(is1[t], v1l, xb0);
                    is0[t] = _mm512_dpbusd_epi32(is0[t], v0h, xb1);
                    is1[t] = _mm512_dpbusd_epi32(is1[t], v1h, xb1);
                }
            }
            for (int t = 0; t < NT; t++) {
                const __m512 dx = _mm512_set1_ps(xd[t][b]), xsd = _mm512_set1_ps((float)xs[t][b] * xd[t][b]);
                __m512 term0 = _mm512_sub_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(is0[t]), _mm512_mul_ps(ds0, dx)), _mm512_mul_ps(dm0, xsd));
                __m512 term1 = _mm512_sub_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(is1[t]), _mm512_mul_ps(ds1, dx)), _mm512_mul_ps(dm1, xsd));
                acc[0][t] = _mm512_add_ps(acc[0][t], term0);
                acc[1][t] = _mm512_add_ps(acc[1][t], term1);
            }
        }
    }
    for (int t = 0; t < NT; t++) {
        _mm512_storeu_ps(y + (size_t)(t0 + t) * ys, acc[0][t]);
        _mm512_storeu_ps(y + (size_t)(t0 + t) * ys + 16, acc[1][t]);
    }
}

AVX512_TARGET static void qpair_avx512(const uint8_t *w, size_t gb, size_t nb, int dt, const QAct *a, int T, float *y, size_t ys) {
    int t = 0;
    if (dt == DT_Q4_K) {
        for (; t + 4 <= T; t += 4) q4k_pair_avx512_n(w, gb, nb, a, t, 4, y, ys);
        switch (T - t) {
        case 3: q4k_pair_avx512_n(w, gb, nb, a, t, 3, y, ys); break;
        case 2: q4k_pair_avx512_n(w, gb, nb, a, t, 2, y, ys); break;
        case 1: q4k_pair_avx512_n(w, gb, nb, a, t, 1, y, ys); break;
        }
        return;
    }
    for (; t + 4 <= T; t += 4) qpair_avx512_n(w, gb, nb, dt, a, t, 4, y, ys);
    switch (T - t) {
    case 3: qpair_avx512_n(w, gb, nb, dt, a, t, 3, y, ys); break;
    case 2: qpair_avx512_n(w, gb, nb, dt, a, t, 2, y, ys); break;
    case 1: qpair_avx512_n(w, gb, nb, dt, a, t, 1, y, ys); break;
    }
}
/* AVX2: 16 rows as two 8-lane halves. Without VNNI the byte products go through
 * vpmaddubsw, which saturates int16 pairs: Q8_0 uses |q_w| times q_x carrying q_w's sign
 * (pairs stay below 2 * 128 * 127 < 32767), Q4_0 its 0..15 nibbles as they are. Both give
 * the exact isum; up to 2 tokens share each load (16 ymm registers). */
#define AVX2_TARGET __attribute__((target("avx2,f16c")))
static inline __attribute__((always_inline)) AVX2_TARGET void
qgroup_avx2_n(const uint8_t *w, size_t nb, int dt, const QAct *a, int t0, const int NT, float *y, size_t ys, int nr) {
    const size_t tile = qtile_bytes(dt);
    const __m256i ones = _mm256_set1_epi16(1), lo4 = _mm256_set1_epi8(15);
    __m256 acc[2][2];
    const int8_t *xq[2];
    for (int t = 0; t < NT; t++) {
        acc[t][0] = acc[t][1] = _mm256_setzero_ps();
        xq[t] = a->q + (size_t)(t0 + t) * a->cols_p;
    }
    for (size_t b = 0; b < nb; b++) {
        const uint8_t *tl = w + b * tile;
        prefetch_ahead(tl, tile, t0 == 0);
        const __m256 dw0 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)tl));
        const __m256 dw1 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(tl + 16)));
        __m256i is[2][2];
        for (int t = 0; t < NT; t++) is[t][0] = is[t][1] = _mm256_setzero_si256();
        if (dt == DT_Q8_0) {
            for (int k = 0; k < 8; k++) {
                __m256i v0 = _mm256_loadu_si256((const __m256i *)(tl + 32 + 64 * k));
                __m256i v1 = _mm256_loadu_si256((const __m256i *)(tl + 64 + 64 * k));
                __m256i a0 = _mm256_abs_epi8(v0), a1 = _mm256_abs_epi8(v1);
                for (int t = 0; t < NT; t++) {
                    int32_t x4;
                    memcpy(&x4, xq[t] + b * QK + 4 * k, 4);
                    __m256i xb = _mm256_set1_epi32(x4);
                    __m256i p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(a0, _mm256_sign_epi8(xb, v0)), ones);
                    __m256i p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(a1, _mm256_sign_epi8(xb, v1)), ones);
                    is[t][0] = _mm256_add_epi32(is[t][0], p0);
                    is[t][1] = _mm256_add_epi32(is[t][1], p1);
                }
            }
        } else {
            for (int k = 0; k < 4; k++) {
                __m256i v0 = _mm256_loadu_si256((const __m256i *)(tl + 32 + 64 * k));
                __m256i v1 = _mm256_loadu_si256((const __m256i *)(tl + 64 + 64 * k));
                __m256i l0 = _mm256_and_si256(v0, lo4), h0 = _mm256_and_si256(_mm256_srli_epi16(v0, 4), lo4);
                __m256i l1 = _mm256_and_si256(v1, lo4), h1 = _mm256_and_si256(_mm256_srli_epi16(v1, 4), lo4);
                for (int t = 0; t < NT; t++) {
                    int32_t xl, xh;
                    memcpy(&xl, xq[t] + b * QK + 4 * k, 4);
                    memcpy(&xh, xq[t] + b * QK + 16 + 4 * k, 4);
                    __m256i bl = _mm256_set1_epi32(xl), bh = _mm256_set1_epi32(xh);
                    __m256i p0 = _mm256_add_epi16(_mm256_maddubs_epi16(l0, bl), _mm256_maddubs_epi16(h0, bh));
                    __m256i p1 = _mm256_add_epi16(_mm256_maddubs_epi16(l1, bl), _mm256_maddubs_epi16(h1, bh));
                    is[t][0] = _mm256_add_epi32(is[t][0], _mm256_madd_epi16(p0, ones));
                    is[t][1] = _mm256_add_epi32(is[t][1], _mm256_madd_epi16(p1, ones));
                }
            }
        }
        for (int t = 0; t < NT; t++) {
            size_t j = (size_t)(t0 + t) * a->nb + b;
            __m256i corr = _mm256_set1_epi32(dt == DT_Q8_0 ? 0 : 8 * a->s[j]);
            __m256 dx = _mm256_set1_ps(a->d[j]);
            __m256 f0 = _mm256_cvtepi32_ps(_mm256_sub_epi32(is[t][0], corr));
            __m256 f1 = _mm256_cvtepi32_ps(_mm256_sub_epi32(is[t][1], corr));
            acc[t][0] = _mm256_add_ps(acc[t][0], _mm256_mul_ps(f0, _mm256_mul_ps(dw0, dx)));
            acc[t][1] = _mm256_add_ps(acc[t][1], _mm256_mul_ps(f1, _mm256_mul_ps(dw1, dx)));
        }
    }
    for (int t = 0; t < NT; t++) {
        float out[QR];
        _mm256_storeu_ps(out, acc[t][0]);
        _mm256_storeu_ps(out + 8, acc[t][1]);
        memcpy(y + (size_t)(t0 + t) * ys, out, (size_t)nr * sizeof(float));
    }
}

/* Q4_K with AVX2: the quants as Q4_0's (0..15 through vpmaddubsw), the scales and mins
 * unpacked as in q4k_avx512_n and widened 8 rows at a time. */
static inline __attribute__((always_inline)) AVX2_TARGET void
q4k_avx2_n(const uint8_t *w, size_t nb, const QAct *a, int t0, const int NT, float *y, size_t ys, int nr) {
    const __m256i ones = _mm256_set1_epi16(1), lo4 = _mm256_set1_epi8(15);
    __m256 acc[2][2];
    const int8_t *xq[2];
    const float *xd[2];
    const int32_t *xs[2];
    for (int t = 0; t < NT; t++) {
        acc[t][0] = acc[t][1] = _mm256_setzero_ps();
        xq[t] = a->q + (size_t)(t0 + t) * a->cols_p;
        xd[t] = a->d + (size_t)(t0 + t) * a->nb;
        xs[t] = a->s + (size_t)(t0 + t) * a->nb;
    }
    for (size_t b0 = 0; b0 < nb; b0 += QKS) {
        const uint8_t *tl = w + b0 / QKS * Q4K_TILE;
        prefetch_ahead_at(tl, Q4K_TILE, t0 == 0, Q4K_LINE_AHEAD);
        __m256 d[2], dmin[2];
        for (int h = 0; h < 2; h++) {
            d[h] = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(tl + 16 * h)));
            dmin[h] = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(tl + 32 + 16 * h)));
        }
        const int ns = nb - b0 < QKS ? (int)(nb - b0) : QKS;
        /* the tile's scales and mins as bytes, as in q4k_avx512_n */
        uint8_t scm[4][64] __attribute__((aligned(32)));
        for (int i = 0; i < 64; i += 32) {
            const __m256i a0 = _mm256_loadu_si256((const __m256i *)(tl + 64 + i));
            const __m256i a1 = _mm256_loadu_si256((const __m256i *)(tl + 128 + i));
            const __m256i hb = _mm256_loadu_si256((const __m256i *)(tl + 192 + i)), b45 = _mm256_set1_epi8(0x30);
            _mm256_store_si256((__m256i *)(scm[0] + i),
                               _mm256_or_si256(_mm256_and_si256(a0, lo4), _mm256_and_si256(_mm256_slli_epi16(hb, 4), b45)));
            _mm256_store_si256((__m256i *)(scm[1] + i), _mm256_or_si256(_mm256_and_si256(a1, lo4), _mm256_and_si256(hb, b45)));
            _mm256_store_si256((__m256i *)(scm[2] + i), _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(a0, 4), lo4),
                                                                        _mm256_and_si256(_mm256_slli_epi16(hb, 2), b45)));
            _mm256_store_si256((__m256i *)(scm[3] + i), _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(a1, 4), lo4),
                                                                        _mm256_and_si256(_mm256_srli_epi16(hb, 2), b45)));
        }
        for (int j = 0; j < ns; j++) {
            const size_t b = b0 + (size_t)j;
            __m256 ds[2], dm[2];
            for (int h = 0; h < 2; h++) {
                __m256i sc = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(scm[j / 4] + 16 * (j % 4) + 8 * h)));
                __m256i mm = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(scm[2 + j / 4] + 16 * (j % 4) + 8 * h)));
                ds[h] = _mm256_mul_ps(d[h], _mm256_cvtepi32_ps(sc));
                dm[h] = _mm256_mul_ps(dmin[h], _mm256_cvtepi32_ps(mm));
            }
            const uint8_t *p = tl + 256 + 256 * j;
            __m256i is[2][2];
            for (int t = 0; t < NT; t++) is[t][0] = is[t][1] = _mm256_setzero_si256();
            for (int k = 0; k < 4; k++) {
                __m256i v0 = _mm256_loadu_si256((const __m256i *)(p + 64 * k));
                __m256i v1 = _mm256_loadu_si256((const __m256i *)(p + 32 + 64 * k));
                __m256i l0 = _mm256_and_si256(v0, lo4), h0 = _mm256_and_si256(_mm256_srli_epi16(v0, 4), lo4);
                __m256i l1 = _mm256_and_si256(v1, lo4), h1 = _mm256_and_si256(_mm256_srli_epi16(v1, 4), lo4);
                for (int t = 0; t < NT; t++) {
                    int32_t xl, xh;
                    memcpy(&xl, xq[t] + b * QK + 4 * k, 4);
                    memcpy(&xh, xq[t] + b * QK + 16 + 4 * k, 4);
                    __m256i bl = _mm256_set1_epi32(xl), bh = _mm256_set1_epi32(xh);
                    __m256i p0 = _mm256_add_epi16(_mm256_maddubs_epi16(l0, bl), _mm256_maddubs_epi16(h0, bh));
                    __m256i p1 = _mm256_add_epi16(_mm256_maddubs_epi16(l1, bl), _mm256_maddubs_epi16(h1, bh));
                    is[t][0] = _mm256_add_epi32(is[t][0], _mm256_madd_epi16(p0, ones));
                    is[t][1] = _mm256_add_epi32(is[t][1], _mm256_madd_epi16(p1, ones));
                }
            }
            for (int t = 0; t < NT; t++) {
                const __m256 dx = _mm256_set1_ps(xd[t][b]), xsd = _mm256_set1_ps((float)xs[t][b] * xd[t][b]);
                for (int h = 0; h < 2; h++) {
                    __m256 p = _mm256_mul_ps(_mm256_cvtepi32_ps(is[t][h]), _mm256_mul_ps(ds[h], dx));
                    acc[t][h] = _mm256_add_ps(acc[t][h], _mm256_sub_ps(p, _mm256_mul_ps(dm[h], xsd)));
                }
            }
        }
    }
    for (int t = 0; t < NT; t++) {
        float out[QR];
        _mm256_storeu_ps(out, acc[t][0]);
        _mm256_storeu_ps(out + 8, acc[t][1]);
        memcpy(y + (size_t)(t0 + t) * ys, out, (size_t)nr * sizeof(float));
    }
}

AVX2_TARGET static void qgroup_avx2(const uint8_t *w, size_t nb, int dt, const QAct *a, int T, float *y, size_t ys,
                                    int nr) {
    int t = 0;
    if (dt == DT_Q4_K) {
        for (; t + 2 <= T; t += 2) q4k_avx2_n(w, nb, a, t, 2, y, ys, nr);
        if (t < T) q4k_avx2_n(w, nb, a, t, 1, y, ys, nr);
        return;
    }
    for (; t + 2 <= T; t += 2) qgroup_avx2_n(w, nb, dt, a, t, 2, y, ys, nr);
    if (t < T) qgroup_avx2_n(w, nb, dt, a, t, 1, y, ys, nr);
}
#endif

/* The kernels this build has, best first; qkernel is the one in use. */
static const struct { const char *name; QGroupFn fn; QPairFn pair; } qkernels[] = {
#ifdef DS_X86
    {"avx512-vnni", qgroup_avx512, qpair_avx512},
    {"avx2", qgroup_avx2, NULL},
#endif
    {"portable", qgroup_portable, NULL},
};
static int qkernel = -1;

/* Row groups [g0, g0 + n) (n = 1 or 2) of a quantized W against a: the pair kernel when
 * there is one and both groups are full. */
static void qgroups(const Tensor *w, size_t g0, int n, const QAct *a, int T, float *y, size_t ys) {
    const size_t nb = (w->cols + QK - 1) / QK, gb = qgroup_bytes(w->dtype, w->cols), r0 = g0 * QR;
    /* one token: the single-group kernel, two streams fewer per thread, reads memory faster
     * (Q4_0 from DRAM, 2 threads: 76-88 GB/s against 47-64 for the pair kernel) */
    if (n == 2 && qkernels[qkernel].pair && r0 + 2 * QR <= w->rows && T > 1) {
        qkernels[qkernel].pair(w->data + g0 * gb, gb, nb, w->dtype, a, T, y + r0, ys);
        return;
    }
    for (int i = 0; i < n; i++) {
        size_t r = r0 + (size_t)i * QR;
        int nr = w->rows - r < QR ? (int)(w->rows - r) : QR;
        qkernels[qkernel].fn(w->data + (g0 + (size_t)i) * gb, nb, w->dtype, a, T, y + r, ys, nr);
    }
}

#ifdef DS_X86
#include <cpuid.h>
/* F16C (half <-> float): CPUID leaf 1, ECX bit 29. Asked directly because clang does not
 * know "f16c" in __builtin_cpu_supports; the AVX2 / AVX-512 checks that come with it also
 * cover the operating system's support for the vector registers. */
static int cpu_has_f16c(void) {
    unsigned a, b, c, d;
    return __get_cpuid(1, &a, &b, &c, &d) && (c >> 29 & 1);
}
#endif

static int qkernel_supported(int i) {
#ifdef DS_X86
    __builtin_cpu_init();
    if (qkernels[i].fn == qgroup_avx512)
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni") && cpu_has_f16c();
    if (qkernels[i].fn == qgroup_avx2) return __builtin_cpu_supports("avx2") && cpu_has_f16c();
#endif
    return qkernels[i].fn == qgroup_portable;
}

/* The page prefetch helps on some CPUs and hurts on others: on a Zen 5 VM it made the
 * full-size decode 1.24-1.4x faster, on a Zen 4 VM (AMD family 19h) the one-token kernels
 * read 3-15% slower with it and a plain read 10-25% slower, alternating in one process.
 * Off on family 19h, on elsewhere; DSEEK_PAGE_PREFETCH=0|1 decides instead. */
static void page_prefetch_init(void) {
    const char *e = getenv("DSEEK_PAGE_PREFETCH");
    if (e && (!strcmp(e, "0") || !strcmp(e, "1"))) {
        page_prefetch = *e == '1';
        return;
    }
#ifdef DS_X86
    unsigned a, b, c, d;
    if (__get_cpuid(0, &a, &b, &c, &d) && b == 0x68747541 /* "Auth"enticAMD */ && __get_cpuid(1, &a, &b, &c, &d)) {
        const unsigned family = (a >> 8 & 0xf) + (a >> 20 & 0xff);
        page_prefetch = family != 0x19;
    }
#endif
}

/* Picks the best kernel this CPU runs, or the one DSEEK_KERNEL names (an error if this CPU
 * or build cannot run it: never a silent substitute). */
static int qkernels_init(char *err, size_t errlen) {
    const char *want = getenv("DSEEK_KERNEL");
    const int n = (int)(sizeof qkernels / sizeof qkernels[0]);
    page_prefetch_init();
    for (int i = 0; i < n; i++) {
        if (want && *want && strcmp(want, qkernels[i].name)) continue;
        if (qkernel_supported(i)) { qkernel = i; return 0; }
        if (want && *want) break;
    }
    seterr(err, errlen, "DSEEK_KERNEL=%s: %s", want ? want : "",
           want ? "this CPU or build cannot run it (avx512-vnni, avx2 or portable)" : "no kernel");
    return -1;
}

const char *dseek_kernel_name(void) {
    if (qkernel < 0 && qkernels_init(NULL, 0)) return "none";
    return qkernels[qkernel].name;
}

int dseek_page_prefetch(void) {
    if (qkernel < 0) qkernels_init(NULL, 0);
    return page_prefetch;
}

/* The activations of a from row `row` on (a view, nothing copied). */
static QAct qact_rows(const QAct *a, size_t row) {
    return (QAct){a->q + row * a->cols_p, a->d + row * a->nb, a->s + row * a->nb, a->cols_p, a->nb};
}

/* One quantized product of a batch: y[t * ys + r] = (a W^T)[t][r] for t < T. */
typedef struct {
    const Tensor *w;
    QAct a;                   /* activations, T rows (a view) */
    int T;
    float *y;
    size_t ys;                /* row stride of y */
} QJob;

/* Row groups per unit of qmatmul_jobs: two (the pair kernel's), or for one token as many
 * as make UNIT_BYTES of weights: a product of short rows, such as a head's W_UK^T (4 KiB a
 * pair of groups), would otherwise spend about as long starting units as streaming them. */
#define UNIT_BYTES ((size_t)32 << 10)
static size_t unit_groups(const QJob *q) {
    if (q->T > 1) return 2;
    const size_t gb = qgroup_bytes(q->w->dtype, q->w->cols), u = (UNIT_BYTES + gb - 1) / gb;
    return u < 2 ? 2 : u;
}

/* Unit i of qmatmul_jobs; *j is the job of the previous unit this thread ran (units come
 * to each thread in increasing order). */
static void qjobs_unit(const QJob *job, const size_t *first, int *j, size_t i) {
    while (first[*j + 1] <= i) (*j)++;
    const QJob *q = &job[*j];
    const size_t ng = (q->w->rows + QR - 1) / QR, ug = unit_groups(q), g = ug * (i - first[*j]);
    /* the kernels touch pages PAGE_AHEAD bytes on; a unit's own first ones come from here
     * (a thread's next unit often lies in another product) */
    const uint8_t *start = q->w->data + g * qgroup_bytes(q->w->dtype, q->w->cols);
    prefetch_pages(start, PAGE_AHEAD);
    qgroups(q->w, g, (int)(ng - g < ug ? ng - g : ug), &q->a, q->T, q->y, q->ys);
}

/* A thread's share of units in qmatmul_jobs' one-token split: [lo, hi) packed in one word
 * (lo in the high half), alone on its cache line. The owner takes units from the front;
 * a thread that has run out takes the back half of another's share. */
typedef struct {
    _Atomic uint64_t range;
    char pad[64 - sizeof(uint64_t)];
} UnitRange;

static uint64_t range_pack(uint64_t lo, uint64_t hi) { return lo << 32 | hi; }

/* One thread's part of a one-token qmatmul_jobs: its own contiguous share first, from the
 * front, then halves of what others still have left. */
static void qjobs_steal(const QJob *job, const size_t *first, UnitRange *rg, size_t nth, size_t tid) {
    int j = 0;
    for (;;) {
        uint64_t v = atomic_load(&rg[tid].range);
        uint64_t lo = v >> 32, hi = v & 0xffffffffu;
        if (lo < hi) {
            if (atomic_compare_exchange_weak(&rg[tid].range, &v, range_pack(lo + 1, hi))) {
                if (first[j] > lo) j = 0; /* a stolen share may lie before the last one */
                qjobs_unit(job, first, &j, lo);
            }
            continue;
        }
        int got = 0;
        for (size_t o = 1; o < nth && !got; o++) {
            UnitRange *victim = &rg[(tid + o) % nth];
            uint64_t w = atomic_load(&victim->range);
            for (;;) {
                uint64_t l2 = w >> 32, h2 = w & 0xffffffffu, mid = l2 + (h2 - l2) / 2;
                if (h2 - l2 < 2) break; /* one unit left: its owner is about to run it */
                if (atomic_compare_exchange_weak(&victim->range, &w, range_pack(l2, mid))) {
                    atomic_store(&rg[tid].range, range_pack(mid, h2));
                    got = 1;
                    break;
                }
            }
        }
        if (!got) return;
    }
}

/* The units of n products: first[j] is product j's first unit, first[n] (returned) the total. */
static size_t qjobs_units(const QJob *job, int n, size_t *first) {
    /* units of unit_groups() row groups (the last of a product may have fewer) */
    first[0] = 0;
    for (int j = 0; j < n; j++) {
        const size_t ug = unit_groups(&job[j]);
        first[j + 1] = first[j] + ((job[j].w->rows + QR - 1) / QR + ug - 1) / ug;
    }
    return first[n];
}

/* Thread tid's own share of a one-token split of total units (inside the region). */
static void qjobs_share(UnitRange *rg, size_t total, size_t nth, size_t tid) {
    atomic_store(&rg[tid].range, range_pack(total * tid / nth, total * (tid + 1) / nth));
}

/* Runs n quantized products in one parallel region (one fork and join instead of one per
 * product: in decode a MoE layer is a dozen small products); each output row comes from
 * the same kernel call whichever thread runs it, so the bits never depend on the split.
 * first[n + 1] is scratch. */
static void qmatmul_jobs(const QJob *job, int n, size_t *first) {
    const size_t total = qjobs_units(job, n, first);
    int many = 0; /* tokens: prefill, MTP verify */
    for (int j = 0; j < n; j++) many |= job[j].T > 1;
    if (many) {
        /* units handed out four at a time: a prefill's units cost from a few tokens (a
         * routed expert) to all of them (the shared one), and the two vCPUs of this
         * machine do not run at the same speed (pp512 +10% on Q8_0 over a static split) */
#pragma omp parallel
        {
            int j = 0;
#pragma omp for schedule(dynamic, 4)
            for (size_t i = 0; i < total; i++) qjobs_unit(job, first, &j, i);
        }
        return;
    }
    /* one token: one contiguous share of units per thread, which streams memory faster
     * than units handed out dynamically (decode 96 against 83 tok/s, Q4_0), and a thread
     * that finishes first takes the back half of another's rest: this machine's two vCPUs
     * do not run at the same speed, and with equal shares the faster one waited at every
     * join (decode MoE streams 46 -> 51 GB/s, Q8_0, 2 threads) */
    /* the shares are set before the threads start (no barrier in the region), for the
     * team OpenMP normally gives; a smaller team sets its own */
    const size_t pre = (size_t)n_threads();
    UnitRange rg[pre];
    for (size_t i = 0; i < pre; i++) qjobs_share(rg, total, pre, i);
#pragma omp parallel
    {
        size_t nth = (size_t)n_threads_in_team(), tid = (size_t)thread_id();
        DS_ASSERT(nth <= pre);
        if (nth != pre) {
            qjobs_share(rg, total, nth, tid);
#pragma omp barrier
        }
        qjobs_steal(job, first, rg, nth, tid);
    }
}

/* y[T, rows] = a W^T for quantized W and activations already in a: one product of
 * qmatmul_jobs. */
static void qmatmul_act(float *y, const QAct *a, const Tensor *w, int T) {
    DS_ASSERT(a->nb == (w->cols + QK - 1) / QK);
    const QJob job = {w, *a, T, y, w->rows};
    size_t first[2];
    qmatmul_jobs(&job, 1, first);
}

/* sum of a[i] * b[i] in 16 independent lanes (lane i % 16), then the lanes added in a fixed
 * tree: the compiler can keep the lanes in vector registers, and every build (AVX-512,
 * AVX2, no SIMD) does the same float operations in the same order. */
static float dot_f32(const float *a, const float *b, size_t n) {
    float acc[16] = {0};
    size_t i = 0;
    for (; i + 16 <= n; i += 16)
        for (int k = 0; k < 16; k++) acc[k] += a[i + k] * b[i + k];
    for (int k = 0; i + (size_t)k < n; k++) acc[k] += a[i + k] * b[i + k];
    for (int w = 8; w >= 1; w /= 2)
        for (int k = 0; k < w; k++) acc[k] += acc[k + w];
    return acc[0];
}

/* 16 floats as one value (GCC and Clang vector extensions): element-wise arithmetic that
 * the compiler keeps in vector registers, an AVX-512 register or two AVX2 ones or plain
 * floats, with the same float operations in every build. */
typedef float f32x16 __attribute__((vector_size(64)));
/* an f32x16 read from any float address (no alignment asked, may alias floats) */
typedef float f32x16_u __attribute__((vector_size(64), aligned(4), may_alias));
#define f32x16_load(p) ((f32x16)*(const f32x16_u *)(p))
/* 16 bfloat16 values from any address, widened to an f32x16 (the bits moved up 16) */
typedef uint16_t u16x16_u __attribute__((vector_size(32), aligned(2), may_alias));
typedef uint32_t u32x16 __attribute__((vector_size(64)));
#define bf16x16_load(p) ((f32x16)(__builtin_convertvector(*(const u16x16_u *)(p), u32x16) << 16))

/* dot_f32's closing tree over the 16 lanes of v (lane k + 8, then k + 4, k + 2 and k + 1
 * added to lane k) as three vector adds instead of fifteen scalar ones. */
typedef float f32x8 __attribute__((vector_size(32)));
typedef float f32x4 __attribute__((vector_size(16)));
static inline float f32x16_hsum(const f32x16 *v) {
    f32x8 a, b;
    memcpy(&a, v, sizeof a);
    memcpy(&b, (const float *)v + 8, sizeof b);
    a += b;
    f32x4 c, d;
    memcpy(&c, &a, sizeof c);
    memcpy(&d, (const float *)&a + 4, sizeof d);
    c += d;
    float e[4];
    memcpy(e, &c, sizeof e);
    return (e[0] + e[2]) + (e[1] + e[3]);
}

/* out[i] = dot_f32(w + i * ldw, x, n) for i < nr (at most 4): the rows' sums run side by
 * side (one sum waits on its adder at every step) and share the loads of x; each row's
 * floats meet in dot_f32's order, so the results are its bits. */
static inline __attribute__((always_inline)) void dot_f32_n(const float *w, size_t ldw, const int NR, const float *x,
                                                             size_t n, float *out) {
    f32x16 acc[4];
    for (int r = 0; r < NR; r++) acc[r] = (f32x16){0};
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        const f32x16 xv = f32x16_load(x + i);
        for (int r = 0; r < NR; r++) acc[r] += f32x16_load(w + r * ldw + i) * xv;
    }
    for (int r = 0; r < NR; r++) {
        if (i < n) { /* the last n % 16 products go to lanes 0.. as in dot_f32 */
            float a[16];
            memcpy(a, &acc[r], sizeof a);
            for (int k = 0; i + (size_t)k < n; k++) a[k] += w[r * ldw + i + k] * x[i + k];
            memcpy(&acc[r], a, sizeof a);
        }
        out[r] = f32x16_hsum(&acc[r]);
    }
}

static void dot_f32_rows(const float *w, size_t ldw, size_t nr, const float *x, size_t n, float *out) {
    if (nr == 4) dot_f32_n(w, ldw, 4, x, n, out);
    else
        for (size_t r = 0; r < nr; r++) dot_f32_n(w + r * ldw, ldw, 1, x, n, out + r);
}

/* Scratch the matmul needs, owned by the session. */
typedef struct {
    float *rowbuf;            /* [threads, max_in] one converted weight row per thread */
    size_t rowbuf_stride;
    float *wbuf;              /* [wbuf_len] a block of converted weight rows for sgemm */
    size_t wbuf_len;
    QAct qa;                  /* activations of a quantized product: room for [B, max_in rounded up to 32] */
} Scratch;

/* y[T, rows] = x[T, cols] W^T. Quantized W: the int8 kernels. Few tokens: each thread converts one weight row at a time
 * and dots it with every token (the weight is read once). Many tokens: blocks of rows are
 * converted to float32 and multiplied with OpenBLAS sgemm. */
#define SGEMM_MIN_TOKENS 16
static void matmul(Scratch *sc, float *y, const float *x, const Tensor *w, int T) {
    size_t rows = w->rows, cols = w->cols;
    /* Quantized weights: the int8 kernels for any T. In prefill too they beat dequantizing
     * rows for sgemm (2.4x at 128 tokens on V2-Lite shapes, one thread), and a token's
     * product then does not depend on how many tokens share its step. */
    if (is_quant(w->dtype)) {
        qact_quantize(&sc->qa, x, cols, T);
        qmatmul_act(y, &sc->qa, w, T);
        return;
    }
    if (T < SGEMM_MIN_TOKENS) {
        const size_t rb = cols * elem_bytes(w->dtype); /* bytes of a row */
#pragma omp parallel for schedule(static)
        for (size_t r = 0; r < rows; r++) {
            float *row = sc->rowbuf + (size_t)thread_id() * sc->rowbuf_stride;
            const float *wr = row;
            prefetch_ahead(w->data + r * rb, rb, 1);
            if (w->dtype == DT_F32) wr = (const float *)w->data + r * cols;
            else tensor_row(w, r, row);
            for (int t = 0; t < T; t++) y[(size_t)t * rows + r] = dot_f32(wr, x + (size_t)t * cols, cols);
        }
        return;
    }
    /* Many tokens: each thread takes blocks of rows, converts them into its part of wbuf
     * and multiplies them with a single-threaded sgemm (dseek_model_open keeps OpenBLAS to
     * one thread: its own thread pool spinning beside OpenMP's made both crawl). */
#pragma omp parallel
    {
        const size_t nth = (size_t)n_threads_in_team(), per = sc->wbuf_len / nth / cols;
        float *buf = sc->wbuf + (size_t)thread_id() * per * cols;
        DS_ASSERT(per >= 1);
        const size_t block = per < 64 ? per : 64;
#pragma omp for schedule(dynamic, 1)
        for (size_t r0 = 0; r0 < rows; r0 += block) {
            size_t nr = r0 + block <= rows ? block : rows - r0;
            const float *wr = buf;
            if (w->dtype == DT_F32) wr = (const float *)w->data + r0 * cols;
            else
                for (size_t r = 0; r < nr; r++) tensor_row(w, r0 + r, buf + r * cols);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, (int)nr, (int)cols, 1.0f, x, (int)cols, wr,
                        (int)cols, 0.0f, y + r0, (int)rows);
        }
    }
}

/* out[n] = x[n] / sqrt(mean(x^2) + eps) * w[n] */
static void rmsnorm(float *out, const float *x, const float *w, size_t n, float eps) {
    double ss = 0;
    for (size_t i = 0; i < n; i++) ss += (double)x[i] * x[i];
    float inv = (float)(1.0 / sqrt(ss / (double)n + eps));
    for (size_t i = 0; i < n; i++) out[i] = x[i] * inv * w[i];
}

/* Rotates adjacent pairs (2i, 2i+1) of v[d] by the angles of one position (SPEC:
 * interleaved RoPE): cs holds their d/2 cosines then d/2 sines, times the YaRN mscale
 * (rope_fill). */
static void rope_apply(float *v, int d, const float *cs) {
    for (int i = 0; i < d / 2; i++) {
        const float c = cs[i], s = cs[d / 2 + i];
        float a = v[2 * i], b = v[2 * i + 1];
        v[2 * i] = a * c - b * s;
        v[2 * i + 1] = a * s + b * c;
    }
}

/* e^x for silu and the decode softmax, in plain float arithmetic the compiler can vectorize
 * (glibc's expf is a call per element: a third of the MoE's non-matmul time in a prefill). x = n ln2 + r with
 * |r| <= ln2 / 2, e^r by its degree-7 Taylor polynomial (within 2 ulp of e^x over the range),
 * times 2^n built in the exponent bits. n is rounded with the 1.5 * 2^23 trick, which is
 * exact under round-to-nearest, so every build gives the same bits (no FMA contraction:
 * the Makefile passes -ffp-contract=off). x is clamped to [-87, 88], where 2^n stays a
 * normal float: silu's e^-x then saturates at 1.6e38 instead of overflowing, and a NaN
 * never reaches the integer conversion (found by the safetensors fuzz target). */
static inline float exp_poly(float x) {
    x = x > -87.0f ? x : -87.0f; /* (NaN too: silu's numerator still carries it) */
    x = x < 88.0f ? x : 88.0f;
    const float n = (x * 1.44269504f + 12582912.0f) - 12582912.0f;
    const float r = (x - n * 0.693359375f) - n * -2.12194440e-4f; /* ln2 = hi + lo, hi exact in 9 bits */
    float p = 1.0f / 5040;
    p = p * r + 1.0f / 720;
    p = p * r + 1.0f / 120;
    p = p * r + 1.0f / 24;
    p = p * r + 1.0f / 6;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    union { uint32_t u; float f; } two = {.u = (uint32_t)((int32_t)n + 127) << 23};
    return p * two.f;
}

static inline float silu(float x) { return x / (1.0f + exp_poly(-x)); }

/* ============================================================================
 * 6. The forward pass
 * ========================================================================== */

struct dseek_session {
    const dseek_model *m;
    int n_ctx;                /* positions the cache holds */
    int n_batch;              /* most tokens in one internal step */
    int nth;                  /* threads the per-thread buffers were sized for */
    Scratch sc;
    float *x;                 /* residual stream [B, D] */
    float *xn;                /* normed input of a block [B, D] */
    float *y;                 /* block output [B, D] */
    float *qa;                /* q_a output [B, q_lora] */
    float *q;                 /* queries [B, H*(nope+rope)] */
    float *kv;                /* kv_a output [B, R+rope] */
    float *heads;             /* attention output of all heads [B, H*v] */
    float *kvb;               /* kv_b_proj of the current layer in float32 [H*(nope+v), R] */
    float *kvbh;              /* per thread: one head's rows of it [nope+v, R] */
    /* the int8 attention path (layers with kb_t) */
    float *lat;               /* [B, H, R] q_lat of each token and head, then its o_lat */
    float *qtok;              /* [H, R + rope] one token's q_lat and roped q_pe (attend_blocks) */
    float *part;              /* [KEY_BLOCKS_MAX, H, R + 2] per block of keys and head: max, sum, o (attend_blocks) */
    float *qblk;              /* per thread [ATT_BLOCK, R + rope]: queries of a block (attend_all_sgemm) */
    float *scores;            /* per thread [ATT_BLOCK, n_ctx]: their scores */
    QAct qlat;                /* per head, T rows: q_nope, then o_lat [H * B, R rounded up to 32] */
    Tensor *hw;               /* per head: views of its kb_t rows and its W_UV rows [2H] */
    QAct qlc;                 /* every cached latent of a layer as int8 [n_ctx, R rounded up] (attend_plain_q) */
    float *pbuf;              /* per thread, pbuf_stride floats: attend_plain_q's buffers */
    size_t pbuf_stride;
    QJob *hjobs;              /* [H] */
    size_t *hfirst;           /* [H + 1] */
    float *att;               /* per thread: q_lat+q_pe [R+rope], o_lat [R], scores [n_ctx] */
    size_t att_stride;
    float *gate, *up;         /* MLP activations [B, max_inter] */
    float *rlogits;           /* router scores [B, E] */
    /* quantized experts (moe_experts_q): RA = min(B, MOE_CHUNK) * (k + 1) rows */
    QAct qx;                  /* inputs gathered per expert [RA, D rounded up to 32] */
    QAct qh;                  /* hidden states [RA, moe_inter rounded up], a region per expert */
    float *hg, *hu;           /* gate and up outputs [RA, moe_inter] */
    float *hy;                /* expert outputs [RA, D] */
    int *hslot;               /* the token * k + slot of each row [RA] (-1: shared expert) */
    int *hjob;                /* the job (expert) of each row [RA] */
    int *tcount, *trows;      /* per token its routed rows, in expert order [BT], [BT, k] */
    const MLP **jmlp;         /* per job: the expert, its first row, its rows [E + 1] */
    int *jrow, *jn;
    QJob *qjobs;              /* [3 * (E + 1)] */
    size_t *qfirst;           /* [3 * (E + 1) + 2] */
    SpinBarrier bar;          /* for the threads of one-region steps (moe_decode_q, attend_blocks) */
    int *topk;                /* chosen experts [B, k] */
    float *topw;              /* their weights [B, k] */
    int *etok;                /* tokens routed to the expert being run [B] */
    float *xe, *ye;           /* their inputs and outputs [B, D] */
    float *hid;               /* final-normed hidden states (the MTP head's input): for a model
                                 with MTP one row per position [n_ctx, D], else [B, D] */
    int hid_by_pos;           /* rows of hid are positions */
    int hid_end;              /* positions below this have their row (MTP models) */
    float *hchain;            /* hidden state fed to a chained MTP draft [D] */
    float *xcat;              /* MTP input [enorm(e), hnorm(h)] [B, 2D] */
    void *cache;              /* latent cache [L + n_mtp][n_ctx][R + rope] (huge_zalloc),
                                 float32 or with cache_bf16 bfloat16 */
    size_t cache_bytes;
    int cache_bf16;
    float *cview;             /* a bfloat16 cache's layer in float32 for the matrix-product
                                 paths of prompts [n_ctx][R + rope] (cache_f32) */
    float *rope_cs;           /* RoPE cosines and sines per position [n_ctx][rope] (rope_apply) */
    int rope_n;               /* positions below this have their row */
    dseek_profile prof;       /* time spent per part of the model, accumulated */
    int *route_log;           /* optional: chosen experts [L + n_mtp][route_n][k], or NULL */
    int route_n;
    char err[512];
};

/* The RoPE angles' cosines and sines of position p (filled by rope_fill). */
static float *rope_at(const dseek_session *s, int p) {
    return s->rope_cs + (size_t)p * (size_t)s->m->c.qk_rope_head_dim;
}

/* Fills the RoPE rows of positions up to n (exclusive): every head and layer of a step
 * rotates by the same angles, so each position's sin and cos are computed once. */
static void rope_fill(dseek_session *s, int n) {
    const dseek_model *m = s->m;
    const int d = m->c.qk_rope_head_dim;
    for (; s->rope_n < n; s->rope_n++) {
        float *cs = rope_at(s, s->rope_n);
        for (int i = 0; i < d / 2; i++) {
            const float ang = (float)s->rope_n * m->inv_freq[i];
            cs[i] = (float)cos((double)ang) * m->rope_mscale;
            cs[d / 2 + i] = (float)sin((double)ang) * m->rope_mscale;
        }
    }
}

/* MLP: y[T, D] = down(silu(gate(x)) * up(x)) */
/* y1 = x W1^T and y2 = x W2^T: with both quantized and few tokens, x is quantized once and
 * both products run in one parallel region; otherwise two matmuls. */
static void matmul2(dseek_session *s, float *y1, const Tensor *w1, float *y2, const Tensor *w2, const float *x, int T) {
    if (is_quant(w1->dtype) && is_quant(w2->dtype) && T < SGEMM_MIN_TOKENS) {
        qact_quantize(&s->sc.qa, x, w1->cols, T);
        s->qjobs[0] = (QJob){w1, s->sc.qa, T, y1, w1->rows};
        s->qjobs[1] = (QJob){w2, s->sc.qa, T, y2, w2->rows};
        qmatmul_jobs(s->qjobs, 2, s->qfirst);
        return;
    }
    matmul(&s->sc, y1, x, w1, T);
    matmul(&s->sc, y2, x, w2, T);
}

static void mlp_forward(dseek_session *s, const MLP *f, const float *x, float *y, int T) {
    size_t I = f->gate.rows;
    matmul2(s, s->gate, &f->gate, s->up, &f->up, x, T);
    for (size_t i = 0; i < (size_t)T * I; i++) s->gate[i] = silu(s->gate[i]) * s->up[i];
    matmul(&s->sc, y, s->gate, &f->down, T);
}

/* Rows [r0, r0 + n) of kv_b_proj in float32 into out[n, R] (a quantized kv_b: r0 and n
 * on row-group boundaries, or n reaching the last row). Called inside or outside a
 * parallel region: it starts none itself when called inside one. */
static void kv_b_rows(const Tensor *w, size_t r0, size_t n, float *out) {
    const size_t R = w->cols;
    const int outer = !in_parallel(); /* start threads only when not inside a region already */
    (void)outer;                      /* (used by the pragmas alone, absent without OpenMP) */
    if (is_quant(w->dtype)) {
        const size_t gb = qgroup_bytes(w->dtype, R), g0 = r0 / QR, ng = (n + QR - 1) / QR;
#pragma omp parallel for schedule(static) if (outer)
        for (size_t g = 0; g < ng; g++)
            qgroup_dequant(w->dtype, w->data + (g0 + g) * gb, R, out + g * QR * R, n - g * QR < QR ? (int)(n - g * QR) : QR);
    } else {
#pragma omp parallel for schedule(static) if (outer)
        for (size_t r = 0; r < n; r++) tensor_row(w, r0 + r, out + r * R);
    }
}

/* Heads of one token that attend_part_n runs together, at most. */
#define ATT_HEADS 16

/* a latent-cache number as float32: element k of float32 rows, or of bfloat16 ones (BF) */
#define CACHE_AT(cache, BF, k) ((BF) ? bf16_to_f32(((const uint16_t *)(cache))[k]) : ((const float *)(cache))[k])

/* Attention of a decoded token over a long context reads the layer's latent cache once per
 * group of heads and keeps the work in cache: the positions are cut into blocks (at most
 * KEY_BLOCKS_MAX, of at least 256 positions), every (block, group of heads) runs on its
 * own, and the blocks' partial softmaxes are merged per head in block order. The blocks
 * depend only on the position, so a token's bits do not depend on the threads or on the
 * other tokens of its step. */
#define KEY_BLOCKS_MAX 32
static size_t key_block(size_t n) {
    const size_t kb = round_up((n + KEY_BLOCKS_MAX - 1) / KEY_BLOCKS_MAX, 16);
    return kb < 256 ? 256 : kb;
}

/* Bytes of cache rows that attend_part_n asks for ahead of the row it scores. A layer's
 * rows come from memory (every weight of the token went through the caches since), and the
 * hardware alone fetches them as the slow score loop asks: prefetching whole rows ahead
 * took the attention of a 2048-position context from 555-752 to 406-442 us a token and
 * layer (V2-Lite shapes, float32 cache, 2 threads). */
#define ATT_PREFETCH 8192

/* Absorbed MLA attention of NH heads of one token over cache positions [j0, j1) (float32
 * rows, or bfloat16 with BF): qc[NH][R + rope] holds each head's q_lat = W_UK^T q_nope and
 * its roped q_pe; part[h] ([R + 2]) gets the scores' max m, the sum l of exp(score - m)
 * and o[R] = sum exp(score - m) c_j[:R] (o / l is the head's o_lat over these positions).
 * The heads share each pass over the rows and their 16-lane sums run side by side (one
 * head's sum would wait on its adder at every step); each score is dot_f32's sum, in its
 * order, so the bits do not depend on how heads are grouped. sc: scratch [NH][j1 - j0]. */
static inline __attribute__((always_inline)) void attend_part_n(const dseek_session *s, const void *cache,
                                                                const float *qc, const int NH, const int BF,
                                                                size_t j0, size_t j1, float *sc, float *part) {
    const dseek_model *m = s->m;
    const size_t R = (size_t)m->c.kv_lora_rank, C = R + (size_t)m->c.qk_rope_head_dim, n = j1 - j0;
    const size_t rb = C * (BF ? sizeof(uint16_t) : sizeof(float)), ahead = (ATT_PREFETCH + rb - 1) / rb;
    for (size_t j = j0; j < j1; j++) {
        if (j + ahead < j1) {
            const char *next = (const char *)cache + (j + ahead) * rb;
            for (size_t o = 0; o < rb; o += 64) __builtin_prefetch(next + o, 0, 3);
        }
        f32x16 acc[ATT_HEADS];
        for (int h = 0; h < NH; h++) acc[h] = (f32x16){0};
        size_t i = 0;
        for (; i + 16 <= C; i += 16) {
            const f32x16 cv = BF ? bf16x16_load((const uint16_t *)cache + j * C + i)
                                 : f32x16_load((const float *)cache + j * C + i);
            for (int h = 0; h < NH; h++) acc[h] += f32x16_load(qc + h * C + i) * cv;
        }
        for (int h = 0; h < NH; h++) {
            if (i < C) { /* the last C % 16 products go to lanes 0.. as in dot_f32 */
                float a[16];
                memcpy(a, &acc[h], sizeof a);
                for (int k = 0; i + (size_t)k < C; k++) a[k] += qc[h * C + i + k] * CACHE_AT(cache, BF, j * C + i + k);
                memcpy(&acc[h], a, sizeof a);
            }
            sc[h * n + j - j0] = f32x16_hsum(&acc[h]) * m->softmax_scale;
        }
    }
    for (int h = 0; h < NH; h++) {
        float *sh = sc + h * n, mx = -INFINITY, sum = 0;
        for (size_t j = 0; j < n; j++) mx = sh[j] > mx ? sh[j] : mx;
        /* (a NaN score stays NaN: exp_poly alone would clamp it to a tiny weight) */
        for (size_t j = 0; j < n; j++) sh[j] = sh[j] == sh[j] ? exp_poly(sh[j] - mx) : sh[j];
        for (size_t j = 0; j < n; j++) sum += sh[j];
        part[h * (R + 2)] = mx;
        part[h * (R + 2) + 1] = sum;
    }
    /* o = sum_j e_j c_j[:R], 16 columns of every head at a time held in registers while
     * the block's rows (in cache since the scores) go by */
    size_t r = 0;
    for (; r + 16 <= R; r += 16) {
        f32x16 acc[ATT_HEADS];
        for (int h = 0; h < NH; h++) acc[h] = (f32x16){0};
        for (size_t j = j0; j < j1; j++) {
            const f32x16 cv = BF ? bf16x16_load((const uint16_t *)cache + j * C + r)
                                 : f32x16_load((const float *)cache + j * C + r);
            for (int h = 0; h < NH; h++) acc[h] += sc[h * n + j - j0] * cv;
        }
        for (int h = 0; h < NH; h++) memcpy(part + h * (R + 2) + 2 + r, &acc[h], sizeof acc[h]);
    }
    for (; r < R; r++)
        for (int h = 0; h < NH; h++) {
            float o = 0;
            for (size_t j = j0; j < j1; j++) o += sc[h * n + j - j0] * CACHE_AT(cache, BF, j * C + r);
            part[h * (R + 2) + 2 + r] = o;
        }
}

/* attend_part_n for nh heads (their parts R + 2 floats apart), in groups of ATT_HEADS,
 * 8, 4 and 1. */
static void attend_part(const dseek_session *s, const void *cache, const float *qc, int nh, size_t j0, size_t j1,
                        float *sc, float *part) {
    const size_t R = (size_t)s->m->c.kv_lora_rank, C = R + (size_t)s->m->c.qk_rope_head_dim;
    for (int h = 0; h < nh;) {
        const int g = nh - h >= ATT_HEADS ? ATT_HEADS : nh - h >= 8 ? 8 : nh - h >= 4 ? 4 : 1;
        const float *q = qc + h * C;
        float *p = part + h * (R + 2);
        if (s->cache_bf16) {
            if (g == ATT_HEADS) attend_part_n(s, cache, q, ATT_HEADS, 1, j0, j1, sc, p);
            else if (g == 8) attend_part_n(s, cache, q, 8, 1, j0, j1, sc, p);
            else if (g == 4) attend_part_n(s, cache, q, 4, 1, j0, j1, sc, p);
            else attend_part_n(s, cache, q, 1, 1, j0, j1, sc, p);
        } else {
            if (g == ATT_HEADS) attend_part_n(s, cache, q, ATT_HEADS, 0, j0, j1, sc, p);
            else if (g == 8) attend_part_n(s, cache, q, 8, 0, j0, j1, sc, p);
            else if (g == 4) attend_part_n(s, cache, q, 4, 0, j0, j1, sc, p);
            else attend_part_n(s, cache, q, 1, 0, j0, j1, sc, p);
        }
        h += g;
    }
}

/* Head h's region of s->qlat, whose rows (cols values each, one per token of the step) are
 * the int8 activations of its q_nope or its o_lat (mla_heads_q). */
static QAct head_act(const dseek_session *s, size_t h, size_t cols) {
    const Config *c = &s->m->c;
    const size_t R = (size_t)c->kv_lora_rank, nope = (size_t)c->qk_nope_head_dim;
    const size_t mp = round_up(R > nope ? R : nope, QK), off = h * (size_t)s->n_batch * mp, cp = round_up(cols, QK);
    return (QAct){s->qlat.q + off, s->qlat.d + off / QK, s->qlat.s + off / QK, cp, cp / QK};
}

/* attend_blocks' work for token t, by every thread of the region it is called in (the
 * threads wait for each other inside but not at the end). */
static void attend_token(dseek_session *s, const void *cache, int t, int pos) {
    const Config *c = &s->m->c;
    const size_t H = (size_t)c->num_attention_heads, R = (size_t)c->kv_lora_rank;
    const size_t nope = (size_t)c->qk_nope_head_dim, rope = (size_t)c->qk_rope_head_dim, qd = nope + rope, C = R + rope;
    const size_t n = (size_t)(pos + t) + 1, kb = key_block(n), nb = (n + kb - 1) / kb;
    const size_t nth = (size_t)n_threads_in_team(), tid = (size_t)thread_id();
    size_t gh = ATT_HEADS; /* heads per unit: fewer when there would be fewer units than threads */
    while (gh > 1 && nb * ((H + gh - 1) / gh) < nth) gh /= 2;
    const size_t ng = (H + gh - 1) / gh;
    size_t lo, hi;
    split_range(H, nth, tid, &lo, &hi);
    for (size_t h = lo; h < hi; h++) {
        float *q = s->qtok + h * C;
        memcpy(q, s->lat + ((size_t)t * H + h) * R, R * sizeof(float));
        memcpy(q + R, s->q + (size_t)t * H * qd + h * qd + nope, rope * sizeof(float));
        rope_apply(q + R, (int)rope, rope_at(s, pos + t));
    }
    spin_barrier(&s->bar, (int)nth);
#pragma omp for schedule(dynamic, 1) nowait
    for (size_t u = 0; u < nb * ng; u++) {
        const size_t b = u / ng, h0 = u % ng * gh, nh = H - h0 < gh ? H - h0 : gh;
        const size_t j0 = b * kb, j1 = j0 + kb < n ? j0 + kb : n;
        attend_part(s, cache, s->qtok + h0 * C, (int)nh, j0, j1, s->att + (size_t)thread_id() * s->att_stride,
                    s->part + (b * H + h0) * (R + 2));
    }
    spin_barrier(&s->bar, (int)nth);
    for (size_t h = lo; h < hi; h++) {
        float M = -INFINITY, L = 0;
        for (size_t b = 0; b < nb; b++) {
            const float mb = s->part[(b * H + h) * (R + 2)];
            M = mb > M ? mb : M;
        }
        float *o = s->lat + ((size_t)t * H + h) * R;
        memset(o, 0, R * sizeof(float));
        for (size_t b = 0; b < nb; b++) {
            const float *p = s->part + (b * H + h) * (R + 2), w = expf(p[0] - M);
            L += w * p[1];
            for (size_t r = 0; r < R; r++) o[r] += w * p[2 + r];
        }
        for (size_t r = 0; r < R; r++) o[r] /= L;
        const QAct rows = head_act(s, h, R);
        QAct a = qact_rows(&rows, (size_t)t);
        qact_quantize_ld(&a, o, R, R, 1);
    }
}

/* Absorbed attention of every head of the T tokens of a step (T small: decode, verify),
 * q_lat read from s->lat ([T, H, R]) and o_lat written back there: per token, the heads'
 * queries are roped once, every (block of keys, group of heads) runs through attend_part,
 * and each head's blocks are merged in order: o = sum_b e^(m_b - M) o_b / sum_b e^(m_b - M) l_b.
 * Each o_lat row is also quantized into its head's activations (head_act) for W_UV, in the
 * same pass instead of a parallel region of its own. */
static void attend_blocks(dseek_session *s, const void *cache, int T, int pos) {
#pragma omp parallel
    for (int t = 0; t < T; t++) {
        attend_token(s, cache, t, pos);
        /* (the next token's queries overwrite s->qtok and s->part) */
        if (t + 1 < T) spin_barrier(&s->bar, n_threads_in_team());
    }
}

/* Layer li's rows of the latent cache. */
static void *cache_layer(const dseek_session *s, int li) {
    const size_t C = (size_t)(s->m->c.kv_lora_rank + s->m->c.qk_rope_head_dim);
    return (uint8_t *)s->cache + (size_t)li * (size_t)s->n_ctx * C * (s->cache_bf16 ? 2 : 4);
}

/* Positions 0..n-1 of a layer's cache rows as float32, for the matrix-product paths of
 * prompts: the rows themselves, or those of a bfloat16 cache widened into s->cview. */
static const float *cache_f32(dseek_session *s, const void *cache, int n) {
    if (!s->cache_bf16) return cache;
    const size_t k = (size_t)n * (size_t)(s->m->c.kv_lora_rank + s->m->c.qk_rope_head_dim);
    const uint16_t *h = cache;
#pragma omp parallel for schedule(static) if (k >= (1 << 16))
    for (size_t i = 0; i < k; i++) s->cview[i] = bf16_to_f32(h[i]);
    return s->cview;
}

/* Absorbed attention of token t (at position pos + t) and head h over the latent cache
 * (SPEC "MLA attention"); wuk is the head's kv_b rows in float32, W_UK[h] then W_UV[h]. */
static void attend_head(dseek_session *s, const void *cache, const float *wuk, int t, int h, int pos) {
    const dseek_model *m = s->m;
    const Config *c = &m->c;
    const size_t H = (size_t)c->num_attention_heads, R = (size_t)c->kv_lora_rank;
    const size_t nope = (size_t)c->qk_nope_head_dim, rope = (size_t)c->qk_rope_head_dim, vd = (size_t)c->v_head_dim;
    const size_t qd = nope + rope, C = R + rope;
    float *qc = s->att + (size_t)thread_id() * s->att_stride; /* [R + rope]: q_lat then q_pe */
    float *part = qc + C, *sc = part + R + 2, *olat = part + 2;
    const float *qh = s->q + (size_t)t * H * qd + (size_t)h * qd;
    /* absorbed query: q_lat = W_UK[h]^T q_nope */
    memset(qc, 0, R * sizeof(float));
    for (size_t i = 0; i < nope; i++) {
        float a = qh[i];
        const float *wr = wuk + i * R;
        for (size_t r = 0; r < R; r++) qc[r] += a * wr[r];
    }
    memcpy(qc + R, qh + nope, rope * sizeof(float));
    rope_apply(qc + R, (int)rope, rope_at(s, pos + t));
    attend_part(s, cache, qc, 1, 0, (size_t)(pos + t) + 1, sc, part); /* all positions as one block */
    for (size_t r = 0; r < R; r++) olat[r] /= part[1];
    /* out[h] = W_UV[h] o_lat */
    const float *wuv = wuk + nope * R;
    float *o = s->heads + (size_t)t * H * vd + (size_t)h * vd;
    for (size_t k = 0; k < vd; k++) o[k] = dot_f32(wuv + k * R, olat, R);
}

/* Attention of nq consecutive tokens of one head, the first at position p0, as two matrix
 * products over the cache (for steps of many tokens, where the per-token loop of
 * attend_head would run at a fraction of the machine's speed): S = scale * Q K^T over
 * positions 0..p0+nq-1, causal softmax of each row, o_lat = P C. q holds each token's
 * q_lat then its roped q_pe ([nq, R + rope], rows ldq apart); o_lat rows go ldo apart. */
#define ATT_BLOCK 64
static void attend_rows_sgemm(dseek_session *s, const float *cache, const float *q, size_t ldq, int nq, int p0,
                              float *olat, size_t ldo, float *S) {
    const Config *c = &s->m->c;
    const int R = c->kv_lora_rank, C = R + c->qk_rope_head_dim, N = p0 + nq;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nq, N, C, s->m->softmax_scale, q, (int)ldq, cache, C, 0.0f,
                S, N);
    for (int i = 0; i < nq; i++) {
        float *row = S + (size_t)i * N, mx = -INFINITY, sum = 0;
        const int n = p0 + i + 1; /* causal */
        for (int j = 0; j < n; j++) mx = row[j] > mx ? row[j] : mx;
        for (int j = 0; j < n; j++) { row[j] = expf(row[j] - mx); sum += row[j]; }
        for (int j = 0; j < n; j++) row[j] /= sum;
        for (int j = n; j < N; j++) row[j] = 0;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, nq, R, N, 1.0f, S, N, cache, C, 0.0f, olat, (int)ldo);
}

/* Every head of T >= SGEMM_MIN_TOKENS tokens through attend_rows_sgemm, in blocks of
 * ATT_BLOCK tokens, (head, block) pairs in parallel: q_lat is read from s->lat ([T, H, R])
 * and o_lat written back there. */
static void attend_all_sgemm(dseek_session *s, const float *cache, int T, int pos) {
    const Config *c = &s->m->c;
    const size_t H = (size_t)c->num_attention_heads, R = (size_t)c->kv_lora_rank;
    const size_t nope = (size_t)c->qk_nope_head_dim, rope = (size_t)c->qk_rope_head_dim, qd = nope + rope, C = R + rope;
    const size_t nblk = ((size_t)T + ATT_BLOCK - 1) / ATT_BLOCK;
#pragma omp parallel for schedule(dynamic, 1)
    for (size_t hb = 0; hb < H * nblk; hb++) {
        const size_t h = hb % H, t0 = hb / H * ATT_BLOCK;
        const int nq = (size_t)T - t0 < ATT_BLOCK ? (int)((size_t)T - t0) : ATT_BLOCK;
        float *qb = s->qblk + (size_t)thread_id() * ATT_BLOCK * C;
        for (int i = 0; i < nq; i++) {
            const size_t t = t0 + (size_t)i;
            float *qr = qb + (size_t)i * C;
            memcpy(qr, s->lat + (t * H + h) * R, R * sizeof(float));
            memcpy(qr + R, s->q + t * H * qd + h * qd + nope, rope * sizeof(float));
            rope_apply(qr + R, (int)rope, rope_at(s, pos + (int)t));
        }
        attend_rows_sgemm(s, cache, qb, C, nq, pos + (int)t0, s->lat + (t0 * H + h) * R, H * R,
                          s->scores + (size_t)thread_id() * ATT_BLOCK * (size_t)s->n_ctx);
    }
}

/* Head h's W_UK job: its q_nope of T tokens quantized into its activations (head_act),
 * q_lat = W_UK[h]^T q_nope from its kb_t rows into s->lat. */
static void wuk_job(dseek_session *s, const Layer *ly, size_t h, int T) {
    const Config *c = &s->m->c;
    const size_t H = (size_t)c->num_attention_heads, R = (size_t)c->kv_lora_rank, nope = (size_t)c->qk_nope_head_dim;
    const size_t qd = nope + (size_t)c->qk_rope_head_dim, gb_t = round_up(nope, QK) / QK * qtile_bytes(DT_Q8_0);
    QAct a = head_act(s, h, nope);
    qact_quantize_ld(&a, s->q + h * qd, H * qd, nope, T);
    s->hw[h] = (Tensor){.rows = R, .cols = nope, .dtype = DT_Q8_0, .data = ly->kb_t.data + h * (R / QR) * gb_t};
    s->hjobs[h] = (QJob){&s->hw[h], a, T, s->lat + h * R, H * R};
}

/* Head h's W_UV job: out[h] = W_UV[h] o_lat from its o_lat activations into s->heads. */
static void wuv_job(dseek_session *s, const Layer *ly, size_t h, int T) {
    const Config *c = &s->m->c;
    const size_t H = (size_t)c->num_attention_heads, R = (size_t)c->kv_lora_rank, vd = (size_t)c->v_head_dim;
    const size_t gb_v = qgroup_bytes(ly->kb_v.dtype, R);
    s->hw[H + h] = (Tensor){.rows = vd, .cols = R, .dtype = ly->kb_v.dtype, .data = ly->kb_v.data + h * (vd / QR) * gb_v};
    s->hjobs[h] = (QJob){&s->hw[H + h], head_act(s, h, R), T, s->heads + h * vd, H * vd};
}

/* The heads of a layer whose kv_b is quantized (it has kb_t), for any number of tokens:
 * q_lat = W_UK[h]^T q_nope and out[h] = W_UV[h] o_lat are products of quantized rows by
 * int8 activations, like every other matrix of a quantized model: q_nope of all heads
 * against their kb_t rows in one parallel region, the scores and o_lat of every (token,
 * head) in a second, o_lat against the W_UV rows of kv_b in a third. Each token's result is
 * the same whatever the number of tokens in the step. */
static void mla_heads_q(dseek_session *s, const Layer *ly, const void *cache, int T, int pos) {
    const size_t H = (size_t)s->m->c.num_attention_heads, R = (size_t)s->m->c.kv_lora_rank;
    /* q_nope of every head into its activations: in parallel only for a few tokens or more
     * (one token's 2048 values take less time than starting the threads) */
#pragma omp parallel for schedule(static) if (T >= 4)
    for (size_t h = 0; h < H; h++) wuk_job(s, ly, h, T);
    qmatmul_jobs(s->hjobs, (int)H, s->hfirst);
    if (T >= SGEMM_MIN_TOKENS) {
        attend_all_sgemm(s, cache_f32(s, cache, pos + T), T, pos);
#pragma omp parallel for schedule(static)
        for (size_t h = 0; h < H; h++) {
            QAct a = head_act(s, h, R);
            qact_quantize_ld(&a, s->lat + h * R, H * R, R, T);
        }
    } else attend_blocks(s, cache, T, pos); /* (quantizes o_lat itself) */
    for (size_t h = 0; h < H; h++) wuv_job(s, ly, h, T);
    qmatmul_jobs(s->hjobs, (int)H, s->hfirst);
}

/* A prompt of many tokens over a quantized kv_b (T >= PLAIN_MIN_TOKENS, layers with kb_t):
 * MLA in its plain form, as DeepSeek's reference runs a prefill. Per head, the keys' k_nope
 * and v are decompressed from the cached latents in blocks of KEY_BLOCK positions (int8
 * products of the head's kv_b rows by the latents quantized like any activation), scores
 * are scale * (q_nope . k_nope + q_pe . k_pe) and the softmax runs online over the key
 * blocks (a running max and sum per query), so no buffer grows with the context. A (query,
 * key) pair costs nope + rope + v = 320 multiply-adds instead of the absorbed form's
 * R + rope + R = 1088, and q_lat and W_UV o_lat disappear; the decompression, 256 x 512
 * int8 multiply-adds per key and head, pays for itself from about 64 queries on. */
#define KEY_BLOCK 256
#define PLAIN_MIN_TOKENS 64
static void attend_plain_q(dseek_session *s, const Layer *ly, const float *cache, int T, int pos) {
    const dseek_model *m = s->m;
    const Config *c = &m->c;
    const size_t H = (size_t)c->num_attention_heads, R = (size_t)c->kv_lora_rank;
    const size_t nope = (size_t)c->qk_nope_head_dim, rope = (size_t)c->qk_rope_head_dim, vd = (size_t)c->v_head_dim;
    const size_t qd = nope + rope, C = R + rope, hrows = nope + vd, Rp = round_up(R, QK);
    const size_t gb = qgroup_bytes(ly->kv_b.dtype, R), ng = hrows / QR;
    const int N = pos + T;
    const float scale = m->softmax_scale;
    /* every cached latent c_j (j < N) as int8 activations */
#pragma omp parallel for schedule(static)
    for (int j0 = 0; j0 < N; j0 += 64) {
        QAct a = {s->qlc.q + (size_t)j0 * Rp, s->qlc.d + (size_t)j0 * (Rp / QK), s->qlc.s + (size_t)j0 * (Rp / QK), 0, 0};
        qact_quantize_ld(&a, cache + (size_t)j0 * C, C, R, N - j0 < 64 ? N - j0 : 64);
    }
    const QAct lc = {s->qlc.q, s->qlc.d, s->qlc.s, Rp, Rp / QK};
#pragma omp parallel for schedule(dynamic, 1)
    for (size_t h = 0; h < H; h++) {
        float *Q = s->pbuf + (size_t)thread_id() * s->pbuf_stride; /* [T, qd]: q_nope, roped q_pe */
        float *O = Q + (size_t)T * qd;                              /* [T, vd] */
        float *mx = O + (size_t)T * vd, *l = mx + T;                /* running max and sum [T] */
        float *KV = l + T;                                          /* [KEY_BLOCK, hrows]: k_nope, v */
        float *S = KV + KEY_BLOCK * hrows;                          /* [ATT_BLOCK, KEY_BLOCK] */
        for (int t = 0; t < T; t++) {
            memcpy(Q + (size_t)t * qd, s->q + (size_t)t * H * qd + h * qd, qd * sizeof(float));
            rope_apply(Q + (size_t)t * qd + nope, (int)rope, rope_at(s, pos + t));
            mx[t] = -INFINITY;
            l[t] = 0;
        }
        memset(O, 0, (size_t)T * vd * sizeof(float));
        const Tensor wh = {.rows = hrows, .cols = R, .dtype = ly->kv_b.dtype, .data = ly->kv_b.data + h * hrows / QR * gb};
        for (int j0 = 0; j0 < N; j0 += KEY_BLOCK) {
            const int nk = N - j0 < KEY_BLOCK ? N - j0 : KEY_BLOCK;
            const QAct a = qact_rows(&lc, (size_t)j0);
            for (size_t g = 0; g < ng; g += 2) qgroups(&wh, g, g + 1 < ng ? 2 : 1, &a, nk, KV, hrows);
            /* query t sees keys up to position pos + t: the first block of queries that sees j0 */
            for (int i0 = j0 > pos ? (j0 - pos) / ATT_BLOCK * ATT_BLOCK : 0; i0 < T; i0 += ATT_BLOCK) {
                const int nq = T - i0 < ATT_BLOCK ? T - i0 : ATT_BLOCK;
                const float *Qb = Q + (size_t)i0 * qd;
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nq, nk, (int)nope, scale, Qb, (int)qd, KV,
                            (int)hrows, 0.0f, S, KEY_BLOCK);
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nq, nk, (int)rope, scale, Qb + nope, (int)qd,
                            cache + (size_t)j0 * C + R, (int)C, 1.0f, S, KEY_BLOCK);
                for (int i = 0; i < nq; i++) {
                    const int t = i0 + i, n = pos + t - j0 + 1 < nk ? pos + t - j0 + 1 : nk; /* causal */
                    float *row = S + (size_t)i * KEY_BLOCK, *o = O + (size_t)t * vd;
                    if (n <= 0) { memset(row, 0, (size_t)nk * sizeof(float)); continue; }
                    float mnew = mx[t], sum = 0;
                    for (int j = 0; j < n; j++) mnew = row[j] > mnew ? row[j] : mnew;
                    const float alpha = expf(mx[t] - mnew); /* 0 for the first block */
                    for (int j = 0; j < n; j++) { row[j] = expf(row[j] - mnew); sum += row[j]; }
                    for (int j = n; j < nk; j++) row[j] = 0;
                    l[t] = l[t] * alpha + sum;
                    mx[t] = mnew;
                    if (alpha != 1.0f)
                        for (size_t d = 0; d < vd; d++) o[d] *= alpha;
                }
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, nq, (int)vd, nk, 1.0f, S, KEY_BLOCK, KV + nope,
                            (int)hrows, 1.0f, O + (size_t)i0 * vd, (int)vd);
            }
        }
        for (int t = 0; t < T; t++) {
            float *out = s->heads + (size_t)t * H * vd + h * vd;
            for (size_t d = 0; d < vd; d++) out[d] = O[(size_t)t * vd + d] / l[t];
        }
    }
}

/* A token's kv_a output at position p: latent c = RMSNorm(kv[:R]) and rope key RoPE(kv[R:]),
 * in place, then into the layer's cache row p. */
static void latent_to_cache(dseek_session *s, const Layer *ly, void *cache, float *kv, int p) {
    const Config *c = &s->m->c;
    const size_t R = (size_t)c->kv_lora_rank, rope = (size_t)c->qk_rope_head_dim, C = R + rope;
    rmsnorm(kv, kv, ly->kv_a_norm, R, c->rms_norm_eps);
    rope_apply(kv + R, (int)rope, rope_at(s, p));
    if (s->cache_bf16)
        for (size_t i = 0; i < C; i++) ((uint16_t *)cache)[(size_t)p * C + i] = f32_to_bf16(kv[i]);
    else memcpy((float *)cache + (size_t)p * C, kv, C * sizeof(float));
}

/* Whether one token's attention of a layer can run as mla_decode_q: every product quantized. */
static int mla_decode_ok(const Config *c, const Layer *ly) {
    return ly->kb_t.data && is_quant(ly->kv_a.dtype) && is_quant(ly->o_proj.dtype) &&
           (c->q_lora_rank ? is_quant(ly->q_a.dtype) && is_quant(ly->q_b.dtype) : is_quant(ly->q_proj.dtype));
}

/* Inside a parallel region: thread 0 has filled job[0..n) (and what they read); every
 * thread runs its share of them and then waits for the others (qmatmul_jobs' one-token
 * split). */
static void region_jobs(dseek_session *s, const QJob *job, int n, size_t *first, UnitRange *rg, size_t nth,
                        size_t tid) {
    if (tid == 0) {
        const size_t total = qjobs_units(job, n, first);
        for (size_t i = 0; i < nth; i++) qjobs_share(rg, total, nth, i);
    }
    spin_barrier(&s->bar, (int)nth);
    qjobs_steal(job, first, rg, nth, tid);
    spin_barrier(&s->bar, (int)nth);
}

/* One token's MLA attention over quantized weights in a single parallel region: the same
 * steps as mla_forward with mla_heads_q and attend_blocks (queries and latent, the cache
 * row, q_lat = W_UK^T q_nope per head, the attention, W_UV o_lat per head, o_proj), the
 * serial steps on thread 0, a spinning barrier between steps instead of five fork-joins.
 * The same calls per value, so the same bits. */
static void mla_decode_q(dseek_session *s, const Layer *ly, void *cache, const float *xn, float *out, int pos) {
    const Config *c = &s->m->c;
    const size_t D = (size_t)c->hidden_size, H = (size_t)c->num_attention_heads, ql = (size_t)c->q_lora_rank;
    UnitRange rg[n_threads()];
#pragma omp parallel
    {
        const size_t nth = (size_t)n_threads_in_team(), tid = (size_t)thread_id();
        DS_ASSERT(nth <= sizeof rg / sizeof rg[0]);
        /* queries (or q_a) and kv_a, one pass over x */
        const Tensor *wq = ql ? &ly->q_a : &ly->q_proj;
        if (tid == 0) {
            qact_quantize(&s->sc.qa, xn, D, 1);
            s->qjobs[0] = (QJob){wq, s->sc.qa, 1, ql ? s->qa : s->q, wq->rows};
            s->qjobs[1] = (QJob){&ly->kv_a, s->sc.qa, 1, s->kv, ly->kv_a.rows};
        }
        region_jobs(s, s->qjobs, 2, s->qfirst, rg, nth, tid);
        if (ql) {
            if (tid == 0) {
                rmsnorm(s->qa, s->qa, ly->q_a_norm, ql, c->rms_norm_eps);
                qact_quantize(&s->sc.qa, s->qa, ql, 1);
                s->qjobs[0] = (QJob){&ly->q_b, s->sc.qa, 1, s->q, ly->q_b.rows};
            }
            region_jobs(s, s->qjobs, 1, s->qfirst, rg, nth, tid);
        }
        /* the latent and the rope key to the cache; q_nope of every head into its activations */
        if (tid == 0) {
            latent_to_cache(s, ly, cache, s->kv, pos);
            for (size_t h = 0; h < H; h++) wuk_job(s, ly, h, 1);
        }
        region_jobs(s, s->hjobs, (int)H, s->hfirst, rg, nth, tid);
        attend_token(s, cache, 0, pos);
        if (tid == 0)
            for (size_t h = 0; h < H; h++) wuv_job(s, ly, h, 1);
        region_jobs(s, s->hjobs, (int)H, s->hfirst, rg, nth, tid);
        if (tid == 0) {
            qact_quantize(&s->sc.qa, s->heads, ly->o_proj.cols, 1);
            s->qjobs[0] = (QJob){&ly->o_proj, s->sc.qa, 1, out, ly->o_proj.rows};
        }
        region_jobs(s, s->qjobs, 1, s->qfirst, rg, nth, tid);
    }
}

/* Multi-head latent attention of T tokens at positions pos.. (SPEC "MLA attention"),
 * computed in the absorbed form over the latent cache: the cache of layer `li` gets the
 * latents c and rope keys of these tokens, then each (token, head) scores its query
 * against every cached position up to its own. */
static void mla_forward(dseek_session *s, int li, const float *xn, float *out, int T, int pos) {
    const dseek_model *m = s->m;
    const Config *c = &m->c;
    const Layer *ly = &m->layers[li];
    const size_t H = (size_t)c->num_attention_heads, R = (size_t)c->kv_lora_rank;
    const size_t nope = (size_t)c->qk_nope_head_dim, rope = (size_t)c->qk_rope_head_dim, vd = (size_t)c->v_head_dim;
    const size_t C = R + rope;
    void *cache = cache_layer(s, li);
    if (T == 1 && mla_decode_ok(c, ly)) {
        mla_decode_q(s, ly, cache, xn, out, pos);
        return;
    }

    /* queries: q_proj, or q_b(RMSNorm(q_a(x))) */
    /* (q_a or q_proj and kv_a read the same input: one pass when quantized) */
    if (c->q_lora_rank) {
        size_t ql = (size_t)c->q_lora_rank;
        matmul2(s, s->qa, &ly->q_a, s->kv, &ly->kv_a, xn, T);
        for (int t = 0; t < T; t++) rmsnorm(s->qa + t * ql, s->qa + t * ql, ly->q_a_norm, ql, c->rms_norm_eps);
        matmul(&s->sc, s->q, s->qa, &ly->q_b, T);
    } else matmul2(s, s->q, &ly->q_proj, s->kv, &ly->kv_a, xn, T);

    for (int t = 0; t < T; t++) latent_to_cache(s, ly, cache, s->kv + (size_t)t * C, pos + t);

    /* kv_b_proj in float32: W_UK[h] is rows h*(nope+v).. of it, W_UV[h] the next v rows.
     * Many tokens: the whole matrix is converted once into s->kvb and every (token, head)
     * runs in parallel. Few tokens (decode, verify): each thread converts one head's rows
     * into its own buffer, small enough to stay in cache, and runs that head for every
     * token, so the layer's kv_b is read once and never written out to memory. The same
     * floats meet in the same order either way, so both give the same bits. */
    const size_t hrows = nope + vd;
    const int per_head = T < SGEMM_MIN_TOKENS && (!is_quant(ly->kv_b.dtype) || hrows % QR == 0);
    if (ly->kb_t.data && T >= PLAIN_MIN_TOKENS) attend_plain_q(s, ly, cache_f32(s, cache, pos + T), T, pos);
    else if (ly->kb_t.data) mla_heads_q(s, ly, cache, T, pos);
    else if (T >= SGEMM_MIN_TOKENS) {
        /* many tokens: per head, q_lat = q_nope W_UK[h], the attention, and o_lat W_UV[h]^T
         * as matrix products */
        const size_t qd = nope + rope;
        kv_b_rows(&ly->kv_b, 0, H * hrows, s->kvb);
#pragma omp parallel for schedule(static)
        for (size_t h = 0; h < H; h++)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, (int)R, (int)nope, 1.0f, s->q + h * qd,
                        (int)(H * qd), s->kvb + h * hrows * R, (int)R, 0.0f, s->lat + h * R, (int)(H * R));
        attend_all_sgemm(s, cache_f32(s, cache, pos + T), T, pos);
#pragma omp parallel for schedule(static)
        for (size_t h = 0; h < H; h++)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, (int)vd, (int)R, 1.0f, s->lat + h * R, (int)(H * R),
                        s->kvb + (h * hrows + nope) * R, (int)R, 0.0f, s->heads + h * vd, (int)(H * vd));
    } else if (!per_head) {
        kv_b_rows(&ly->kv_b, 0, H * hrows, s->kvb);
#pragma omp parallel for schedule(dynamic, 1)
        for (size_t th = 0; th < (size_t)T * H; th++)
            attend_head(s, cache, s->kvb + th % H * hrows * R, (int)(th / H), (int)(th % H), pos);
    } else {
#pragma omp parallel for schedule(static)
        for (size_t h = 0; h < H; h++) {
            float *w = s->kvbh + (size_t)thread_id() * hrows * R;
            kv_b_rows(&ly->kv_b, h * hrows, hrows, w);
            for (int t = 0; t < T; t++) attend_head(s, cache, w, t, (int)h, pos);
        }
    }
    matmul(&s->sc, out, s->heads, &ly->o_proj, T);
}

/* Index of the largest of v[0..n) whose mask entry is set (first on ties); -1 if none. */
static int argmax_masked(const float *v, const unsigned char *ok, int n) {
    int best = -1;
    for (int i = 0; i < n; i++)
        if (ok[i] && (best < 0 || v[i] > v[best])) best = i;
    return best;
}

/* MoE routing of one token, following SPEC "MoE" (the HF / vLLM semantics):
 * scores s = softmax|sigmoid(logits); greedy takes the top-k of s; group_limited_greedy keeps
 * the topk_group groups with the largest max s; noaux_tc selects on the biased b = s + bias
 * (group score = sum of the two largest b) but weights with the unbiased s. Chosen weights
 * are renormalized when norm_topk_prob (k > 1), then scaled by routed_scaling_factor. */
static void route_token(const Config *c, const float *logits, const float *bias, int *idx, float *w) {
    int E = c->n_routed_experts, k = c->num_experts_per_tok;
    float s[E], b[E];
    unsigned char ok[E];
    if (c->scoring_func == SCORE_SOFTMAX) {
        float mx = logits[0], sum = 0;
        for (int e = 1; e < E; e++) mx = logits[e] > mx ? logits[e] : mx;
        for (int e = 0; e < E; e++) { s[e] = expf(logits[e] - mx); sum += s[e]; }
        for (int e = 0; e < E; e++) s[e] /= sum;
    } else
        for (int e = 0; e < E; e++) s[e] = 1.0f / (1.0f + expf(-logits[e]));
    for (int e = 0; e < E; e++) { b[e] = c->topk_method == TOPK_NOAUX_TC && bias ? s[e] + bias[e] : s[e]; ok[e] = 1; }

    if (c->topk_method != TOPK_GREEDY && c->n_group > 1) {
        int G = c->n_group, per = E / G;
        float gs[G];
        unsigned char gok[G];
        for (int g = 0; g < G; g++) {
            const float *v = b + g * per;
            if (c->topk_method == TOPK_NOAUX_TC) { /* sum of the two largest */
                float a1 = -INFINITY, a2 = -INFINITY;
                for (int i = 0; i < per; i++) {
                    if (v[i] > a1) { a2 = a1; a1 = v[i]; }
                    else if (v[i] > a2) a2 = v[i];
                }
                gs[g] = a1 + a2;
            } else { /* max */
                gs[g] = v[0];
                for (int i = 1; i < per; i++) gs[g] = v[i] > gs[g] ? v[i] : gs[g];
            }
            gok[g] = 1;
        }
        unsigned char keep[G];
        memset(keep, 0, sizeof keep);
        for (int i = 0; i < c->topk_group; i++) {
            int g = argmax_masked(gs, gok, G);
            keep[g] = 1;
            gok[g] = 0;
        }
        for (int e = 0; e < E; e++) ok[e] = keep[e / per];
    }
    float sum = 0;
    for (int i = 0; i < k; i++) {
        int e = argmax_masked(b, ok, E);
        DS_ASSERT(e >= 0);
        ok[e] = 0;
        idx[i] = e;
        w[i] = s[e];
        sum += s[e];
    }
    if (c->norm_topk_prob && k > 1)
        for (int i = 0; i < k; i++) w[i] /= sum + 1e-20f;
    for (int i = 0; i < k; i++) w[i] *= c->routed_scaling_factor;
}

static int mlp_is_quant(const MLP *f) {
    return is_quant(f->gate.dtype) && is_quant(f->up.dtype) && is_quant(f->down.dtype);
}

/* The experts of a MoE block when their weights are quantized, for T <= MOE_CHUNK tokens:
 * the same sums as the loop in moe_forward (per token the shared expert, then the chosen
 * experts in increasing order), with the gate and up products of every expert in one
 * parallel region and all the down products in a second, instead of three regions per
 * expert (in decode a MoE layer is a dozen small products; in prefill this also balances
 * experts with few tokens across threads). x is quantized once; each expert's rows are
 * copied out of it. The shared expert and every chosen one must be quantized. */
#define MOE_CHUNK 512
static void moe_experts_q(dseek_session *s, const Layer *ly, const float *xn, float *y, int T, const int *topk,
                          const float *topw) {
    const Config *c = &s->m->c;
    const size_t D = (size_t)c->hidden_size, E = (size_t)c->n_routed_experts, k = (size_t)c->num_experts_per_tok;
    const size_t Is = s->m->moe_inter, Ip = round_up(Is, QK);
    DS_ASSERT(T <= MOE_CHUNK);
    QAct *qa = &s->sc.qa;
    qact_quantize(qa, xn, D, T);
    s->qx.cols_p = qa->cols_p;
    s->qx.nb = qa->nb;
    /* jobs: the shared expert over all tokens, then each chosen expert over its tokens */
    int nj = 0, rows = 0;
    for (size_t e = 0; e <= E; e++) {
        const MLP *f = e == 0 ? (c->n_shared_experts ? &ly->shared : NULL) : &ly->experts[e - 1];
        int n = 0;
        for (int t = 0; t < T && f; t++)
            for (size_t i = 0; i < (e ? k : 1); i++)
                if (!e || topk[(size_t)t * k + i] == (int)e - 1) {
                    memcpy(s->qx.q + (size_t)(rows + n) * qa->cols_p, qa->q + (size_t)t * qa->cols_p, qa->cols_p);
                    memcpy(s->qx.d + (size_t)(rows + n) * qa->nb, qa->d + (size_t)t * qa->nb, qa->nb * sizeof(float));
                    memcpy(s->qx.s + (size_t)(rows + n) * qa->nb, qa->s + (size_t)t * qa->nb, qa->nb * sizeof(int32_t));
                    s->hslot[rows + n] = e ? t * (int)k + (int)i : -1;
                    s->hjob[rows + n] = nj;
                    n++;
                }
        if (!n) continue;
        if (e) s->prof.experts_run++;
        s->jmlp[nj] = f;
        s->jrow[nj] = rows;
        s->jn[nj++] = n;
        rows += n;
    }
    /* gate and up of every expert */
    for (int j = 0; j < nj; j++) {
        QAct a = qact_rows(&s->qx, (size_t)s->jrow[j]);
        s->qjobs[2 * j] = (QJob){&s->jmlp[j]->gate, a, s->jn[j], s->hg + (size_t)s->jrow[j] * Is, Is};
        s->qjobs[2 * j + 1] = (QJob){&s->jmlp[j]->up, a, s->jn[j], s->hu + (size_t)s->jrow[j] * Is, Is};
    }
    qmatmul_jobs(s->qjobs, 2 * nj, s->qfirst);
    /* silu(gate) * up of every row, quantized for the down products (row r of qh) */
#pragma omp parallel for schedule(static) if (rows > 1)
    for (int r = 0; r < rows; r++) {
        /* expert j's rows go to its own region of qh, at the stride of its width I */
        const int j = s->hjob[r];
        const size_t I = s->jmlp[j]->gate.rows, Ipj = round_up(I, QK), r0 = (size_t)s->jrow[j], i0 = (size_t)r - r0;
        float *g = s->hg + (size_t)r * Is, *u = s->hu + (size_t)r * Is;
        for (size_t i = 0; i < I; i++) g[i] = silu(g[i]) * u[i];
        QAct h = {s->qh.q + r0 * Ip + i0 * Ipj, s->qh.d + r0 * (Ip / QK) + i0 * (Ipj / QK),
                  s->qh.s + r0 * (Ip / QK) + i0 * (Ipj / QK), 0, 0};
        qact_quantize_ld(&h, g, Is, I, 1);
    }
    for (int j = 0; j < nj; j++) {
        const size_t I = s->jmlp[j]->gate.rows, r0 = (size_t)s->jrow[j];
        QAct h = {s->qh.q + r0 * Ip, s->qh.d + r0 * (Ip / QK), s->qh.s + r0 * (Ip / QK), round_up(I, QK),
                  round_up(I, QK) / QK};
        s->qjobs[j] = (QJob){&s->jmlp[j]->down, h, s->jn[j], s->hy + r0 * D, D};
    }
    qmatmul_jobs(s->qjobs, nj, s->qfirst);
    /* y = shared + sum of w * expert, per token in moe_forward's order (rows are in
     * increasing expert order, so each token's list below is too) */
    for (int t = 0; t < T; t++) s->tcount[t] = 0;
    for (int r = 0; r < rows; r++)
        if (s->hslot[r] >= 0) {
            int t = s->hslot[r] / (int)k;
            s->trows[(size_t)t * k + (size_t)s->tcount[t]++] = r;
        }
#pragma omp parallel for schedule(static) if (T > 1)
    for (int t = 0; t < T; t++) {
        float *yt = y + (size_t)t * D;
        if (c->n_shared_experts) memcpy(yt, s->hy + (size_t)t * D, D * sizeof(float)); /* shared: row t is token t */
        else memset(yt, 0, D * sizeof(float));
        for (int i = 0; i < s->tcount[t]; i++) {
            const int r = s->trows[(size_t)t * k + (size_t)i];
            const float w = topw[s->hslot[r]], *ye = s->hy + (size_t)r * D;
            for (size_t d = 0; d < D; d++) yt[d] += w * ye[d];
        }
    }
}

/* Router logits of T tokens for experts e..e+3 (fewer at the end) into s->rlogits. */
static void router_rows(dseek_session *s, const Layer *ly, const float *xn, int T, size_t e) {
    const size_t D = (size_t)s->m->c.hidden_size, E = (size_t)s->m->c.n_routed_experts, n4 = E - e < 4 ? E - e : 4;
    prefetch_ahead(ly->router + e * D, n4 * D * sizeof(float), 1);
    for (int t = 0; t < T; t++) dot_f32_rows(ly->router + e * D, D, n4, xn + t * D, D, s->rlogits + t * E + e);
}

/* Whether a MoE layer's shared expert and every routed one are quantized. */
static int moe_all_quant(const Config *c, const Layer *ly) {
    int q = !c->n_shared_experts || mlp_is_quant(&ly->shared);
    for (int e = 0; e < c->n_routed_experts && q; e++) q = mlp_is_quant(&ly->experts[e]);
    return q;
}

/* The MoE block of one token whose shared and routed experts are all quantized, in a single
 * parallel region: the router's logits, the routing, the gate and up products of the
 * shared and chosen experts, silu(gate) * up, the down products and the weighted sum, with
 * a barrier between the steps instead of four fork-joins and the serial steps between
 * them. The same calls in the same order per value as moe_forward with moe_experts_q give
 * the same bits. */
static void moe_decode_q(dseek_session *s, int li, const float *xn, float *y, int pos) {
    const Layer *ly = &s->m->layers[li];
    const Config *c = &s->m->c;
    const size_t D = (size_t)c->hidden_size, E = (size_t)c->n_routed_experts, k = (size_t)c->num_experts_per_tok;
    const size_t Is = s->m->moe_inter, Ip = round_up(Is, QK);
    const size_t ne = k + (c->n_shared_experts ? 1 : 0); /* experts run: the shared one first */
    QJob *gu = s->qjobs, *dn = s->qjobs + 2 * ne;
    size_t *fgu = s->qfirst, *fdn = s->qfirst + 2 * ne + 1;
    UnitRange rg[n_threads()];
#pragma omp parallel
    {
        const size_t nth = (size_t)n_threads_in_team(), tid = (size_t)thread_id();
        size_t lo, hi;
        DS_ASSERT(nth <= sizeof rg / sizeof rg[0]);
        split_range((E + 3) / 4, nth, tid, &lo, &hi);
        for (size_t e = 4 * lo; e < E && e < 4 * hi; e += 4) router_rows(s, ly, xn, 1, e);
        spin_barrier(&s->bar, (int)nth);
        if (tid == 0) {
            route_token(c, s->rlogits, ly->router_bias, s->topk, s->topw);
            if (s->route_log && pos < s->route_n)
                memcpy(s->route_log + ((size_t)li * (size_t)s->route_n + (size_t)pos) * k, s->topk, k * sizeof(int));
            /* chosen experts in increasing order, as moe_experts_q runs them */
            int ord[k];
            for (size_t i = 0; i < k; i++) ord[i] = (int)i;
            for (size_t i = 1; i < k; i++)
                for (size_t j = i; j > 0 && s->topk[ord[j - 1]] > s->topk[ord[j]]; j--) {
                    int t = ord[j];
                    ord[j] = ord[j - 1];
                    ord[j - 1] = t;
                }
            QAct *qa = &s->sc.qa;
            qact_quantize(qa, xn, D, 1);
            for (size_t j = 0; j < ne; j++) {
                const int slot = c->n_shared_experts ? (j ? ord[j - 1] : -1) : ord[j];
                const MLP *f = slot < 0 ? &ly->shared : &ly->experts[s->topk[slot]];
                const size_t I = f->gate.rows, Ipj = round_up(I, QK);
                s->jmlp[j] = f;
                s->hslot[j] = slot;
                gu[2 * j] = (QJob){&f->gate, *qa, 1, s->hg + j * Is, Is};
                gu[2 * j + 1] = (QJob){&f->up, *qa, 1, s->hu + j * Is, Is};
                const QAct h = {s->qh.q + j * Ip, s->qh.d + j * (Ip / QK), s->qh.s + j * (Ip / QK), Ipj, Ipj / QK};
                dn[j] = (QJob){&f->down, h, 1, s->hy + j * D, D};
            }
            s->prof.experts_run += (long)k;
        }
        region_jobs(s, gu, 2 * (int)ne, fgu, rg, nth, tid);
        split_range(ne, nth, tid, &lo, &hi);
        for (size_t j = lo; j < hi; j++) {
            const size_t I = s->jmlp[j]->gate.rows;
            float *g = s->hg + j * Is, *u = s->hu + j * Is;
            for (size_t i = 0; i < I; i++) g[i] = silu(g[i]) * u[i];
            QAct h = dn[j].a;
            qact_quantize_ld(&h, g, Is, I, 1);
        }
        region_jobs(s, dn, (int)ne, fdn, rg, nth, tid);
        /* y = shared + sum of w * expert in increasing expert order, split over d */
        split_range((D + 255) / 256, nth, tid, &lo, &hi);
        for (size_t d0 = 256 * lo; d0 < D && d0 < 256 * hi; d0 += 256) {
            const size_t d1 = D - d0 < 256 ? D : d0 + 256;
            for (size_t d = d0; d < d1; d++) y[d] = c->n_shared_experts ? s->hy[d] : 0;
            for (size_t j = c->n_shared_experts ? 1 : 0; j < ne; j++) {
                const float w = s->topw[s->hslot[j]], *ye = s->hy + j * D;
                for (size_t d = d0; d < d1; d++) y[d] += w * ye[d];
            }
        }
    }
}

/* MoE block: y = sum_i w_i Expert_i(x) + Shared(x). Tokens are grouped by expert so that each
 * chosen expert's weights are read once for all the tokens that chose it. */
static void moe_forward(dseek_session *s, int li, const float *xn, float *y, int T, int pos) {
    const Layer *ly = &s->m->layers[li];
    const Config *c = &s->m->c;
    const size_t D = (size_t)c->hidden_size, E = (size_t)c->n_routed_experts, k = (size_t)c->num_experts_per_tok;
    if (T == 1 && moe_all_quant(c, ly)) {
        moe_decode_q(s, li, xn, y, pos);
        return;
    }
    /* router logits in float32: gate.weight x, the experts split among the threads (V3's
     * router is 7 MB of float32 a layer) */
#pragma omp parallel for schedule(static) if (E >= 32)
    for (size_t e = 0; e < E; e += 4) router_rows(s, ly, xn, T, e);
    for (int t = 0; t < T; t++) route_token(c, s->rlogits + t * E, ly->router_bias, s->topk + t * k, s->topw + t * k);
    if (s->route_log && pos + T <= s->route_n)
        memcpy(s->route_log + ((size_t)li * (size_t)s->route_n + (size_t)pos) * k, s->topk, (size_t)T * k * sizeof(int));

    /* quantized experts: chunks of up to MOE_CHUNK tokens through moe_experts_q */
    int allq = !c->n_shared_experts || mlp_is_quant(&ly->shared);
    for (int i = 0; i < T * (int)k && allq; i++) allq = mlp_is_quant(&ly->experts[s->topk[i]]);
    if (allq) {
        for (int t0 = 0; t0 < T; t0 += MOE_CHUNK)
            moe_experts_q(s, ly, xn + (size_t)t0 * D, y + (size_t)t0 * D, T - t0 < MOE_CHUNK ? T - t0 : MOE_CHUNK,
                          s->topk + (size_t)t0 * k, s->topw + (size_t)t0 * k);
        return;
    }
    if (c->n_shared_experts) mlp_forward(s, &ly->shared, xn, y, T);
    else memset(y, 0, (size_t)T * D * sizeof(float));

    for (size_t e = 0; e < E; e++) {
        int n = 0;
        for (int t = 0; t < T; t++)
            for (size_t i = 0; i < k; i++)
                if (s->topk[t * k + i] == (int)e) {
                    s->etok[n] = t * (int)k + (int)i; /* token and slot */
                    memcpy(s->xe + (size_t)n * D, xn + t * D, D * sizeof(float));
                    n++;
                }
        if (!n) continue;
        s->prof.experts_run++;
        mlp_forward(s, &ly->experts[e], s->xe, s->ye, n);
        for (int j = 0; j < n; j++) {
            int t = s->etok[j] / (int)k;
            float w = s->topw[s->etok[j]];
            const float *ye = s->ye + (size_t)j * D;
            float *yt = y + (size_t)t * D;
            for (size_t i = 0; i < D; i++) yt[i] += w * ye[i];
        }
    }
}

/* Embeds T tokens into s->x. */
static void embed_tokens(dseek_session *s, const Tensor *emb, const int *tok, int T) {
    for (int t = 0; t < T; t++) tensor_row(emb, (size_t)tok[t], s->x + (size_t)t * s->m->c.hidden_size);
}

/* One decoder layer over s->x in place: x += Attn(RMSNorm(x)); x += FFN(RMSNorm(x)). */
static double clock_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void layer_forward(dseek_session *s, int li, int T, int pos) {
    const dseek_model *m = s->m;
    const Layer *ly = &m->layers[li];
    const size_t D = (size_t)m->c.hidden_size;
    double t0 = clock_s();
    rope_fill(s, pos + T);
    for (int t = 0; t < T; t++) rmsnorm(s->xn + t * D, s->x + t * D, ly->attn_norm, D, m->c.rms_norm_eps);
    mla_forward(s, li, s->xn, s->y, T, pos);
    for (size_t i = 0; i < (size_t)T * D; i++) s->x[i] += s->y[i];
    double t1 = clock_s();
    for (int t = 0; t < T; t++) rmsnorm(s->xn + t * D, s->x + t * D, ly->ffn_norm, D, m->c.rms_norm_eps);
    if (ly->is_moe) moe_forward(s, li, s->xn, s->y, T, pos);
    else mlp_forward(s, &ly->mlp, s->xn, s->y, T);
    for (size_t i = 0; i < (size_t)T * D; i++) s->x[i] += s->y[i];
    double t2 = clock_s();
    s->prof.attention += t1 - t0;
    if (ly->is_moe) s->prof.moe += t2 - t1;
    else s->prof.dense_mlp += t2 - t1;
}

/* One step of at most n_batch tokens: embeddings, every layer, final norm, lm_head. */
static void forward_step(dseek_session *s, const int *tok, int T, int pos, float *logits, int all_rows) {
    const dseek_model *m = s->m;
    const size_t D = (size_t)m->c.hidden_size;
    embed_tokens(s, &m->embed, tok, T);
    for (int l = 0; l < m->c.num_hidden_layers; l++) layer_forward(s, l, T, pos);
    float *h = s->hid + (s->hid_by_pos ? (size_t)pos * D : 0);
    for (int t = 0; t < T; t++) rmsnorm(h + t * D, s->x + t * D, m->final_norm, D, m->c.rms_norm_eps);
    if (s->hid_by_pos) s->hid_end = pos + T;
    if (!logits) return;
    double t0 = clock_s();
    if (all_rows) matmul(&s->sc, logits, h, &m->lm_head, T);
    else matmul(&s->sc, logits, h + (size_t)(T - 1) * D, &m->lm_head, 1);
    s->prof.lm_head += clock_s() - t0;
}

/* The MTP head at positions pos.. (SPEC "MTP head", vLLM semantics): h[t] is the main
 * model's final-normed hidden state at pos+t and next_tok[t] the token at pos+t+1;
 * x = eh_proj([enorm(embed(next_tok)), hnorm(h)]) with the embedding zeroed at position 0,
 * one decoder layer with its own latent cache, then shared_head.norm and shared_head.head.
 * Leaves the normed output rows in s->xn. */
static void mtp_step(dseek_session *s, const int *next_tok, int T, int pos, const float *h, float *logits,
                     int all_rows) {
    const dseek_model *m = s->m;
    const int li = m->c.num_hidden_layers;
    const Layer *ly = &m->layers[li];
    const size_t D = (size_t)m->c.hidden_size;
    const float eps = m->c.rms_norm_eps;
    dseek_profile before = s->prof;
    double t0 = clock_s();
    for (int t = 0; t < T; t++) {
        float *xc = s->xcat + (size_t)t * 2 * D;
        if (pos + t == 0) memset(xc, 0, D * sizeof(float));
        else {
            tensor_row(&ly->embed, (size_t)next_tok[t], xc);
            rmsnorm(xc, xc, ly->enorm, D, eps);
        }
        rmsnorm(xc + D, h + (size_t)t * D, ly->hnorm, D, eps);
    }
    matmul(&s->sc, s->x, s->xcat, &ly->eh_proj, T);
    layer_forward(s, li, T, pos);
    for (int t = 0; t < T; t++) rmsnorm(s->xn + t * D, s->x + t * D, ly->head_norm, D, eps);
    if (logits) {
        if (all_rows) matmul(&s->sc, logits, s->xn, &ly->head, T);
        else matmul(&s->sc, logits, s->xn + (size_t)(T - 1) * D, &ly->head, 1);
    }
    /* the head's time is its own, not the main model's parts */
    double spent = clock_s() - t0;
    long experts = s->prof.experts_run - before.experts_run;
    s->prof = before;
    s->prof.mtp += spent;
    s->prof.mtp_experts_run += experts;
}

void dseek_session_profile(const dseek_session *s, dseek_profile *p) { *p = s->prof; }

static int check_tokens(dseek_session *s, const int *tokens, int n, int pos) {
    const dseek_model *m = s->m;
    if (n < 1 || pos < 0) {
        snprintf(s->err, sizeof s->err, "forward: need at least one token at a position >= 0");
        return DSEEK_EARG;
    }
    if ((long)pos + n > s->n_ctx) {
        snprintf(s->err, sizeof s->err, "context full: %d tokens at position %d exceed the context of %d (raise -c)", n,
                 pos, s->n_ctx);
        return DSEEK_EARG;
    }
    for (int i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= m->c.vocab_size) {
            snprintf(s->err, sizeof s->err, "token id %d out of range [0, %d)", tokens[i], m->c.vocab_size);
            return DSEEK_EARG;
        }
#ifdef _OPENMP
    if (omp_get_max_threads() > s->nth) omp_set_num_threads(s->nth);
#endif
    return 0;
}

/* Refuses logits rows that hold NaN or Inf: weights holding them (or overflowing float32)
 * must give an error, never a silent answer. rows[r] is the logits of position pos0 + r. */
static int check_logits(dseek_session *s, const float *lg, int rows, int pos0, const char *what) {
    const size_t V = (size_t)s->m->c.vocab_size;
    for (int r = 0; r < rows; r++) {
        long bad = first_nonfinite(lg + (size_t)r * V, V);
        if (bad >= 0) {
            snprintf(s->err, sizeof s->err,
                     "%s: non-finite logits (%s for token %ld at position %d): the weights hold NaN or Inf, or "
                     "overflow float32 (--check-tensors names the tensor)", what,
                     isnan(lg[(size_t)r * V + (size_t)bad]) ? "NaN" : "Inf", bad, pos0 + r);
            return DSEEK_EFORMAT;
        }
    }
    return 0;
}

int dseek_forward(dseek_session *s, const int *tokens, int n, int pos, float *logits, int all_rows) {
    int rc = check_tokens(s, tokens, n, pos);
    if (rc) return rc;
    const dseek_model *m = s->m;
    const size_t V = (size_t)m->c.vocab_size;
    for (int i = 0; i < n; i += s->n_batch) {
        int T = n - i < s->n_batch ? n - i : s->n_batch;
        int last = i + T == n;
        float *lg = !logits ? NULL : all_rows ? logits + (size_t)i * V : last ? logits : NULL;
        forward_step(s, tokens + i, T, pos + i, lg, all_rows);
        if (lg && (rc = check_logits(s, lg, all_rows ? T : 1, all_rows ? pos + i : pos + n - 1, "forward")))
            return rc;
    }
    return 0;
}

int dseek_mtp_forward(dseek_session *s, const int *next_tokens, int n, int pos, float *logits, int all_rows) {
    int rc = check_tokens(s, next_tokens, n, pos);
    if (rc) return rc;
    if (!s->m->info.n_mtp) {
        snprintf(s->err, sizeof s->err, "this model has no MTP layer (num_nextn_predict_layers is 0)");
        return DSEEK_EARG;
    }
    if (pos + n > s->hid_end) {
        snprintf(s->err, sizeof s->err, "MTP positions up to %d need the main model's hidden states, computed up to %d",
                 pos + n - 1, s->hid_end - 1);
        return DSEEK_EARG;
    }
    const size_t D = (size_t)s->m->c.hidden_size, V = (size_t)s->m->c.vocab_size;
    for (int i = 0; i < n; i += s->n_batch) {
        int T = n - i < s->n_batch ? n - i : s->n_batch;
        float *lg = !logits ? NULL : all_rows ? logits + (size_t)i * V : i + T == n ? logits : NULL;
        mtp_step(s, next_tokens + i, T, pos + i, s->hid + (size_t)(pos + i) * D, lg, all_rows);
        if (lg && (rc = check_logits(s, lg, all_rows ? T : 1, all_rows ? pos + i : pos + n - 1, "MTP head")))
            return rc;
    }
    return 0;
}

/* ============================================================================
 * 7. Sessions
 * ========================================================================== */

void dseek_session_free(dseek_session *s) {
    if (!s) return;
    float **bufs[] = {&s->sc.rowbuf, &s->sc.wbuf, &s->x, &s->xn, &s->y, &s->qa, &s->q, &s->kv, &s->heads,
                      &s->kvb, &s->kvbh, &s->att, &s->gate, &s->up, &s->rlogits, &s->topw, &s->xe, &s->ye, &s->hid, &s->hchain, &s->xcat, &s->rope_cs, &s->cview};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) free(*bufs[i]);
    if (s->cache) munmap(s->cache, s->cache_bytes);
    free(s->topk);
    free(s->etok);
    free(s->sc.qa.q);
    free(s->sc.qa.d);
    free(s->sc.qa.s);
    free(s->lat);
    free(s->qtok);
    free(s->part);
    free(s->qblk);
    free(s->qlc.q);
    free(s->qlc.d);
    free(s->qlc.s);
    free(s->pbuf);
    free(s->scores);
    free(s->hw);
    free(s->hjobs);
    free(s->hfirst);
    QAct *qs[] = {&s->qx, &s->qh, &s->qlat};
    for (int i = 0; i < 3; i++) {
        free(qs[i]->q);
        free(qs[i]->d);
        free(qs[i]->s);
    }
    free(s->hg);
    free(s->hu);
    free(s->hy);
    free(s->hslot);
    free(s->hjob);
    free(s->tcount);
    free(s->trows);
    free(s->jmlp);
    free(s->jrow);
    free(s->jn);
    free(s->qjobs);
    free(s->qfirst);
    free(s);
}

const char *dseek_session_error(const dseek_session *s) { return s->err; }

void dseek_session_log_routing(dseek_session *s, int *buf, int n_pos) {
    s->route_log = buf;
    s->route_n = buf ? n_pos : 0;
}
int dseek_session_ctx(const dseek_session *s) { return s->n_ctx; }

size_t dseek_session_cache_bytes_per_token(const dseek_session *s) {
    return s->m->info.cache_bytes_per_token / (s->cache_bf16 ? 2 : 1); /* the model's figure is float32 */
}

int dseek_session_new(const dseek_model *m, int n_ctx, int n_batch, dseek_session **out, char *err, size_t errlen) {
    return dseek_session_new_cache(m, n_ctx, n_batch, DSEEK_CACHE_F32, out, err, errlen);
}

int dseek_session_new_cache(const dseek_model *m, int n_ctx, int n_batch, dseek_cache_type cache_type,
                            dseek_session **out, char *err, size_t errlen) {
    *out = NULL;
    if (cache_type != DSEEK_CACHE_F32 && cache_type != DSEEK_CACHE_BF16) {
        seterr(err, errlen, "unknown cache type %d (float32 or bfloat16)", (int)cache_type);
        return DSEEK_EARG;
    }
    const Config *c = &m->c;
    if (n_ctx < 1 || n_batch < 1) { seterr(err, errlen, "context and batch must be at least 1"); return DSEEK_EARG; }
    if (n_batch > n_ctx) n_batch = n_ctx;
    dseek_session *s = calloc(1, sizeof *s);
    if (!s) { seterr(err, errlen, "out of memory"); return DSEEK_ENOMEM; }
    s->m = m;
    s->n_ctx = n_ctx;
    s->n_batch = n_batch;
    s->nth = n_threads();
    const size_t B = (size_t)n_batch, D = (size_t)c->hidden_size, H = (size_t)c->num_attention_heads;
    const size_t R = (size_t)c->kv_lora_rank, rope = (size_t)c->qk_rope_head_dim;
    const size_t qd = (size_t)c->qk_nope_head_dim + rope, vd = (size_t)c->v_head_dim;
    const size_t E = (size_t)c->n_routed_experts, k = (size_t)(c->n_routed_experts ? c->num_experts_per_tok : 0);
    const size_t nl = (size_t)(c->num_hidden_layers + m->info.n_mtp);
    size_t inter = m->max_inter ? m->max_inter : 1;
    s->sc.rowbuf_stride = m->max_in;
    s->sc.rowbuf = xcalloc((size_t)s->nth * m->max_in, sizeof(float));
    s->sc.wbuf_len = (size_t)s->nth * 64 * m->max_in; /* 64 converted rows per thread (matmul) */
    s->sc.wbuf = xcalloc(s->sc.wbuf_len, sizeof(float));
    const size_t in_p = round_up(m->max_in, QK);
    s->sc.qa.q = xcalloc(B * in_p, 1);
    s->sc.qa.d = xcalloc(B * in_p / QK, sizeof(float));
    s->sc.qa.s = xcalloc(B * in_p / QK, sizeof(int32_t));
    s->x = xcalloc(B * D, sizeof(float));
    s->xn = xcalloc(B * D, sizeof(float));
    s->y = xcalloc(B * D, sizeof(float));
    s->qa = xcalloc(B * (size_t)(c->q_lora_rank ? c->q_lora_rank : 1), sizeof(float));
    s->q = xcalloc(B * H * qd, sizeof(float));
    s->kv = xcalloc(B * (R + rope), sizeof(float));
    s->heads = xcalloc(B * H * vd, sizeof(float));
    int kbt = 0, all_kbt = 1; /* some / every layer runs the int8 attention path */
    for (size_t l = 0; l < nl; l++) {
        kbt |= m->layers[l].kb_t.data != NULL;
        all_kbt &= m->layers[l].kb_t.data != NULL;
    }
    if (!all_kbt) { /* float32 copies of kv_b for the other layers (64 MB for V3) */
        s->kvb = xcalloc(H * ((size_t)c->qk_nope_head_dim + vd) * R, sizeof(float));
        s->kvbh = xcalloc((size_t)s->nth * ((size_t)c->qk_nope_head_dim + vd) * R, sizeof(float));
    }
    s->lat = xcalloc(B * H * R, sizeof(float));
    s->qtok = xcalloc(H * (R + rope), sizeof(float));
    s->part = xcalloc(H * KEY_BLOCKS_MAX * (R + 2), sizeof(float));
    s->qblk = xcalloc((size_t)s->nth * ATT_BLOCK * (R + rope), sizeof(float));
    s->scores = xcalloc((size_t)s->nth * ATT_BLOCK * (size_t)n_ctx, sizeof(float));
    if (kbt) {
        const size_t mp = round_up(R > (size_t)c->qk_nope_head_dim ? R : (size_t)c->qk_nope_head_dim, QK);
        s->qlat = (QAct){xcalloc(H * B * mp, 1), xcalloc(H * B * mp / QK, sizeof(float)),
                         xcalloc(H * B * mp / QK, sizeof(int32_t)), 0, 0};
        s->hw = xcalloc(2 * H, sizeof(Tensor));
        const size_t Rp = round_up(R, QK), hrows = (size_t)c->qk_nope_head_dim + vd;
        s->qlc = (QAct){xcalloc((size_t)n_ctx * Rp, 1), xcalloc((size_t)n_ctx * Rp / QK, sizeof(float)),
                        xcalloc((size_t)n_ctx * Rp / QK, sizeof(int32_t)), 0, 0};
        s->pbuf_stride = B * (qd + vd + 2) + KEY_BLOCK * hrows + ATT_BLOCK * KEY_BLOCK;
        s->pbuf = xcalloc((size_t)s->nth * s->pbuf_stride, sizeof(float));
        s->hjobs = xcalloc(H, sizeof(QJob));
        s->hfirst = xcalloc(H + 1, sizeof(size_t));
    }
    s->att_stride = ATT_HEADS * (R + rope + (size_t)n_ctx); /* attend_part's scores, attend_head's q, part, scores */
    s->att = xcalloc((size_t)s->nth * s->att_stride, sizeof(float));
    s->gate = xcalloc(B * inter, sizeof(float));
    s->up = xcalloc(B * inter, sizeof(float));
    s->rlogits = xcalloc(B * (E ? E : 1), sizeof(float));
    {
        const size_t BT = B < MOE_CHUNK ? B : MOE_CHUNK, RA = BT * (k + 1), Dp = round_up(D, QK);
        const size_t mi = m->moe_inter ? m->moe_inter : 1, Ip = round_up(mi, QK);
        s->qx = (QAct){xcalloc(RA * Dp, 1), xcalloc(RA * Dp / QK, sizeof(float)), xcalloc(RA * Dp / QK, sizeof(int32_t)), 0, 0};
        s->qh = (QAct){xcalloc(RA * Ip, 1), xcalloc(RA * Ip / QK, sizeof(float)), xcalloc(RA * Ip / QK, sizeof(int32_t)), 0, 0};
        s->hg = xcalloc(RA * mi, sizeof(float));
        s->hu = xcalloc(RA * mi, sizeof(float));
        s->hy = xcalloc(RA * D, sizeof(float));
        s->hslot = xcalloc(RA, sizeof(int));
        s->hjob = xcalloc(RA, sizeof(int));
        s->tcount = xcalloc(BT, sizeof(int));
        s->trows = xcalloc(BT * (k ? k : 1), sizeof(int));
        s->jmlp = xcalloc(E + 1, sizeof *s->jmlp);
        s->jrow = xcalloc(E + 1, sizeof(int));
        s->jn = xcalloc(E + 1, sizeof(int));
        s->qjobs = xcalloc(3 * (E + 1), sizeof(QJob));
        s->qfirst = xcalloc(3 * (E + 1) + 2, sizeof(size_t));
    }
    s->topk = xcalloc(B * (k ? k : 1), sizeof(int));
    s->topw = xcalloc(B * (k ? k : 1), sizeof(float));
    s->etok = xcalloc(B, sizeof(int));
    s->xe = xcalloc(B * D, sizeof(float));
    s->ye = xcalloc(B * D, sizeof(float));
    s->hid_by_pos = m->info.n_mtp > 0;
    s->hid = xcalloc((s->hid_by_pos ? (size_t)n_ctx : B) * D, sizeof(float));
    s->hchain = xcalloc(D, sizeof(float));
    s->xcat = xcalloc(B * 2 * D, sizeof(float));
    s->cache_bf16 = cache_type == DSEEK_CACHE_BF16;
    s->cache_bytes = nl * (size_t)n_ctx * (R + rope) * (s->cache_bf16 ? 2 : 4);
    s->cache = huge_zalloc(&s->cache_bytes);
    s->cview = s->cache_bf16 ? xcalloc((size_t)n_ctx * (R + rope), sizeof(float)) : NULL;
    s->rope_cs = xcalloc((size_t)n_ctx * rope, sizeof(float));
    if (!s->sc.rowbuf || !s->sc.wbuf || !s->sc.qa.q || !s->sc.qa.d || !s->sc.qa.s || !s->qx.q || !s->qx.d ||
        !s->qx.s || !s->qh.q || !s->qh.d || !s->qh.s || !s->hg || !s->hu || !s->hy || !s->hslot || !s->hjob || !s->tcount || !s->trows || !s->jmlp ||
        !s->jrow || !s->jn || !s->qjobs || !s->qfirst || !s->x || !s->xn || !s->y || !s->qa || !s->q || !s->kv || !s->heads ||
        (!all_kbt && (!s->kvb || !s->kvbh)) || !s->att || !s->gate || !s->up || !s->rlogits || !s->topk || !s->topw || !s->etok || !s->xe ||
        !s->ye || !s->hid || !s->hchain || !s->xcat || !s->cache || !s->rope_cs || !s->qtok || !s->part || (s->cache_bf16 && !s->cview) ||
        !s->lat || !s->qblk || !s->scores || (kbt && (!s->qlat.q || !s->qlat.d || !s->qlat.s || !s->hw || !s->hjobs || !s->hfirst || !s->qlc.q || !s->qlc.d ||
                 !s->qlc.s || !s->pbuf))) {
        seterr(err, errlen, "out of memory allocating a session for %d positions", n_ctx);
        dseek_session_free(s);
        return DSEEK_ENOMEM;
    }
    *out = s;
    return 0;
}

/* ============================================================================
 * 8. Sampling
 * ========================================================================== */

struct dseek_sampler {
    dseek_sampler_cfg cfg;
    int V;
    uint64_t rng;             /* xorshift64* state */
    float *prob;              /* [V] the distribution of the last logits row */
    int *order;               /* [V] candidate ids, by falling probability */
};

dseek_sampler *dseek_sampler_new(const dseek_sampler_cfg *cfg, int V) {
    dseek_sampler *sp = calloc(1, sizeof *sp);
    if (!sp) return NULL;
    sp->cfg = *cfg;
    sp->V = V;
    sp->rng = cfg->seed ? cfg->seed : 0x9E3779B97F4A7C15ull;
    sp->prob = malloc((size_t)V * sizeof(float));
    sp->order = malloc((size_t)V * sizeof(int));
    if (!sp->prob || !sp->order) { dseek_sampler_free(sp); return NULL; }
    return sp;
}

void dseek_sampler_free(dseek_sampler *sp) {
    if (!sp) return;
    free(sp->prob);
    free(sp->order);
    free(sp);
}

static double rng_uniform(uint64_t *st) { /* [0, 1) */
    *st ^= *st >> 12;
    *st ^= *st << 25;
    *st ^= *st >> 27;
    return (double)((*st * 0x2545F4914F6CDD1Dull) >> 11) / 9007199254740992.0;
}

/* Sorting candidates by probability, ties by id (qsort has no context argument). */
static _Thread_local const float *sort_prob;
static int prob_desc(const void *a, const void *b) {
    float x = sort_prob[*(const int *)a], y = sort_prob[*(const int *)b];
    return x > y ? -1 : x < y ? 1 : (*(const int *)a - *(const int *)b);
}

/* Writes into p[V] the distribution the sampler draws from for this logits row:
 * temperature softmax, then min-p, top-k and top-p filtering, renormalized. Greedy
 * (temperature 0) is the one-hot distribution of the argmax (lowest id on ties). */
static void sampler_probs(dseek_sampler *sp, const float *logits, float *p) {
    const int V = sp->V;
    int best = 0;
    for (int i = 1; i < V; i++)
        if (logits[i] > logits[best]) best = i;
    if (sp->cfg.temperature <= 0) {
        memset(p, 0, (size_t)V * sizeof(float));
        p[best] = 1;
        return;
    }
    double sum = 0;
    for (int i = 0; i < V; i++) sum += p[i] = expf((logits[i] - logits[best]) / sp->cfg.temperature);
    for (int i = 0; i < V; i++) p[i] = (float)(p[i] / sum);
    /* min-p: keep tokens with at least min_p times the best probability */
    float floor_p = sp->cfg.min_p > 0 ? sp->cfg.min_p * p[best] : 0;
    int n = 0;
    for (int i = 0; i < V; i++)
        if (p[i] >= floor_p && p[i] > 0) sp->order[n++] = i;
    int k = sp->cfg.top_k > 0 && sp->cfg.top_k < n ? sp->cfg.top_k : n;
    if (k < n || (sp->cfg.top_p > 0 && sp->cfg.top_p < 1)) {
        sort_prob = p;
        qsort(sp->order, (size_t)n, sizeof(int), prob_desc);
        n = k;
        if (sp->cfg.top_p > 0 && sp->cfg.top_p < 1) {
            double cum = 0;
            for (int i = 0; i < n; i++)
                if ((cum += p[sp->order[i]]) >= sp->cfg.top_p) { n = i + 1; break; }
        }
    }
    if (n == V) return;
    double kept = 0;
    for (int i = 0; i < n; i++) kept += p[sp->order[i]];
    for (int i = 0; i < n; i++) p[sp->order[i]] = -(float)(p[sp->order[i]] / kept); /* negative marks kept */
    for (int i = 0; i < V; i++) p[i] = p[i] < 0 ? -p[i] : 0;
}

/* Draws an id from the distribution p[V]. */
static int sample_from(dseek_sampler *sp, const float *p) {
    double r = rng_uniform(&sp->rng), acc = 0;
    int last = 0;
    for (int i = 0; i < sp->V; i++) {
        if (p[i] <= 0) continue;
        acc += p[i];
        last = i;
        if (r < acc) return i;
    }
    return last; /* rounding left r just above the total */
}

int dseek_sample(dseek_sampler *sp, const float *logits) {
    sampler_probs(sp, logits, sp->prob);
    return sample_from(sp, sp->prob);
}

/* ============================================================================
 * 9. Tokenizer
 *
 * Hugging Face `tokenizer.json` (BPE model, ByteLevel byte mapping, Split
 * pre-tokenizers driven by PCRE2) plus `tokenizer_config.json` (bos/eos,
 * add_bos_token, chat template family). Encoding: added tokens first (longest
 * match), then normalizer, pre-tokenizer, BPE merges by rank. Decoding: whole
 * or streaming, with UTF-8 repair. Also DeepSeek chat templates and an R1
 * <think> splitter.
 * Helpers are static and prefixed tk_.
 * ========================================================================== */


/* ----------------------------------------------------------------------------
 * Small utilities: errors, growable buffers, files, UTF-8
 * ------------------------------------------------------------------------- */

#define TK_MAX_ID (1 << 26)     /* sanity bound on token ids */

/* Formats one error line into err (if any); always returns -1. */
static int tk_fail(char *err, size_t errlen, const char *fmt, ...) {
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
        oneline(err);
    }
    return -1;
}

/* Ensures *p (elements of size elem, capacity *cap) can hold need elements.
 * Returns 0, or -1 when out of memory (*p left untouched). */
static int tk_grow(void *pp, size_t *cap, size_t need, size_t elem) {
    void **p = (void **)pp;
    if (need <= *cap) return 0;
    size_t nc = *cap ? *cap : 16;
    while (nc < need) {
        if (nc > SIZE_MAX / 2 / elem) return -1;
        nc *= 2;
    }
    void *np = realloc(*p, nc * elem);
    if (!np) return -1;
    *p = np;
    *cap = nc;
    return 0;
}

typedef struct {
    char   *p;              /* bytes, always NUL terminated when non-NULL */
    size_t  n;              /* bytes used (without the NUL) */
    size_t  cap;            /* bytes allocated */
} tk_buf;

/* Appends n bytes to b. Returns 0, or -1 when out of memory. */
static int tk_buf_put(tk_buf *b, const void *s, size_t n) {
    if (tk_grow(&b->p, &b->cap, b->n + n + 1, 1)) return -1;
    if (n) memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
    return 0;
}

/* Copies n bytes of s into a new NUL-terminated string (NULL if no memory). */
static char *tk_strndup(const char *s, size_t n) {
    char *d = malloc(n + 1);
    if (!d) return NULL;
    memcpy(d, s, n);
    d[n] = 0;
    return d;
}

/* Reads a whole file. Returns a malloc'ed NUL-terminated buffer and its
 * length, or NULL (errno set). */
static char *tk_read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    tk_buf b = {0};
    char chunk[65536];
    size_t got;
    while ((got = fread(chunk, 1, sizeof chunk, f)) > 0) {
        if (tk_buf_put(&b, chunk, got)) {
            free(b.p);
            fclose(f);
            errno = ENOMEM;
            return NULL;
        }
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        free(b.p);
        errno = EIO;
        return NULL;
    }
    if (!b.p && tk_buf_put(&b, "", 0)) {
        errno = ENOMEM;
        return NULL;
    }
    *len = b.n;
    return b.p;
}

/* The last path component (for error messages). */
static const char *tk_basename(const char *path) {
    const char *s = strrchr(path, '/');
    return s ? s + 1 : path;
}

/* Decodes one well-formed UTF-8 character at s (n bytes available).
 * Returns its length (1..4) and stores the code point, or 0 if the bytes
 * there are not a complete well-formed character. */
static size_t tk_utf8_decode(const unsigned char *s, size_t n, uint32_t *cp) {
    if (n == 0) return 0;
    unsigned c = s[0];
    if (c < 0x80) { *cp = c; return 1; }
    size_t len;
    uint32_t v;
    unsigned lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF)      { len = 2; v = c & 0x1F; }
    else if (c >= 0xE0 && c <= 0xEF) { len = 3; v = c & 0x0F;
                                       if (c == 0xE0) lo = 0xA0;
                                       if (c == 0xED) hi = 0x9F; }
    else if (c >= 0xF0 && c <= 0xF4) { len = 4; v = c & 0x07;
                                       if (c == 0xF0) lo = 0x90;
                                       if (c == 0xF4) hi = 0x8F; }
    else return 0;
    for (size_t i = 1; i < len; i++) {
        if (i >= n) return 0;
        unsigned d = s[i];
        if (d < lo || d > hi) return 0;
        lo = 0x80; hi = 0xBF;
        v = (v << 6) | (d & 0x3F);
    }
    *cp = v;
    return len;
}

/* Classifies the sequence at s (n > 0 bytes available):
 *  > 0  a complete well-formed character of that length;
 *  0    with *bad > 0: an ill-formed sequence whose maximal subpart is *bad
 *       bytes (to be replaced by one U+FFFD);
 *  0    with *bad == 0: a well-formed prefix cut by the end of the input. */
static size_t tk_utf8_check(const unsigned char *s, size_t n, size_t *bad) {
    unsigned c = s[0];
    *bad = 1;
    if (c < 0x80) return 1;
    size_t len;
    unsigned lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF)      len = 2;
    else if (c >= 0xE0 && c <= 0xEF) { len = 3; if (c == 0xE0) lo = 0xA0;
                                       if (c == 0xED) hi = 0x9F; }
    else if (c >= 0xF0 && c <= 0xF4) { len = 4; if (c == 0xF0) lo = 0x90;
                                       if (c == 0xF4) hi = 0x8F; }
    else return 0;
    for (size_t i = 1; i < len; i++) {
        if (i >= n) { *bad = 0; return 0; }
        unsigned d = s[i];
        if (d < lo || d > hi) { *bad = i; return 0; }
        lo = 0x80; hi = 0xBF;
    }
    return len;
}

/* Length of the character at s for splitting purposes: the well-formed
 * length, or 1 for a byte that does not start a well-formed character. */
static size_t tk_char_len(const unsigned char *s, size_t n) {
    uint32_t cp;
    size_t l = tk_utf8_decode(s, n, &cp);
    return l ? l : 1;
}

/* Writes code point cp as UTF-8 into out (>= 4 bytes); returns the length. */
static size_t tk_utf8_encode(uint32_t cp, char *out) {
    unsigned char *o = (unsigned char *)out;
    if (cp < 0x80) { o[0] = (unsigned char)cp; return 1; }
    if (cp < 0x800) {
        o[0] = (unsigned char)(0xC0 | (cp >> 6));
        o[1] = (unsigned char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (unsigned char)(0xE0 | (cp >> 12));
        o[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (unsigned char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (unsigned char)(0xF0 | (cp >> 18));
    o[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
    o[3] = (unsigned char)(0x80 | (cp & 0x3F));
    return 4;
}

/* Unicode White_Space (what Rust's char::is_whitespace accepts). */
static int tk_is_space_cp(uint32_t c) {
    return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 ||
           c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 ||
           c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

/* Bytes of whitespace at the start of s[0..n). */
static size_t tk_space_prefix(const char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        uint32_t cp;
        size_t l = tk_utf8_decode((const unsigned char *)s + i, n - i, &cp);
        if (!l || !tk_is_space_cp(cp)) break;
        i += l;
    }
    return i;
}

/* Start of the character that ends right before s[i] (i > 0). */
static size_t tk_prev_char(const char *s, size_t i) {
    size_t j = i - 1;
    while (j > 0 && i - j < 4 && ((unsigned char)s[j] & 0xC0) == 0x80) j--;
    uint32_t cp;
    if (tk_utf8_decode((const unsigned char *)s + j, i - j, &cp) == i - j)
        return j;
    return i - 1;
}

/* Bytes of whitespace at the end of s[0..n). */
static size_t tk_space_suffix(const char *s, size_t n) {
    size_t i = n;
    while (i > 0) {
        size_t j = tk_prev_char(s, i);
        uint32_t cp;
        if (tk_utf8_decode((const unsigned char *)s + j, i - j, &cp) != i - j ||
            !tk_is_space_cp(cp)) break;
        i = j;
    }
    return n - i;
}

/* Word byte for added tokens' single_word flag: ASCII letters, digits and
 * '_', and every non-ASCII byte (a cheap stand-in for Unicode
 * alphanumerics). */
static int tk_is_word_byte(unsigned char c) {
    return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') ||
           (c >= 'a' && c <= 'z') || c == '_' || c >= 0x80;
}

/* Hash of a byte string (FNV-1a with a final mix). */
static uint64_t tk_hash(const void *p, size_t n) {
    const unsigned char *s = p;
    uint64_t h = 0xcbf29ce484222325ULL;           /* FNV-1a */
    for (size_t i = 0; i < n; i++) { h ^= s[i]; h *= 0x100000001b3ULL; }
    return h ^ (h >> 29);
}

/* Mixes a 64-bit key (for the pair map). */
static uint64_t tk_mix64(uint64_t x) {
    x ^= x >> 33; x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33; x *= 0xc4ceb9fe1a85ec53ULL;
    return x ^ (x >> 33);
}

/* ----------------------------------------------------------------------------
 * String table and maps: vocabulary (string -> id), merges (pair -> rank)
 * ------------------------------------------------------------------------- */

typedef struct {
    char     *pool;         /* all strings, each NUL terminated */
    size_t    n_pool;       /* bytes used in pool */
    size_t    cap_pool;     /* bytes allocated in pool */
    uint32_t *off;          /* per id: offset into pool, UINT32_MAX if none */
    uint32_t *len;          /* per id: length in bytes */
    size_t    n;            /* number of ids */
} tk_strtab;

/* Allocates a table for n ids, all absent. Returns 0 or -1. */
static int tk_strtab_init(tk_strtab *t, size_t n) {
    memset(t, 0, sizeof *t);
    t->off = malloc((n ? n : 1) * sizeof *t->off);
    t->len = calloc(n ? n : 1, sizeof *t->len);
    if (!t->off || !t->len) return -1;
    for (size_t i = 0; i < n; i++) t->off[i] = UINT32_MAX;
    t->n = n;
    return 0;
}

/* Frees the table's storage. */
static void tk_strtab_free(tk_strtab *t) {
    free(t->pool); free(t->off); free(t->len);
    memset(t, 0, sizeof *t);
}

/* Stores s[0..n) as the string of id. Returns 0 or -1 (no memory). */
static int tk_strtab_set(tk_strtab *t, size_t id, const char *s, size_t n) {
    if (t->n_pool + n + 1 > UINT32_MAX) return -1;
    if (tk_grow(&t->pool, &t->cap_pool, t->n_pool + n + 1, 1)) return -1;
    memcpy(t->pool + t->n_pool, s, n);
    t->pool[t->n_pool + n] = 0;
    t->off[id] = (uint32_t)t->n_pool;
    t->len[id] = (uint32_t)n;
    t->n_pool += n + 1;
    return 0;
}

/* String of id and its length, or NULL if the id has none. */
static const char *tk_strtab_get(const tk_strtab *t, int id, size_t *len) {
    if (id < 0 || (size_t)id >= t->n || t->off[id] == UINT32_MAX) return NULL;
    if (len) *len = t->len[id];
    return t->pool + t->off[id];
}

typedef struct {
    int32_t *slot;          /* ids (keys live in a tk_strtab), -1 = empty */
    size_t   mask;          /* slots - 1 (power of two) */
} tk_strmap;

/* Allocates an empty map for about n_keys keys. Returns 0 or -1. */
static int tk_strmap_init(tk_strmap *m, size_t n_keys) {
    size_t cap = 16;
    while (cap < n_keys * 2 + 1) cap *= 2;
    m->slot = malloc(cap * sizeof *m->slot);
    if (!m->slot) return -1;
    memset(m->slot, 0xff, cap * sizeof *m->slot);
    m->mask = cap - 1;
    return 0;
}

/* Looks up s[0..n) among the strings of t. Returns the id or -1. */
static int tk_strmap_get(const tk_strmap *m, const tk_strtab *t,
                         const char *s, size_t n) {
    size_t i = (size_t)tk_hash(s, n) & m->mask;
    for (;;) {
        int32_t id = m->slot[i];
        if (id < 0) return -1;
        if (t->len[id] == n && memcmp(t->pool + t->off[id], s, n) == 0)
            return id;
        i = (i + 1) & m->mask;
    }
}

/* Inserts id (its string taken from t); keeps an existing equal key. */
static void tk_strmap_put(tk_strmap *m, const tk_strtab *t, int id) {
    const char *s = t->pool + t->off[id];
    size_t n = t->len[id];
    size_t i = (size_t)tk_hash(s, n) & m->mask;
    while (m->slot[i] >= 0) {
        int32_t o = m->slot[i];
        if (t->len[o] == n && memcmp(t->pool + t->off[o], s, n) == 0) return;
        i = (i + 1) & m->mask;
    }
    m->slot[i] = id;
}

typedef struct {
    uint64_t *key;          /* (left id << 32) | right id; UINT64_MAX empty */
    uint32_t *rank;         /* merge priority: lower merges first */
    int32_t  *out;          /* id of the merged token */
    size_t    mask;         /* slots - 1 (power of two) */
} tk_pairmap;

/* Allocates an empty map for about n_keys pairs. Returns 0 or -1. */
static int tk_pairmap_init(tk_pairmap *m, size_t n_keys) {
    size_t cap = 16;
    while (cap < n_keys * 2 + 1) cap *= 2;
    m->key = malloc(cap * sizeof *m->key);
    m->rank = malloc(cap * sizeof *m->rank);
    m->out = malloc(cap * sizeof *m->out);
    if (!m->key || !m->rank || !m->out) return -1;
    memset(m->key, 0xff, cap * sizeof *m->key);
    m->mask = cap - 1;
    return 0;
}

/* Frees the map's storage. */
static void tk_pairmap_free(tk_pairmap *m) {
    free(m->key); free(m->rank); free(m->out);
    memset(m, 0, sizeof *m);
}

/* Sets the merge of (a, b); a later duplicate overrides (as HF does). */
static void tk_pairmap_put(tk_pairmap *m, int a, int b, uint32_t rank,
                           int out) {
    uint64_t k = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    size_t i = (size_t)tk_mix64(k) & m->mask;
    while (m->key[i] != UINT64_MAX && m->key[i] != k) i = (i + 1) & m->mask;
    m->key[i] = k;
    m->rank[i] = rank;
    m->out[i] = out;
}

/* Finds the merge of (a, b). Returns 1 and fills rank/out, or 0. */
static int tk_pairmap_get(const tk_pairmap *m, int a, int b, uint32_t *rank,
                          int *out) {
    if (!m->key) return 0;
    uint64_t k = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    size_t i = (size_t)tk_mix64(k) & m->mask;
    for (;;) {
        uint64_t x = m->key[i];
        if (x == UINT64_MAX) return 0;
        if (x == k) { *rank = m->rank[i]; *out = m->out[i]; return 1; }
        i = (i + 1) & m->mask;
    }
}

/* ----------------------------------------------------------------------------
 * Added tokens and their byte trie (leftmost-longest matching)
 * ------------------------------------------------------------------------- */

typedef struct {
    char    *content;       /* text to match (normalized if `normalized`) */
    size_t   len;           /* bytes in content */
    int      id;            /* token id */
    int      special;       /* "special": skipped by DSEEK_DETOK_SKIP_SPECIAL */
    int      lstrip;        /* match swallows whitespace on its left */
    int      rstrip;        /* match swallows whitespace on its right */
    int      single_word;   /* only matches outside words */
    int      normalized;    /* matched on normalized text */
} tk_added;

typedef struct {
    int32_t       child;    /* first child node, -1 if none */
    int32_t       sibling;  /* next sibling node, -1 if none */
    int32_t       tok;      /* added token ending here (index), -1 if none */
    unsigned char byte;     /* byte on the edge into this node */
} tk_tnode;

typedef struct {
    tk_tnode *node;         /* nodes below the root */
    size_t    n;            /* nodes used */
    size_t    cap;          /* nodes allocated */
    int32_t   root[256];    /* first-level node per byte, -1 if none */
    int       used;         /* 1 once a token was inserted */
} tk_trie;

/* Makes an empty trie. */
static void tk_trie_init(tk_trie *t) {
    memset(t, 0, sizeof *t);
    for (int i = 0; i < 256; i++) t->root[i] = -1;
}

/* Appends a fresh node for byte. Returns its index or -1 (no memory). */
static int32_t tk_trie_node(tk_trie *t, unsigned char byte) {
    if (tk_grow(&t->node, &t->cap, t->n + 1, sizeof *t->node)) return -1;
    tk_tnode *x = &t->node[t->n];
    x->child = x->sibling = x->tok = -1;
    x->byte = byte;
    return (int32_t)t->n++;
}

/* Inserts token index tok with bytes s[0..n) (n > 0); the first token with
 * a given content wins. Returns 0 or -1 (no memory). */
static int tk_trie_put(tk_trie *t, const char *s, size_t n, int tok) {
    const unsigned char *u = (const unsigned char *)s;
    int32_t x = t->root[u[0]];
    if (x < 0) {
        if ((x = tk_trie_node(t, u[0])) < 0) return -1;
        t->root[u[0]] = x;
    }
    for (size_t i = 1; i < n; i++) {
        int32_t c = t->node[x].child;
        while (c >= 0 && t->node[c].byte != u[i]) c = t->node[c].sibling;
        if (c < 0) {
            if ((c = tk_trie_node(t, u[i])) < 0) return -1;
            t->node[c].sibling = t->node[x].child;
            t->node[x].child = c;
        }
        x = c;
    }
    if (t->node[x].tok < 0) t->node[x].tok = tok;
    t->used = 1;
    return 0;
}

/* Longest token that is a prefix of s[0..n). Returns its index and length,
 * or -1. */
static int tk_trie_longest(const tk_trie *t, const char *s, size_t n,
                           size_t *mlen) {
    const unsigned char *u = (const unsigned char *)s;
    int32_t x = t->root[u[0]];
    int best = -1;
    size_t i = 1;
    while (x >= 0) {
        if (t->node[x].tok >= 0) { best = t->node[x].tok; *mlen = i; }
        if (i >= n) break;
        unsigned char c = u[i++];
        x = t->node[x].child;
        while (x >= 0 && t->node[x].byte != c) x = t->node[x].sibling;
    }
    return best;
}

/* ----------------------------------------------------------------------------
 * Regular expressions (PCRE2, UTF + UCP, invalid UTF-8 tolerated)
 * ------------------------------------------------------------------------- */

typedef struct {
    size_t s, e;            /* byte range [s, e) */
    int    m;               /* 1 if the range is a match (delimiter) */
} tk_piece;

/* Compiles an HF pattern: {"Regex": ...} or {"String": ...} (literal).
 * Oniguruma semantics are approximated: ^ and $ match at line ends.
 * Returns the code or NULL with a message in msg. */
static pcre2_code *tk_re_compile(const char *pat, size_t len, int literal,
                                 char *msg, size_t msglen) {
    uint32_t opt = PCRE2_UTF | PCRE2_MATCH_INVALID_UTF;
    if (literal) opt |= PCRE2_LITERAL;
    else opt |= PCRE2_UCP | PCRE2_MULTILINE;
    int ec;
    PCRE2_SIZE eo;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)pat, len, opt, &ec, &eo, NULL);
    if (!re) {
        PCRE2_UCHAR buf[160];
        pcre2_get_error_message(ec, buf, sizeof buf);
        snprintf(msg, msglen, "%s at offset %zu", (char *)buf, (size_t)eo);
        return NULL;
    }
    pcre2_jit_compile(re, PCRE2_JIT_COMPLETE);   /* optional speed-up */
    return re;
}

/* Runs one match; falls back from JIT to the interpreter on stack limits. */
static int tk_re_match(const pcre2_code *re, const char *s, size_t n,
                       size_t pos, uint32_t opt, pcre2_match_data *md) {
    int rc = pcre2_match(re, (PCRE2_SPTR)s, n, pos, opt, md, NULL);
    if (rc == PCRE2_ERROR_JIT_STACKLIMIT)
        rc = pcre2_match(re, (PCRE2_SPTR)s, n, pos, opt | PCRE2_NO_JIT, md,
                         NULL);
    return rc;
}

/* Cuts s[0..n) into pieces covering it: the matches of re (m = 1, empty
 * matches included) and the gaps between them (m = 0), appended to *pc.
 * Returns 0, or -1 (no memory or a regex run-time error). */
static int tk_re_pieces(const pcre2_code *re, const char *s, size_t n,
                        pcre2_match_data *md, tk_piece **pc, size_t *n_pc,
                        size_t *cap_pc) {
    size_t pos = 0, prev = 0;
    uint32_t opt = 0;
    while (pos <= n) {
        int rc = tk_re_match(re, s, n, pos, opt, md);
        if (rc == PCRE2_ERROR_NOMATCH) {
            if (!opt) break;
            /* no non-empty match right after an empty one: step a char */
            if (pos >= n) break;
            pos += tk_char_len((const unsigned char *)s + pos, n - pos);
            opt = 0;
            continue;
        }
        if (rc < 0) return -1;
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
        size_t ms = ov[0], me = ov[1];
        if (me < ms) me = ms;                       /* \K oddities */
        if (tk_grow(pc, cap_pc, *n_pc + 2, sizeof **pc)) return -1;
        if (ms > prev) (*pc)[(*n_pc)++] = (tk_piece){prev, ms, 0};
        (*pc)[(*n_pc)++] = (tk_piece){ms, me, 1};
        prev = me;
        pos = me;
        opt = (ms == me) ? (PCRE2_NOTEMPTY_ATSTART | PCRE2_ANCHORED) : 0;
    }
    if (prev < n) {
        if (tk_grow(pc, cap_pc, *n_pc + 1, sizeof **pc)) return -1;
        (*pc)[(*n_pc)++] = (tk_piece){prev, n, 0};
    }
    return 0;
}

/* ----------------------------------------------------------------------------
 * Normalizers and pre-tokenizers (the subset of the HF format we run)
 * ------------------------------------------------------------------------- */

enum { TK_NORM_PREPEND, TK_NORM_REPLACE, TK_NORM_STRIP };

typedef struct {
    int         kind;       /* TK_NORM_* */
    pcre2_code *re;         /* Replace: pattern */
    char       *str;        /* Prepend: prefix; Replace: replacement */
    size_t      len;        /* bytes in str */
    int         left;       /* Strip: strip the left side */
    int         right;      /* Strip: strip the right side */
} tk_norm;

enum { TK_PRE_SPLIT, TK_PRE_BYTELEVEL };

enum {                      /* HF SplitDelimiterBehavior */
    TK_REMOVED, TK_ISOLATED, TK_MERGED_PREV, TK_MERGED_NEXT, TK_CONTIGUOUS
};

typedef struct {
    int         kind;       /* TK_PRE_* */
    pcre2_code *re;         /* Split pattern / ByteLevel GPT-2 regex */
    int         behavior;   /* Split: TK_REMOVED ... TK_CONTIGUOUS */
    int         invert;     /* Split: the pattern matches what to keep */
    int         prefix;     /* ByteLevel: add_prefix_space */
} tk_pre;

/* GPT-2's pre-tokenization regex, used by ByteLevel when use_regex is set. */
static const char tk_gpt2_re[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+"
    "|\\s+(?!\\S)|\\s+";

/* ----------------------------------------------------------------------------
 * The tokenizer object
 * ------------------------------------------------------------------------- */

struct dseek_tokenizer {
    size_t      n_vocab;        /* max id + 1 (model and added tokens) */
    tk_strtab   vocab;          /* model vocabulary strings by id */
    tk_strmap   vocab_map;      /* model vocabulary string -> id */
    tk_pairmap  merges;         /* (left, right) -> rank, merged id */
    tk_strtab   dec;            /* per id: decoded bytes */
    unsigned char *is_special;  /* per id: 1 if a special added token */

    tk_added   *added;          /* added tokens */
    size_t      n_added;
    tk_trie     trie_raw;       /* added tokens matched on raw text */
    tk_trie     trie_norm;      /* added tokens matched after normalizing */

    tk_norm    *norm;           /* normalizer steps, in order */
    size_t      n_norm;
    tk_pre     *pre;            /* pre-tokenizer steps, in order */
    size_t      n_pre;

    int         unk_id;         /* model.unk_token id, -1 if none */
    int         fuse_unk;       /* merge consecutive unknowns */
    int         byte_fallback;  /* unknown chars as <0xXX> tokens */
    int         byte_ids[256];  /* <0xXX> ids when byte_fallback */
    int         ignore_merges;  /* whole words found in vocab skip BPE */
    int32_t     cp_id[0x180];   /* id of the 1-char token per code point */

    uint32_t    b2u[256];       /* ByteLevel byte -> code point */
    char        b2u_utf8[256][2]; /* ... as UTF-8 */
    unsigned char b2u_len[256]; /* ... its length (1 or 2) */
    int16_t     u2b[0x144];     /* inverse: code point -> byte, -1 */

    int         add_bos;        /* tokenizer_config add_bos_token */
    int         bos_id;         /* -1 if none */
    int         eos_id;         /* -1 if none */
    char       *bos_str;        /* bos token text, "" if none */
    char       *eos_str;        /* eos token text, "" if none */
    dseek_chat_family family;   /* chat template family */
    int         think_prompt;   /* R1 generation prompt opens <think> */
};

/* Frees the trie's nodes. */
static void tk_trie_free(tk_trie *t) { free(t->node); t->node = NULL; }

/* Frees everything the tokenizer owns (NULL is fine). */
void dseek_tokenizer_free(dseek_tokenizer *tok) {
    if (!tok) return;
    tk_strtab_free(&tok->vocab);
    free(tok->vocab_map.slot);
    tk_pairmap_free(&tok->merges);
    tk_strtab_free(&tok->dec);
    free(tok->is_special);
    for (size_t i = 0; i < tok->n_added; i++) free(tok->added[i].content);
    free(tok->added);
    tk_trie_free(&tok->trie_raw);
    tk_trie_free(&tok->trie_norm);
    for (size_t i = 0; i < tok->n_norm; i++) {
        pcre2_code_free(tok->norm[i].re);
        free(tok->norm[i].str);
    }
    free(tok->norm);
    for (size_t i = 0; i < tok->n_pre; i++) pcre2_code_free(tok->pre[i].re);
    free(tok->pre);
    free(tok->bos_str);
    free(tok->eos_str);
    free(tok);
}

/* Fills the GPT-2 byte <-> unicode tables: printable Latin-1 bytes map to
 * themselves, the rest to 256, 257, ... in byte order. */
static void tk_init_bytelevel(dseek_tokenizer *tok) {
    uint32_t next = 256;
    for (int i = 0; i < 0x144; i++) tok->u2b[i] = -1;
    for (int b = 0; b < 256; b++) {
        int keep = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) ||
                   (b >= 0xAE && b <= 0xFF);
        tok->b2u[b] = keep ? (uint32_t)b : next++;
        tok->u2b[tok->b2u[b]] = (int16_t)b;
        tok->b2u_len[b] =
            (unsigned char)tk_utf8_encode(tok->b2u[b], tok->b2u_utf8[b]);
    }
}

/* Inverse ByteLevel mapping: byte of code point cp, or -1. */
static int tk_u2b(const dseek_tokenizer *tok, uint32_t cp) {
    return cp < 0x144 ? tok->u2b[cp] : -1;
}

/* ----------------------------------------------------------------------------
 * Loading tokenizer.json
 * ------------------------------------------------------------------------- */

typedef struct {
    const char *file;       /* file name for messages */
    char       *err;        /* caller's error buffer */
    size_t      errlen;     /* its size */
} tk_ctx;

/* Reads an optional boolean field (absent or null -> def). Returns 0, or -1
 * with an error if present with another type. */
static int tk_json_bool(tk_ctx *c, const cJSON *o, const char *path,
                        const char *key, int def, int *out) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!v || cJSON_IsNull(v)) { *out = def; return 0; }
    if (!cJSON_IsBool(v))
        return tk_fail(c->err, c->errlen, "%s: %s.%s: not a boolean",
                       c->file, path, key);
    *out = cJSON_IsTrue(v) ? 1 : 0;
    return 0;
}

/* Reads a required string field. */
static int tk_json_str(tk_ctx *c, const cJSON *o, const char *path,
                       const char *key, const char **out) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!v) return tk_fail(c->err, c->errlen, "%s: %s.%s: missing",
                           c->file, path, key);
    if (!cJSON_IsString(v) || !v->valuestring)
        return tk_fail(c->err, c->errlen, "%s: %s.%s: not a string",
                       c->file, path, key);
    *out = v->valuestring;
    return 0;
}

/* Reads a JSON number that must be an integer in [0, TK_MAX_ID). */
static int tk_json_id(const cJSON *v, int *out) {
    if (!cJSON_IsNumber(v)) return -1;
    double d = v->valuedouble;
    if (d < 0 || d >= TK_MAX_ID || d != (double)(int)d) return -1;
    *out = (int)d;
    return 0;
}

/* Compiles an HF pattern object {"Regex": s} or {"String": s}. */
static pcre2_code *tk_load_pattern(tk_ctx *c, const cJSON *o,
                                   const char *path) {
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(o, "pattern");
    const cJSON *v;
    int literal;
    if (!cJSON_IsObject(p)) {
        tk_fail(c->err, c->errlen, "%s: %s.pattern: missing or not an object",
                c->file, path);
        return NULL;
    }
    if ((v = cJSON_GetObjectItemCaseSensitive(p, "Regex")) != NULL) literal = 0;
    else if ((v = cJSON_GetObjectItemCaseSensitive(p, "String")) != NULL)
        literal = 1;
    else {
        tk_fail(c->err, c->errlen, "%s: %s.pattern: neither Regex nor String",
                c->file, path);
        return NULL;
    }
    if (!cJSON_IsString(v) || !v->valuestring) {
        tk_fail(c->err, c->errlen, "%s: %s.pattern.%s: not a string",
                c->file, path, literal ? "String" : "Regex");
        return NULL;
    }
    char msg[200];
    pcre2_code *re = tk_re_compile(v->valuestring, strlen(v->valuestring),
                                   literal, msg, sizeof msg);
    if (!re)
        tk_fail(c->err, c->errlen, "%s: %s.pattern: bad regex: %s",
                c->file, path, msg);
    return re;
}

/* Appends one normalizer step (takes ownership of re and str). */
static int tk_add_norm(dseek_tokenizer *tok, tk_ctx *c, tk_norm st) {
    tk_norm *p = realloc(tok->norm, (tok->n_norm + 1) * sizeof *p);
    if (!p) {
        pcre2_code_free(st.re);
        free(st.str);
        return tk_fail(c->err, c->errlen, "%s: out of memory", c->file);
    }
    tok->norm = p;
    tok->norm[tok->n_norm++] = st;
    return 0;
}

typedef int (*tk_loader)(dseek_tokenizer *tok, tk_ctx *c, const cJSON *n, const char *path, int depth);

/* The part normalizers and pre-tokenizers share: null is nothing, a node must be an object
 * with a "type", and a Sequence loads each element of its array `key` with `load`.
 * Returns -1 on error, 1 when the node is done (null or Sequence), 0 with *type set. */
static int tk_load_node(dseek_tokenizer *tok, tk_ctx *c, const cJSON *n, const char *path, int depth,
                        const char *key, tk_loader load, const char **type) {
    if (!n || cJSON_IsNull(n)) return 1;
    if (depth > 16) return tk_fail(c->err, c->errlen, "%s: %s: nested too deep", c->file, path);
    if (!cJSON_IsObject(n)) return tk_fail(c->err, c->errlen, "%s: %s: not an object", c->file, path);
    if (tk_json_str(c, n, path, "type", type)) return -1;
    if (strcmp(*type, "Sequence")) return 0;
    const cJSON *arr = cJSON_GetObjectItemCaseSensitive(n, key);
    if (!cJSON_IsArray(arr))
        return tk_fail(c->err, c->errlen, "%s: %s.%s: missing or not an array", c->file, path, key);
    int i = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, arr) {
        char sub[256];
        snprintf(sub, sizeof sub, "%s.%s[%d]", path, key, i++);
        if (load(tok, c, it, sub, depth + 1)) return -1;
    }
    return 1;
}

/* Loads a normalizer (recursively for Sequence). */
static int tk_load_normalizer(dseek_tokenizer *tok, tk_ctx *c, const cJSON *n,
                              const char *path, int depth) {
    const char *type = 0;
    int r = tk_load_node(tok, c, n, path, depth, "normalizers", tk_load_normalizer, &type);
    if (r) return r < 0 ? -1 : 0;
    tk_norm st = {0};
    if (!strcmp(type, "Prepend")) {
        const char *s = 0;
        if (tk_json_str(c, n, path, "prepend", &s)) return -1;
        st.kind = TK_NORM_PREPEND;
        st.len = strlen(s);
        if (!(st.str = tk_strndup(s, st.len)))
            return tk_fail(c->err, c->errlen, "%s: out of memory", c->file);
        return tk_add_norm(tok, c, st);
    }
    if (!strcmp(type, "Replace")) {
        const char *s = 0;
        if (tk_json_str(c, n, path, "content", &s)) return -1;
        st.kind = TK_NORM_REPLACE;
        if (!(st.re = tk_load_pattern(c, n, path))) return -1;
        st.len = strlen(s);
        if (!(st.str = tk_strndup(s, st.len))) {
            pcre2_code_free(st.re);
            return tk_fail(c->err, c->errlen, "%s: out of memory", c->file);
        }
        return tk_add_norm(tok, c, st);
    }
    if (!strcmp(type, "Strip")) {
        st.kind = TK_NORM_STRIP;
        if (tk_json_bool(c, n, path, "strip_left", 1, &st.left) ||
            tk_json_bool(c, n, path, "strip_right", 1, &st.right)) return -1;
        return tk_add_norm(tok, c, st);
    }
    return tk_fail(c->err, c->errlen,
                   "%s: %s.type: unsupported normalizer '%s'", c->file, path,
                   type);
}

/* Appends one pre-tokenizer step (takes ownership of st.re). */
static int tk_add_pre(dseek_tokenizer *tok, tk_ctx *c, tk_pre st) {
    tk_pre *p = realloc(tok->pre, (tok->n_pre + 1) * sizeof *p);
    if (!p) {
        pcre2_code_free(st.re);
        return tk_fail(c->err, c->errlen, "%s: out of memory", c->file);
    }
    tok->pre = p;
    tok->pre[tok->n_pre++] = st;
    return 0;
}

/* Adds a Split step with a built-in regex. */
static int tk_add_split(dseek_tokenizer *tok, tk_ctx *c, const char *path,
                        const char *re_src, int behavior, int invert) {
    char msg[200];
    tk_pre st = {0};
    st.kind = TK_PRE_SPLIT;
    st.behavior = behavior;
    st.invert = invert;
    st.re = tk_re_compile(re_src, strlen(re_src), 0, msg, sizeof msg);
    if (!st.re)
        return tk_fail(c->err, c->errlen, "%s: %s: internal regex: %s",
                       c->file, path, msg);
    return tk_add_pre(tok, c, st);
}

/* Parses a SplitDelimiterBehavior name. */
static int tk_behavior(tk_ctx *c, const cJSON *o, const char *path, int def,
                       int *out) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, "behavior");
    if (!v || cJSON_IsNull(v)) { *out = def; return 0; }
    static const struct { const char *name; int b; } names[] = {
        {"Removed", TK_REMOVED}, {"Isolated", TK_ISOLATED},
        {"MergedWithPrevious", TK_MERGED_PREV},
        {"MergedWithNext", TK_MERGED_NEXT}, {"Contiguous", TK_CONTIGUOUS},
    };
    if (cJSON_IsString(v) && v->valuestring)
        for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
            if (!strcmp(v->valuestring, names[i].name)) {
                *out = names[i].b;
                return 0;
            }
    return tk_fail(c->err, c->errlen, "%s: %s.behavior: unknown behavior",
                   c->file, path);
}

/* Loads a pre-tokenizer (recursively for Sequence). */
static int tk_load_pretok(dseek_tokenizer *tok, tk_ctx *c, const cJSON *n,
                          const char *path, int depth) {
    const char *type = 0;
    int r = tk_load_node(tok, c, n, path, depth, "pretokenizers", tk_load_pretok, &type);
    if (r) return r < 0 ? -1 : 0;
    tk_pre st = {0};
    if (!strcmp(type, "Split")) {
        st.kind = TK_PRE_SPLIT;
        if (tk_behavior(c, n, path, -1, &st.behavior)) return -1;
        if (st.behavior < 0)
            return tk_fail(c->err, c->errlen, "%s: %s.behavior: missing",
                           c->file, path);
        if (tk_json_bool(c, n, path, "invert", 0, &st.invert)) return -1;
        if (!(st.re = tk_load_pattern(c, n, path))) return -1;
        return tk_add_pre(tok, c, st);
    }
    if (!strcmp(type, "ByteLevel")) {
        int use_regex = 0;
        st.kind = TK_PRE_BYTELEVEL;
        if (tk_json_bool(c, n, path, "add_prefix_space", 1, &st.prefix) ||
            tk_json_bool(c, n, path, "use_regex", 1, &use_regex)) return -1;
        if (use_regex) {
            char msg[200];
            st.re = tk_re_compile(tk_gpt2_re, strlen(tk_gpt2_re), 0, msg,
                                  sizeof msg);
            if (!st.re)
                return tk_fail(c->err, c->errlen, "%s: %s: internal regex: %s",
                               c->file, path, msg);
        }
        return tk_add_pre(tok, c, st);
    }
    if (!strcmp(type, "Whitespace"))
        return tk_add_split(tok, c, path, "\\w+|[^\\w\\s]+", TK_REMOVED, 1);
    if (!strcmp(type, "WhitespaceSplit"))
        return tk_add_split(tok, c, path, "\\s+", TK_REMOVED, 0);
    if (!strcmp(type, "Digits")) {
        int indiv = 0;
        if (tk_json_bool(c, n, path, "individual_digits", 0, &indiv)) return -1;
        return tk_add_split(tok, c, path, "\\p{N}",
                            indiv ? TK_ISOLATED : TK_CONTIGUOUS, 0);
    }
    if (!strcmp(type, "Punctuation")) {
        int b;
        if (tk_behavior(c, n, path, TK_ISOLATED, &b)) return -1;
        return tk_add_split(tok, c, path, "[\\p{P}!-/:-@\\[-`{-~]", b, 0);
    }
    return tk_fail(c->err, c->errlen,
                   "%s: %s.type: unsupported pre-tokenizer '%s'", c->file, path,
                   type);
}

/* Splits a merge entry ("a b" or ["a", "b"]) into its two halves. */
static int tk_merge_halves(const cJSON *m, const char **a, size_t *na,
                           const char **b, size_t *nb) {
    if (cJSON_IsString(m) && m->valuestring) {
        const char *s = m->valuestring;
        const char *sp = strchr(s, ' ');
        if (!sp || sp == s || !sp[1] || strchr(sp + 1, ' ')) return -1;
        *a = s; *na = (size_t)(sp - s);
        *b = sp + 1; *nb = strlen(sp + 1);
        return 0;
    }
    if (cJSON_IsArray(m) && cJSON_GetArraySize(m) == 2) {
        const cJSON *x = m->child, *y = m->child->next;
        if (!cJSON_IsString(x) || !cJSON_IsString(y) || !x->valuestring ||
            !y->valuestring || !x->valuestring[0] || !y->valuestring[0])
            return -1;
        *a = x->valuestring; *na = strlen(x->valuestring);
        *b = y->valuestring; *nb = strlen(y->valuestring);
        return 0;
    }
    return -1;
}

/* Loads model (BPE): vocab, merges and options. n_vocab must be known. */
static int tk_load_model(dseek_tokenizer *tok, tk_ctx *c, const cJSON *model) {
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    const cJSON *merges = cJSON_GetObjectItemCaseSensitive(model, "merges");
    const cJSON *v;

    /* vocabulary */
    cJSON_ArrayForEach(v, vocab) {
        int id = 0;
        if (tk_json_id(v, &id) || (size_t)id >= tok->vocab.n)
            return tk_fail(c->err, c->errlen,
                           "%s: model.vocab[\"%s\"]: not a valid id", c->file,
                           v->string ? v->string : "?");
        if (tok->vocab.off[id] != UINT32_MAX)
            return tk_fail(c->err, c->errlen,
                           "%s: model.vocab[\"%s\"]: id %d used twice",
                           c->file, v->string, id);
        if (tk_strtab_set(&tok->vocab, (size_t)id, v->string, strlen(v->string)))
            return tk_fail(c->err, c->errlen, "%s: out of memory", c->file);
    }
    if (tk_strmap_init(&tok->vocab_map, (size_t)cJSON_GetArraySize(vocab)))
        return tk_fail(c->err, c->errlen, "%s: out of memory", c->file);
    for (size_t id = 0; id < tok->vocab.n; id++)
        if (tok->vocab.off[id] != UINT32_MAX)
            tk_strmap_put(&tok->vocab_map, &tok->vocab, (int)id);

    /* merges */
    if (!cJSON_IsArray(merges))
        return tk_fail(c->err, c->errlen,
                       "%s: model.merges: missing or not an array", c->file);
    if (tk_pairmap_init(&tok->merges, (size_t)cJSON_GetArraySize(merges)))
        return tk_fail(c->err, c->errlen, "%s: out of memory", c->file);
    uint32_t rank = 0;
    tk_buf joined = {0};
    cJSON_ArrayForEach(v, merges) {
        const char *a, *b;
        size_t na, nb;
        if (tk_merge_halves(v, &a, &na, &b, &nb)) {
            free(joined.p);
            return tk_fail(c->err, c->errlen,
                           "%s: model.merges[%u]: not a string pair", c->file,
                           rank);
        }
        int ia = tk_strmap_get(&tok->vocab_map, &tok->vocab, a, na);
        int ib = tk_strmap_get(&tok->vocab_map, &tok->vocab, b, nb);
        if (ia < 0 || ib < 0) {
            free(joined.p);
            return tk_fail(c->err, c->errlen,
                           "%s: model.merges[%u]: '%.*s' not in vocab",
                           c->file, rank, (int)(ia < 0 ? na : nb),
                           ia < 0 ? a : b);
        }
        joined.n = 0;
        if (tk_buf_put(&joined, a, na) || tk_buf_put(&joined, b, nb)) {
            free(joined.p);
            return tk_fail(c->err, c->errlen, "%s: out of memory", c->file);
        }
        int io = tk_strmap_get(&tok->vocab_map, &tok->vocab, joined.p,
                               joined.n);
        if (io < 0) {
            int bad = tk_fail(c->err, c->errlen,
                              "%s: model.merges[%u]: merged token '%s' not in "
                              "vocab", c->file, rank, joined.p);
            free(joined.p);
            return bad;
        }
        tk_pairmap_put(&tok->merges, ia, ib, rank, io);
        rank++;
    }
    free(joined.p);

    /* options */
    const cJSON *o;
    if (tk_json_bool(c, model, "model", "fuse_unk", 0, &tok->fuse_unk) ||
        tk_json_bool(c, model, "model", "byte_fallback", 0,
                     &tok->byte_fallback) ||
        tk_json_bool(c, model, "model", "ignore_merges", 0,
                     &tok->ignore_merges)) return -1;
    o = cJSON_GetObjectItemCaseSensitive(model, "dropout");
    if (o && !cJSON_IsNull(o) && !(cJSON_IsNumber(o) && o->valuedouble == 0))
        return tk_fail(c->err, c->errlen,
                       "%s: model.dropout: BPE dropout is not supported",
                       c->file);
    static const char *unsup[] = {"continuing_subword_prefix",
                                  "end_of_word_suffix"};
    for (int i = 0; i < 2; i++) {
        o = cJSON_GetObjectItemCaseSensitive(model, unsup[i]);
        if (o && !cJSON_IsNull(o) &&
            !(cJSON_IsString(o) && o->valuestring && !o->valuestring[0]))
            return tk_fail(c->err, c->errlen, "%s: model.%s: not supported",
                           c->file, unsup[i]);
    }
    tok->unk_id = -1;
    o = cJSON_GetObjectItemCaseSensitive(model, "unk_token");
    if (o && !cJSON_IsNull(o)) {
        if (!cJSON_IsString(o) || !o->valuestring)
            return tk_fail(c->err, c->errlen,
                           "%s: model.unk_token: not a string", c->file);
        tok->unk_id = tk_strmap_get(&tok->vocab_map, &tok->vocab,
                                    o->valuestring, strlen(o->valuestring));
        if (tok->unk_id < 0)
            return tk_fail(c->err, c->errlen,
                           "%s: model.unk_token: '%s' not in vocab", c->file,
                           o->valuestring);
    }
    for (int b = 0; b < 256; b++) {
        char name[8];
        snprintf(name, sizeof name, "<0x%02X>", b);
        tok->byte_ids[b] = tok->byte_fallback
            ? tk_strmap_get(&tok->vocab_map, &tok->vocab, name, 6) : -1;
    }
    for (uint32_t cp = 0; cp < 0x180; cp++) {
        char u[4];
        size_t l = tk_utf8_encode(cp, u);
        tok->cp_id[cp] = tk_strmap_get(&tok->vocab_map, &tok->vocab, u, l);
    }
    return 0;
}

/* Loads added_tokens (optional array). */
static int tk_load_added(dseek_tokenizer *tok, tk_ctx *c, const cJSON *arr) {
    if (!arr || cJSON_IsNull(arr)) return 0;
    if (!cJSON_IsArray(arr))
        return tk_fail(c->err, c->errlen, "%s: added_tokens: not an array",
                       c->file);
    size_t n = (size_t)cJSON_GetArraySize(arr);
    tok->added = calloc(n ? n : 1, sizeof *tok->added);
    if (!tok->added) return tk_fail(c->err, c->errlen, "%s: out of memory",
                                    c->file);
    const cJSON *t;
    cJSON_ArrayForEach(t, arr) {
        char path[64];
        snprintf(path, sizeof path, "added_tokens[%zu]", tok->n_added);
        if (!cJSON_IsObject(t))
            return tk_fail(c->err, c->errlen, "%s: %s: not an object", c->file,
                           path);
        tk_added *a = &tok->added[tok->n_added];
        const char *content = 0;
        if (tk_json_id(cJSON_GetObjectItemCaseSensitive(t, "id"), &a->id))
            return tk_fail(c->err, c->errlen,
                           "%s: %s.id: missing or not a valid id", c->file,
                           path);
        if (tk_json_str(c, t, path, "content", &content)) return -1;
        if (!content[0])
            return tk_fail(c->err, c->errlen, "%s: %s.content: empty",
                           c->file, path);
        if (tk_json_bool(c, t, path, "special", 0, &a->special) ||
            tk_json_bool(c, t, path, "lstrip", 0, &a->lstrip) ||
            tk_json_bool(c, t, path, "rstrip", 0, &a->rstrip) ||
            tk_json_bool(c, t, path, "single_word", 0, &a->single_word) ||
            tk_json_bool(c, t, path, "normalized", !a->special,
                         &a->normalized)) return -1;
        a->len = strlen(content);
        if (!(a->content = tk_strndup(content, a->len)))
            return tk_fail(c->err, c->errlen, "%s: out of memory", c->file);
        tok->n_added++;
    }
    return 0;
}

/* Applies the normalizer steps to s[0..n), result in out. Returns 0 or -1. */
static int tk_normalize(const dseek_tokenizer *tok, const char *s, size_t n,
                        tk_buf *out, pcre2_match_data *md, tk_piece **pc,
                        size_t *cap_pc) {
    tk_buf cur = {0};
    out->n = 0;
    if (tk_buf_put(out, s, n)) return -1;
    for (size_t k = 0; k < tok->n_norm; k++) {
        const tk_norm *st = &tok->norm[k];
        cur.n = 0;
        if (tk_buf_put(&cur, "", 0)) goto oom;  /* allocated even if nothing is added */
        if (st->kind == TK_NORM_PREPEND) {
            if (out->n == 0) continue;
            if (tk_buf_put(&cur, st->str, st->len) ||
                tk_buf_put(&cur, out->p, out->n)) goto oom;
        } else if (st->kind == TK_NORM_STRIP) {
            size_t a = st->left ? tk_space_prefix(out->p, out->n) : 0;
            size_t b = st->right ? tk_space_suffix(out->p + a, out->n - a) : 0;
            if (tk_buf_put(&cur, out->p + a, out->n - a - b)) goto oom;
        } else {
            size_t n_pc = 0;
            if (tk_re_pieces(st->re, out->p, out->n, md, pc, &n_pc, cap_pc))
                goto oom;
            for (size_t i = 0; i < n_pc; i++) {
                const tk_piece *p = &(*pc)[i];
                if (p->m ? tk_buf_put(&cur, st->str, st->len)
                         : tk_buf_put(&cur, out->p + p->s, p->e - p->s))
                    goto oom;
            }
        }
        tk_buf t = *out; *out = cur; cur = t;   /* swap */
    }
    free(cur.p);
    return 0;
oom:
    free(cur.p);
    return -1;
}

/* Builds the per-id decoded bytes (ByteLevel decoding when byte_level). */
static int tk_build_decoder(dseek_tokenizer *tok, int byte_level) {
    if (tk_strtab_init(&tok->dec, tok->n_vocab)) return -1;
    tk_buf tmp = {0};
    const char **piece = calloc(tok->n_vocab, sizeof *piece);
    size_t *plen = calloc(tok->n_vocab, sizeof *plen);
    if (!piece || !plen) goto oom;
    for (size_t id = 0; id < tok->n_vocab; id++)
        piece[id] = tk_strtab_get(&tok->vocab, (int)id, &plen[id]);
    for (size_t i = 0; i < tok->n_added; i++) {
        piece[tok->added[i].id] = tok->added[i].content;
        plen[tok->added[i].id] = tok->added[i].len;
    }
    for (size_t id = 0; id < tok->n_vocab; id++) {
        const char *s = piece[id];
        size_t n = plen[id];
        if (!s) continue;
        tmp.n = 0;
        int ok = byte_level;
        for (size_t i = 0; ok && i < n;) {
            uint32_t cp;
            size_t l = tk_utf8_decode((const unsigned char *)s + i, n - i, &cp);
            int b = l ? tk_u2b(tok, cp) : -1;
            if (b < 0) { ok = 0; break; }
            unsigned char byte = (unsigned char)b;
            if (tk_buf_put(&tmp, &byte, 1)) goto oom;
            i += l;
        }
        if (ok ? tk_strtab_set(&tok->dec, id, tmp.p ? tmp.p : "", tmp.n)
               : tk_strtab_set(&tok->dec, id, s, n)) goto oom;
    }
    free(tmp.p); free(piece); free(plen);
    return 0;
oom:
    free(tmp.p); free(piece); free(plen);
    return -1;
}

/* Parses the parsed tokenizer.json root into tok. */
static int tk_load_json(dseek_tokenizer *tok, tk_ctx *c, const cJSON *root) {
    if (!cJSON_IsObject(root))
        return tk_fail(c->err, c->errlen, "%s: not a JSON object", c->file);
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    if (!cJSON_IsObject(model))
        return tk_fail(c->err, c->errlen, "%s: model: missing or not an object",
                       c->file);
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(model, "type");
    if (type && !cJSON_IsNull(type)) {
        if (!cJSON_IsString(type) || !type->valuestring)
            return tk_fail(c->err, c->errlen, "%s: model.type: not a string",
                           c->file);
        if (strcmp(type->valuestring, "BPE"))
            return tk_fail(c->err, c->errlen,
                           "%s: model.type: unsupported model type '%s' "
                           "(only BPE)", c->file, type->valuestring);
    }
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    if (!cJSON_IsObject(vocab))
        return tk_fail(c->err, c->errlen,
                       "%s: model.vocab: missing or not an object", c->file);

    /* sizes: max id over vocab and added tokens */
    int max_id = -1;
    const cJSON *v;
    cJSON_ArrayForEach(v, vocab) {
        int id;
        if (tk_json_id(v, &id))
            return tk_fail(c->err, c->errlen,
                           "%s: model.vocab[\"%s\"]: not a valid id", c->file,
                           v->string ? v->string : "?");
        if (id > max_id) max_id = id;
    }
    if (tk_load_added(tok, c, cJSON_GetObjectItemCaseSensitive(root,
                                                               "added_tokens")))
        return -1;
    for (size_t i = 0; i < tok->n_added; i++)
        if (tok->added[i].id > max_id) max_id = tok->added[i].id;
    if (max_id < 0)
        return tk_fail(c->err, c->errlen, "%s: model.vocab: empty", c->file);
    /* tables are indexed by id: a few bytes of file must not cost gigabytes */
    size_t entries = (size_t)cJSON_GetArraySize(vocab) + tok->n_added;
    if ((size_t)max_id >= 2 * entries + 1024)
        return tk_fail(c->err, c->errlen,
                       "%s: model.vocab: ids up to %d for only %zu tokens (ids this "
                       "sparse are not supported)", c->file, max_id, entries);
    tok->n_vocab = (size_t)max_id + 1;
    if (tk_strtab_init(&tok->vocab, tok->n_vocab))
        return tk_fail(c->err, c->errlen, "%s: out of memory", c->file);
    if (tk_load_model(tok, c, model)) return -1;

    if (tk_load_normalizer(tok, c,
                           cJSON_GetObjectItemCaseSensitive(root, "normalizer"),
                           "normalizer", 0) ||
        tk_load_pretok(tok, c,
                       cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer"),
                       "pre_tokenizer", 0)) return -1;

    /* decoder: ByteLevel, or none (pieces are output as stored) */
    const cJSON *dec = cJSON_GetObjectItemCaseSensitive(root, "decoder");
    int byte_level = 0;
    if (dec && !cJSON_IsNull(dec)) {
        const char *dt = 0;
        if (!cJSON_IsObject(dec))
            return tk_fail(c->err, c->errlen, "%s: decoder: not an object",
                           c->file);
        if (tk_json_str(c, dec, "decoder", "type", &dt)) return -1;
        if (strcmp(dt, "ByteLevel"))
            return tk_fail(c->err, c->errlen,
                           "%s: decoder.type: unsupported decoder '%s'",
                           c->file, dt);
        byte_level = 1;
    }

    /* added tokens: special flags and tries (normalized content for the
     * normalized ones, as HF matches those on normalized text) */
    tok->is_special = calloc(tok->n_vocab, 1);
    if (!tok->is_special)
        return tk_fail(c->err, c->errlen, "%s: out of memory", c->file);
    for (size_t i = 0; i < tok->n_added; i++) {
        tk_added *a = &tok->added[i];
        if (a->special) tok->is_special[a->id] = 1;
        const char *key = a->content;
        size_t klen = a->len;
        tk_buf nb = {0};
        if (a->normalized && tok->n_norm) {
            size_t cap_pc = 0;
            tk_piece *pc = NULL;
            pcre2_match_data *md = pcre2_match_data_create(8, NULL);
            int bad = !md || tk_normalize(tok, a->content, a->len, &nb, md,
                                          &pc, &cap_pc);
            pcre2_match_data_free(md);
            free(pc);
            if (bad) {
                free(nb.p);
                return tk_fail(c->err, c->errlen, "%s: out of memory",
                               c->file);
            }
            key = nb.p;
            klen = nb.n;
        }
        int bad = klen && tk_trie_put(a->normalized ? &tok->trie_norm
                                                    : &tok->trie_raw,
                                      key, klen, (int)i);
        free(nb.p);
        if (bad) return tk_fail(c->err, c->errlen, "%s: out of memory",
                                c->file);
    }
    if (tk_build_decoder(tok, byte_level))
        return tk_fail(c->err, c->errlen, "%s: out of memory", c->file);
    return 0;
}

/* ----------------------------------------------------------------------------
 * Loading tokenizer_config.json
 * ------------------------------------------------------------------------- */

/* Reads bos_token / eos_token: a string, {"content": string} or null.
 * *out is a malloc'ed copy ("" when absent). */
static int tk_config_token(tk_ctx *c, const cJSON *root, const char *key,
                           char **out) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    const char *s = "";
    if (v && cJSON_IsObject(v))
        v = cJSON_GetObjectItemCaseSensitive(v, "content");
    if (v && cJSON_IsString(v) && v->valuestring) s = v->valuestring;
    else if (v && !cJSON_IsNull(v))
        return tk_fail(c->err, c->errlen,
                       "%s: %s: not a string or {\"content\": string}",
                       c->file, key);
    if (!(*out = tk_strndup(s, strlen(s))))
        return tk_fail(c->err, c->errlen, "%s: out of memory", c->file);
    return 0;
}

/* Finds the id of a token text: added token content, then vocabulary. */
static int tk_lookup(const dseek_tokenizer *tok, const char *s, size_t n) {
    for (size_t i = 0; i < tok->n_added; i++)
        if (tok->added[i].len == n && !memcmp(tok->added[i].content, s, n))
            return tok->added[i].id;
    return tk_strmap_get(&tok->vocab_map, &tok->vocab, s, n);
}

/* Recognises the chat template family from its source text. */
static void tk_detect_family(dseek_tokenizer *tok, const char *tpl) {
    tok->family = DSEEK_CHAT_NONE;
    tok->think_prompt = 0;
    if (!tpl) return;
    if (strstr(tpl, "<\xef\xbd\x9cUser\xef\xbd\x9c>") &&          /* <｜User｜> */
        strstr(tpl, "<\xef\xbd\x9c" "Assistant\xef\xbd\x9c>")) {
        tok->family = strstr(tpl, "</think>") ? DSEEK_CHAT_R1 : DSEEK_CHAT_V3;
        tok->think_prompt =
            strstr(tpl, "<\xef\xbd\x9c" "Assistant\xef\xbd\x9c><think>") != NULL;
    } else if (strstr(tpl, "User: ") && strstr(tpl, "Assistant:")) {
        tok->family = DSEEK_CHAT_V2;
    }
}

/* Reads tokenizer_config.json: add_bos_token, bos/eos and the chat
 * template family. */
static int tk_load_config(dseek_tokenizer *tok, tk_ctx *c, const cJSON *root) {
    if (!cJSON_IsObject(root))
        return tk_fail(c->err, c->errlen, "%s: not a JSON object", c->file);
    if (tk_json_bool(c, root, "(root)", "add_bos_token", 0, &tok->add_bos))
        return -1;
    free(tok->bos_str); tok->bos_str = NULL;
    free(tok->eos_str); tok->eos_str = NULL;
    if (tk_config_token(c, root, "bos_token", &tok->bos_str) ||
        tk_config_token(c, root, "eos_token", &tok->eos_str)) return -1;
    tok->bos_id = tok->eos_id = -1;
    if (tok->bos_str[0] &&
        (tok->bos_id = tk_lookup(tok, tok->bos_str, strlen(tok->bos_str))) < 0)
        return tk_fail(c->err, c->errlen, "%s: bos_token: '%s' is not a token",
                       c->file, tok->bos_str);
    if (tok->eos_str[0] &&
        (tok->eos_id = tk_lookup(tok, tok->eos_str, strlen(tok->eos_str))) < 0)
        return tk_fail(c->err, c->errlen, "%s: eos_token: '%s' is not a token",
                       c->file, tok->eos_str);
    if (tok->add_bos && tok->bos_id < 0)
        return tk_fail(c->err, c->errlen,
                       "%s: add_bos_token: true but no bos_token", c->file);

    const cJSON *t = cJSON_GetObjectItemCaseSensitive(root, "chat_template");
    const char *tpl = NULL;
    if (cJSON_IsString(t)) {
        tpl = t->valuestring;
    } else if (cJSON_IsArray(t)) {             /* [{name, template}, ...] */
        const cJSON *it;
        cJSON_ArrayForEach(it, t) {
            const cJSON *nm = cJSON_GetObjectItemCaseSensitive(it, "name");
            const cJSON *tp = cJSON_GetObjectItemCaseSensitive(it, "template");
            if (!cJSON_IsString(nm) || !cJSON_IsString(tp))
                return tk_fail(c->err, c->errlen,
                               "%s: chat_template: entries need name and "
                               "template strings", c->file);
            if (!strcmp(nm->valuestring, "default")) tpl = tp->valuestring;
        }
    } else if (t && !cJSON_IsNull(t)) {
        return tk_fail(c->err, c->errlen, "%s: chat_template: not a string",
                       c->file);
    }
    tk_detect_family(tok, tpl);
    return 0;
}

/* Reads and parses a JSON file. Returns the root or NULL (error set). */
static cJSON *tk_parse_file(const char *path, tk_ctx *c) {
    size_t len;
    char *text = tk_read_file(path, &len);
    if (!text) {
        tk_fail(c->err, c->errlen, "%s: cannot read: %s", c->file,
                strerror(errno));
        return NULL;
    }
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(text, len, &end, 0);
    if (!root) {
        size_t at = end && end >= text ? (size_t)(end - text) : 0;
        tk_fail(c->err, c->errlen, "%s: invalid JSON near byte %zu", c->file,
                at);
    }
    free(text);
    return root;
}

/* Loads both files; on failure *out is NULL and err names file and field. */
int dseek_tokenizer_load_files(const char *tokenizer_json,
                               const char *config_path, dseek_tokenizer **out,
                               char *err, size_t errlen) {
    *out = NULL;
    if (err && errlen) err[0] = 0;
    dseek_tokenizer *tok = calloc(1, sizeof *tok);
    if (!tok) return tk_fail(err, errlen, "tokenizer: out of memory");
    tok->unk_id = tok->bos_id = tok->eos_id = -1;
    tk_trie_init(&tok->trie_raw);
    tk_trie_init(&tok->trie_norm);
    tk_init_bytelevel(tok);

    tk_ctx c = {tk_basename(tokenizer_json), err, errlen};
    cJSON *root = tk_parse_file(tokenizer_json, &c);
    if (!root || tk_load_json(tok, &c, root)) goto fail;
    cJSON_Delete(root);
    root = NULL;

    if (config_path) {
        c.file = tk_basename(config_path);
        root = tk_parse_file(config_path, &c);
        if (!root || tk_load_config(tok, &c, root)) goto fail;
        cJSON_Delete(root);
    } else {
        tok->bos_str = tk_strndup("", 0);
        tok->eos_str = tk_strndup("", 0);
        if (!tok->bos_str || !tok->eos_str) {
            tk_fail(err, errlen, "tokenizer: out of memory");
            goto fail;
        }
    }
    *out = tok;
    return 0;
fail:
    cJSON_Delete(root);
    dseek_tokenizer_free(tok);
    return -1;
}

/* Loads DIR/tokenizer.json and DIR/tokenizer_config.json. */
int dseek_tokenizer_load(const char *dir, dseek_tokenizer **out, char *err,
                         size_t errlen) {
    size_t n = strlen(dir);
    char *a = malloc(n + 32), *b = malloc(n + 32);
    int rc;
    if (!a || !b) {
        free(a); free(b);
        *out = NULL;
        return tk_fail(err, errlen, "tokenizer: out of memory");
    }
    snprintf(a, n + 32, "%s/tokenizer.json", dir);
    snprintf(b, n + 32, "%s/tokenizer_config.json", dir);
    rc = dseek_tokenizer_load_files(a, b, out, err, errlen);
    free(a); free(b);
    return rc;
}

/* Simple getters (see dseek_tokenizer.h). */
size_t dseek_vocab_size(const dseek_tokenizer *tok) { return tok->n_vocab; }
int dseek_bos_id(const dseek_tokenizer *tok) { return tok->bos_id; }
int dseek_eos_id(const dseek_tokenizer *tok) { return tok->eos_id; }
int dseek_add_bos_default(const dseek_tokenizer *tok) { return tok->add_bos; }

/* Id of a stored piece: added token content first, then the vocabulary. */
int dseek_token_id(const dseek_tokenizer *tok, const char *piece) {
    return tk_lookup(tok, piece, strlen(piece));
}

/* Stored piece of id (added token content or vocabulary string). */
const char *dseek_token_piece(const dseek_tokenizer *tok, int id) {
    if (id < 0 || (size_t)id >= tok->n_vocab) return NULL;
    for (size_t i = 0; i < tok->n_added; i++)
        if (tok->added[i].id == id) return tok->added[i].content;
    return tk_strtab_get(&tok->vocab, id, NULL);
}

/* 1 if id is a special added token. */
int dseek_token_is_special(const dseek_tokenizer *tok, int id) {
    return id >= 0 && (size_t)id < tok->n_vocab && tok->is_special[id];
}

/* ----------------------------------------------------------------------------
 * Encoding
 * ------------------------------------------------------------------------- */

typedef struct {
    int id;                 /* token id, -1 once merged into the left one */
    int prev;               /* previous live symbol, -1 if first */
    int next;               /* next live symbol, -1 if last */
} tk_sym;

typedef struct {
    uint64_t hash;          /* key hash | 1; 0 = empty slot */
    uint32_t key_off;       /* key bytes in tk_enc.ckeys */
    uint32_t key_len;
    uint32_t ids_off;       /* ids in tk_enc.cids */
    uint32_t ids_n;
} tk_centry;

typedef struct {            /* scratch state of one dseek_tokenize call */
    const dseek_tokenizer *tok;
    pcre2_match_data *md;   /* match data sized for our patterns */
    tk_buf     norm;        /* normalized text of the current section */
    tk_buf     bl[2];       /* ByteLevel outputs (alternating) */
    tk_buf     tmp;         /* ByteLevel prefix-space copy */
    tk_piece  *sp[2];       /* spans of the current / next pre-token step */
    size_t     n_sp[2], cap_sp[2];
    tk_piece  *pc;          /* regex pieces */
    size_t     cap_pc;
    tk_sym    *sym;         /* BPE symbols of the current word */
    size_t     cap_sym;
    uint64_t  *heap;        /* BPE merge candidates: (rank << 32) | pos */
    size_t     n_heap, cap_heap;
    tk_centry *cache;       /* word -> ids cache (per call) */
    size_t     cache_mask, cache_n;
    tk_buf     ckeys;       /* cached words' bytes */
    int       *cids;        /* cached words' ids */
    size_t     n_cids, cap_cids;
    int       *ids;         /* output */
    size_t     n_ids, cap_ids;
} tk_enc;

/* Appends one id to the output. Returns 0 or -1 (no memory). */
static int tk_emit(tk_enc *e, int id) {
    if (tk_grow(&e->ids, &e->cap_ids, e->n_ids + 1, sizeof *e->ids)) return -1;
    e->ids[e->n_ids++] = id;
    return 0;
}

/* Pushes k onto the min-heap of merge candidates. */
static void tk_heap_push(tk_enc *e, uint64_t k) {   /* capacity ensured */
    size_t i = e->n_heap++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (e->heap[p] <= k) break;
        e->heap[i] = e->heap[p];
        i = p;
    }
    e->heap[i] = k;
}

/* Pops the smallest key (lowest rank, then leftmost position). */
static uint64_t tk_heap_pop(tk_enc *e) {
    uint64_t top = e->heap[0], k = e->heap[--e->n_heap];
    size_t i = 0, n = e->n_heap;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && e->heap[c + 1] < e->heap[c]) c++;
        if (k <= e->heap[c]) break;
        e->heap[i] = e->heap[c];
        i = c;
    }
    if (n) e->heap[i] = k;
    return top;
}

/* Queues the merge of symbol pos with its right neighbour, if any. */
static void tk_bpe_candidate(tk_enc *e, int pos) {
    int nx = e->sym[pos].next;
    uint32_t rank;
    int out;
    if (nx >= 0 && tk_pairmap_get(&e->tok->merges, e->sym[pos].id,
                                  e->sym[nx].id, &rank, &out))
        tk_heap_push(e, ((uint64_t)rank << 32) | (uint32_t)pos);
}

/* Id of the single character s[0..n) (n is its length), or -1. */
static int tk_char_id(const dseek_tokenizer *tok, const char *s, size_t n) {
    uint32_t cp;
    if (tk_utf8_decode((const unsigned char *)s, n, &cp) == n && cp < 0x180)
        return tok->cp_id[cp];
    return tk_strmap_get(&tok->vocab_map, &tok->vocab, s, n);
}

/* Runs BPE on one word s[0..n) (n > 0), appending its ids to e->ids.
 * Returns 0 or -1 (no memory). */
static int tk_bpe(tk_enc *e, const char *s, size_t n) {
    const dseek_tokenizer *tok = e->tok;
    if (n > (size_t)INT32_MAX / 4) return -1;       /* positions are ints */
    if (tok->ignore_merges) {
        int id = tk_strmap_get(&tok->vocab_map, &tok->vocab, s, n);
        if (id >= 0) return tk_emit(e, id);
    }
    /* symbols: one per character (byte for ill-formed input) */
    if (tk_grow(&e->sym, &e->cap_sym, n, sizeof *e->sym) ||
        tk_grow(&e->heap, &e->cap_heap, 2 * n + 2, sizeof *e->heap))
        return -1;
    int ns = 0;
    int last_unk = 0;
    for (size_t i = 0; i < n;) {
        size_t l = tk_char_len((const unsigned char *)s + i, n - i);
        int id = tk_char_id(tok, s + i, l);
        if (id < 0 && tok->byte_fallback) {
            int all = 1;
            for (size_t k = 0; k < l; k++)
                if (tok->byte_ids[(unsigned char)s[i + k]] < 0) all = 0;
            if (all) {
                for (size_t k = 0; k < l; k++, ns++)
                    e->sym[ns] = (tk_sym){
                        tok->byte_ids[(unsigned char)s[i + k]], ns - 1, ns + 1};
                last_unk = 0;
                i += l;
                continue;
            }
        }
        if (id < 0) {
            if (tok->unk_id >= 0 && !(tok->fuse_unk && last_unk)) {
                e->sym[ns] = (tk_sym){tok->unk_id, ns - 1, ns + 1};
                ns++;
            }
            last_unk = tok->unk_id >= 0;
            i += l;                 /* without unk_token the char is dropped */
            continue;
        }
        e->sym[ns] = (tk_sym){id, ns - 1, ns + 1};
        ns++;
        last_unk = 0;
        i += l;
    }
    if (ns == 0) return 0;
    e->sym[ns - 1].next = -1;

    /* merge the lowest-ranked pair first (leftmost on ties) */
    e->n_heap = 0;
    for (int i = 0; i + 1 < ns; i++) tk_bpe_candidate(e, i);
    while (e->n_heap) {
        uint64_t k = tk_heap_pop(e);
        int pos = (int)(uint32_t)k;
        uint32_t want = (uint32_t)(k >> 32), rank;
        int out, nx;
        if (e->sym[pos].id < 0 || (nx = e->sym[pos].next) < 0) continue;
        if (!tk_pairmap_get(&tok->merges, e->sym[pos].id, e->sym[nx].id, &rank,
                            &out) || rank != want) continue;
        e->sym[pos].id = out;
        e->sym[nx].id = -1;
        e->sym[pos].next = e->sym[nx].next;
        if (e->sym[pos].next >= 0) e->sym[e->sym[pos].next].prev = pos;
        if (e->n_heap + 2 > e->cap_heap &&
            tk_grow(&e->heap, &e->cap_heap, e->n_heap + 2, sizeof *e->heap))
            return -1;
        if (e->sym[pos].prev >= 0) tk_bpe_candidate(e, e->sym[pos].prev);
        tk_bpe_candidate(e, pos);
    }
    for (int i = 0; i >= 0; i = e->sym[i].next)
        if (tk_emit(e, e->sym[i].id)) return -1;
    return 0;
}

/* Grows the word cache to hold at least one more entry. */
static int tk_cache_grow(tk_enc *e) {
    if (e->cache && (e->cache_n + 1) * 2 <= e->cache_mask + 1) return 0;
    size_t cap = e->cache ? (e->cache_mask + 1) * 2 : 1024;
    tk_centry *nc = calloc(cap, sizeof *nc);
    if (!nc) return -1;
    if (e->cache)
        for (size_t i = 0; i <= e->cache_mask; i++) {
            tk_centry *x = &e->cache[i];
            if (!x->hash) continue;
            size_t j = (size_t)x->hash & (cap - 1);
            while (nc[j].hash) j = (j + 1) & (cap - 1);
            nc[j] = *x;
        }
    free(e->cache);
    e->cache = nc;
    e->cache_mask = cap - 1;
    return 0;
}

/* Encodes one pre-token through the cache and BPE. */
static int tk_word(tk_enc *e, const char *s, size_t n) {
    if (n == 0) return 0;
    if (n == 1 || n > 256) {                /* not worth caching */
        if (n == 1) {
            int id = tk_char_id(e->tok, s, 1);
            if (id >= 0) return tk_emit(e, id);
        }
        return tk_bpe(e, s, n);
    }
    if (tk_cache_grow(e)) return -1;
    uint64_t h = tk_hash(s, n) | 1;
    size_t i = (size_t)h & e->cache_mask;
    for (; e->cache[i].hash; i = (i + 1) & e->cache_mask) {
        tk_centry *x = &e->cache[i];
        if (x->hash == h && x->key_len == n &&
            !memcmp(e->ckeys.p + x->key_off, s, n)) {
            if (tk_grow(&e->ids, &e->cap_ids, e->n_ids + x->ids_n,
                        sizeof *e->ids)) return -1;
            if (x->ids_n)           /* a word of dropped chars has no ids */
                memcpy(e->ids + e->n_ids, e->cids + x->ids_off,
                       x->ids_n * sizeof *e->ids);
            e->n_ids += x->ids_n;
            return 0;
        }
    }
    size_t first = e->n_ids;
    if (tk_bpe(e, s, n)) return -1;
    size_t cnt = e->n_ids - first;
    if (e->ckeys.n + n > UINT32_MAX || e->n_cids + cnt > UINT32_MAX) return 0;
    if (tk_grow(&e->cids, &e->cap_cids, e->n_cids + cnt, sizeof *e->cids))
        return -1;
    tk_centry x = {h, (uint32_t)e->ckeys.n, (uint32_t)n, (uint32_t)e->n_cids,
                   (uint32_t)cnt};
    if (tk_buf_put(&e->ckeys, s, n)) return -1;
    if (cnt) memcpy(e->cids + e->n_cids, e->ids + first, cnt * sizeof *e->ids);
    e->n_cids += cnt;
    e->cache[i] = x;
    e->cache_n++;
    return 0;
}

/* Appends span [s, e) to spans list k (empty spans are dropped). */
static int tk_span_push(tk_enc *e, int k, size_t s, size_t en) {
    if (en <= s) return 0;
    if (tk_grow(&e->sp[k], &e->cap_sp[k], e->n_sp[k] + 1, sizeof *e->sp[k]))
        return -1;
    e->sp[k][e->n_sp[k]++] = (tk_piece){s, en, 0};
    return 0;
}

/* Applies one Split step: every span of list `in` on text base is cut by
 * the pattern and the pieces grouped by behavior into list 1 - in. */
static int tk_split_step(tk_enc *e, const tk_pre *st, const char *base,
                         int in) {
    int out = 1 - in;
    e->n_sp[out] = 0;
    for (size_t k = 0; k < e->n_sp[in]; k++) {
        size_t off = e->sp[in][k].s, len = e->sp[in][k].e - off;
        size_t np = 0;
        if (tk_re_pieces(st->re, base + off, len, e->md, &e->pc, &np,
                         &e->cap_pc)) return -1;
        tk_piece *p = e->pc;
        if (st->invert)
            for (size_t i = 0; i < np; i++) p[i].m = !p[i].m;
        size_t start = e->n_sp[out];
        int prev = 0;
        if (st->behavior == TK_MERGED_NEXT) {
            /* right to left: a delimiter joins the piece that follows it */
            for (size_t i = np; i-- > 0;) {
                size_t last = e->n_sp[out];
                if (p[i].m && !prev && last > start)
                    e->sp[out][last - 1].s = p[i].s + off;
                else if (tk_grow(&e->sp[out], &e->cap_sp[out], last + 1,
                                 sizeof *e->sp[out])) return -1;
                else e->sp[out][e->n_sp[out]++] =
                         (tk_piece){p[i].s + off, p[i].e + off, 0};
                prev = p[i].m;
            }
            for (size_t a = start, b = e->n_sp[out]; a + 1 < b; a++, b--) {
                tk_piece t = e->sp[out][a];
                e->sp[out][a] = e->sp[out][b - 1];
                e->sp[out][b - 1] = t;
            }
        } else {
            for (size_t i = 0; i < np; i++) {
                size_t last = e->n_sp[out];
                int join = 0;
                if (st->behavior == TK_REMOVED && p[i].m) { prev = 1; continue; }
                if (st->behavior == TK_MERGED_PREV)
                    join = p[i].m && !prev && last > start;
                else if (st->behavior == TK_CONTIGUOUS)
                    join = p[i].m == prev && last > start;
                if (join) {
                    e->sp[out][last - 1].e = p[i].e + off;
                } else {
                    if (tk_grow(&e->sp[out], &e->cap_sp[out], last + 1,
                                sizeof *e->sp[out])) return -1;
                    e->sp[out][e->n_sp[out]++] =
                        (tk_piece){p[i].s + off, p[i].e + off, 0};
                }
                prev = p[i].m;
            }
        }
        /* drop empty pieces */
        size_t w = start;
        for (size_t i = start; i < e->n_sp[out]; i++)
            if (e->sp[out][i].e > e->sp[out][i].s) e->sp[out][w++] = e->sp[out][i];
        e->n_sp[out] = w;
    }
    return 0;
}

/* Maps s[0..n) through the ByteLevel table into b and records the span. */
static int tk_bytelevel_map(tk_enc *e, tk_buf *b, int out, const char *s,
                            size_t n) {
    size_t start = b->n;
    if (tk_grow(&b->p, &b->cap, b->n + 2 * n + 1, 1)) return -1;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        memcpy(b->p + b->n, e->tok->b2u_utf8[c], e->tok->b2u_len[c]);
        b->n += e->tok->b2u_len[c];
    }
    b->p[b->n] = 0;
    return tk_span_push(e, out, start, b->n);
}

/* Applies a ByteLevel step: optional prefix space, optional GPT-2 split,
 * byte -> unicode mapping into a fresh buffer (*base is updated). */
static int tk_bytelevel_step(tk_enc *e, const tk_pre *st, const char **base,
                             int in, int *which) {
    int out = 1 - in;
    tk_buf *b = &e->bl[*which];
    *which = 1 - *which;
    b->n = 0;
    e->n_sp[out] = 0;
    for (size_t k = 0; k < e->n_sp[in]; k++) {
        const char *s = *base + e->sp[in][k].s;
        size_t n = e->sp[in][k].e - e->sp[in][k].s;
        if (st->prefix && s[0] != ' ') {
            e->tmp.n = 0;
            if (tk_buf_put(&e->tmp, " ", 1) || tk_buf_put(&e->tmp, s, n))
                return -1;
            s = e->tmp.p;
            n = e->tmp.n;
        }
        if (!st->re) {
            if (tk_bytelevel_map(e, b, out, s, n)) return -1;
            continue;
        }
        size_t np = 0;
        if (tk_re_pieces(st->re, s, n, e->md, &e->pc, &np, &e->cap_pc))
            return -1;
        for (size_t i = 0; i < np; i++)
            if (e->pc[i].e > e->pc[i].s &&
                tk_bytelevel_map(e, b, out, s + e->pc[i].s,
                                 e->pc[i].e - e->pc[i].s)) return -1;
    }
    *base = b->p ? b->p : "";
    return 0;
}

/* Pre-tokenizes one normalized section s[0..n) and runs the model on it. */
static int tk_section(tk_enc *e, const char *s, size_t n) {
    const dseek_tokenizer *tok = e->tok;
    const char *base = s;
    int in = 0, which = 0;
    if (n == 0) return 0;
    e->n_sp[0] = 0;
    if (tk_span_push(e, 0, 0, n)) return -1;
    for (size_t k = 0; k < tok->n_pre; k++) {
        const tk_pre *st = &tok->pre[k];
        if (st->kind == TK_PRE_SPLIT ? tk_split_step(e, st, base, in)
                                     : tk_bytelevel_step(e, st, &base, in,
                                                         &which)) return -1;
        in = 1 - in;
    }
    for (size_t k = 0; k < e->n_sp[in]; k++)
        if (tk_word(e, base + e->sp[in][k].s,
                    e->sp[in][k].e - e->sp[in][k].s)) return -1;
    return 0;
}

typedef int (*tk_text_fn)(tk_enc *e, const char *s, size_t n);

/* Splits s[0..n) on the added tokens of trie t (leftmost, longest match,
 * honouring lstrip / rstrip / single_word); text between matches goes to
 * fn, matched tokens straight to the output. */
static int tk_split_added(tk_enc *e, const tk_trie *t, const char *s, size_t n,
                          tk_text_fn fn) {
    const dseek_tokenizer *tok = e->tok;
    size_t done = 0, i = 0;
    if (!t->used) return fn(e, s, n);
    while (i < n) {
        size_t mlen = 0;
        int a = t->root[(unsigned char)s[i]] < 0
                ? -1 : tk_trie_longest(t, s + i, n - i, &mlen);
        if (a < 0) { i++; continue; }
        const tk_added *at = &tok->added[a];
        size_t ms = i, me = i + mlen;
        if (at->single_word &&
            ((ms > 0 && tk_is_word_byte((unsigned char)s[ms - 1]) &&
              tk_is_word_byte((unsigned char)s[ms])) ||
             (me < n && tk_is_word_byte((unsigned char)s[me]) &&
              tk_is_word_byte((unsigned char)s[me - 1])))) {
            i++;
            continue;
        }
        if (at->lstrip) ms -= tk_space_suffix(s + done, ms - done);
        if (at->rstrip) me += tk_space_prefix(s + me, n - me);
        if (ms > done && fn(e, s + done, ms - done)) return -1;
        if (tk_emit(e, at->id)) return -1;
        done = i = me;
    }
    if (n > done && fn(e, s + done, n - done)) return -1;
    return 0;
}

/* Normalizes a raw-text section, then matches normalized added tokens. */
static int tk_normalized(tk_enc *e, const char *s, size_t n) {
    if (e->tok->n_norm == 0)
        return tk_split_added(e, &e->tok->trie_norm, s, n, tk_section);
    if (tk_normalize(e->tok, s, n, &e->norm, e->md, &e->pc, &e->cap_pc))
        return -1;
    return tk_split_added(e, &e->tok->trie_norm, e->norm.p, e->norm.n,
                          tk_section);
}

/* Encodes text: [bos] + added tokens / normalizer / pre-tokenizer / BPE.
 * All scratch state lives in this call; the tokenizer is only read. */
int dseek_tokenize(const dseek_tokenizer *tok, const char *text, size_t len,
                   int add_bos, int **ids, size_t *n_ids) {
    tk_enc e;
    memset(&e, 0, sizeof e);
    e.tok = tok;
    *ids = NULL;
    *n_ids = 0;
    int rc = -1;
    e.md = pcre2_match_data_create(16, NULL);
    if (!e.md) goto done;
    if (add_bos && tok->bos_id >= 0 && tk_emit(&e, tok->bos_id)) goto done;
    if (tk_split_added(&e, &tok->trie_raw, text ? text : "", text ? len : 0,
                       tk_normalized)) goto done;
    rc = 0;
    if (e.n_ids) {
        *ids = e.ids;
        *n_ids = e.n_ids;
        e.ids = NULL;
    }
done:
    pcre2_match_data_free(e.md);
    free(e.norm.p); free(e.bl[0].p); free(e.bl[1].p); free(e.tmp.p);
    free(e.sp[0]); free(e.sp[1]); free(e.pc);
    free(e.sym); free(e.heap);
    free(e.cache); free(e.ckeys.p); free(e.cids);
    free(e.ids);
    return rc;
}

/* ----------------------------------------------------------------------------
 * Decoding: whole and streaming, with UTF-8 repair
 * ------------------------------------------------------------------------- */

typedef struct {
    char   *p;              /* output buffer */
    size_t  n;              /* bytes of the whole output so far */
    size_t  cap;            /* bytes allocated (growable) or given (fixed) */
    int     fixed;          /* 1: never grow, count what does not fit */
    int     oom;            /* 1 once a growth failed */
} tk_sink;

/* Appends n bytes (a fixed sink keeps room for the final NUL). */
static void tk_sink_put(tk_sink *k, const void *s, size_t n) {
    if (k->fixed) {
        if (n && k->cap && k->n < k->cap - 1) {
            size_t room = k->cap - 1 - k->n;
            memcpy(k->p + k->n, s, n < room ? n : room);
        }
        k->n += n;
        return;
    }
    if (k->oom || tk_grow(&k->p, &k->cap, k->n + n + 1, 1)) {
        k->oom = 1;
        return;
    }
    if (n) memcpy(k->p + k->n, s, n);
    k->n += n;
    k->p[k->n] = 0;
}

/* U+FFFD REPLACEMENT CHARACTER in UTF-8. */
static const char tk_fffd[3] = {(char)0xEF, (char)0xBF, (char)0xBD};

typedef struct {
    unsigned char pend[4];  /* a well-formed prefix awaiting more bytes */
    size_t        n_pend;
} tk_utf8;

/* Feeds bytes to the repairer: well-formed characters pass through, each
 * maximal ill-formed subpart becomes one U+FFFD, an incomplete tail is held
 * in u (or replaced by U+FFFD when final). */
static void tk_utf8_feed(tk_utf8 *u, const unsigned char *s, size_t n,
                         int final, tk_sink *out) {
    size_t bad;
    /* complete a pending prefix first, one byte at a time */
    while (u->n_pend && n) {
        u->pend[u->n_pend++] = *s++;
        n--;
        size_t l = tk_utf8_check(u->pend, u->n_pend, &bad);
        if (l) {
            tk_sink_put(out, u->pend, l);
            u->n_pend = 0;
        } else if (bad) {
            /* the old prefix is the maximal subpart: the new byte restarts */
            tk_sink_put(out, tk_fffd, 3);
            u->n_pend = 0;
            s--;
            n++;
        }
    }
    size_t run = 0, i = 0;
    while (i < n) {                         /* (s may be NULL when n is 0) */
        size_t l = tk_utf8_check(s + i, n - i, &bad);
        if (l) { i += l; continue; }
        tk_sink_put(out, s + run, i - run);
        if (bad) {
            tk_sink_put(out, tk_fffd, 3);
            i += bad;
        } else {                                /* incomplete at the end */
            memcpy(u->pend, s + i, n - i);
            u->n_pend = n - i;
            i = n;
        }
        run = i;
    }
    if (n > run) tk_sink_put(out, s + run, n - run);
    if (final && u->n_pend) {
        tk_sink_put(out, tk_fffd, 3);
        u->n_pend = 0;
    }
}

/* Decoded bytes of id (NULL if invalid or skipped under flags). */
static const char *tk_id_bytes(const dseek_tokenizer *tok, int id, int flags,
                               size_t *len) {
    if (id < 0 || (size_t)id >= tok->n_vocab) return NULL;
    if ((flags & DSEEK_DETOK_SKIP_SPECIAL) && tok->is_special[id]) return NULL;
    return tk_strtab_get(&tok->dec, id, len);
}

/* Whole decode with snprintf-like output (see dseek_tokenizer.h). */
size_t dseek_detokenize(const dseek_tokenizer *tok, const int *ids, size_t n,
                        int flags, char *out, size_t cap) {
    tk_sink k = {out, 0, cap, 1, 0};
    tk_utf8 u = {{0}, 0};
    for (size_t i = 0; i < n; i++) {
        size_t len;
        const char *b = tk_id_bytes(tok, ids[i], flags, &len);
        if (!b) continue;
        if (flags & DSEEK_DETOK_RAW) tk_sink_put(&k, b, len);
        else tk_utf8_feed(&u, (const unsigned char *)b, len, 0, &k);
    }
    if (!(flags & DSEEK_DETOK_RAW)) tk_utf8_feed(&u, NULL, 0, 1, &k);
    if (cap) out[k.n < cap ? k.n : cap - 1] = 0;
    return k.n;
}

struct dseek_detok_stream {
    const dseek_tokenizer *tok;
    int     flags;          /* DSEEK_DETOK_* */
    tk_utf8 u;              /* held-back partial character */
    tk_sink out;            /* text returned by the last call */
};

/* New streaming decoder (NULL when out of memory). */
dseek_detok_stream *dseek_detok_stream_new(const dseek_tokenizer *tok,
                                           int flags) {
    dseek_detok_stream *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->tok = tok;
    s->flags = flags;
    return s;
}

/* Returns the collected output and resets the sink for the next call. */
static const char *tk_stream_take(dseek_detok_stream *s, size_t *len) {
    if (s->out.oom) { s->out.oom = 0; s->out.n = 0; *len = 0; return NULL; }
    if (!s->out.p) tk_sink_put(&s->out, "", 0);
    if (s->out.oom) { s->out.oom = 0; *len = 0; return NULL; }
    *len = s->out.n;
    s->out.n = 0;
    return s->out.p;
}

/* Decodes one more id; returns the complete characters now available. */
const char *dseek_detok_stream_push(dseek_detok_stream *s, int id,
                                    size_t *len) {
    size_t n;
    const char *b = tk_id_bytes(s->tok, id, s->flags, &n);
    s->out.n = 0;
    if (s->out.p) s->out.p[0] = 0;
    if (b) {
        if (s->flags & DSEEK_DETOK_RAW) tk_sink_put(&s->out, b, n);
        else tk_utf8_feed(&s->u, (const unsigned char *)b, n, 0, &s->out);
    }
    return tk_stream_take(s, len);
}

/* End of stream: held-back bytes come out as U+FFFD. */
const char *dseek_detok_stream_flush(dseek_detok_stream *s, size_t *len) {
    s->out.n = 0;
    if (s->out.p) s->out.p[0] = 0;
    tk_utf8_feed(&s->u, NULL, 0, 1, &s->out);
    return tk_stream_take(s, len);
}

/* Frees the stream (NULL is fine). */
void dseek_detok_stream_free(dseek_detok_stream *s) {
    if (!s) return;
    free(s->out.p);
    free(s);
}

/* ----------------------------------------------------------------------------
 * Chat templates
 *
 * Hand-written equivalents of the Jinja chat_template of each family, for
 * system / user / assistant messages:
 *   V2: bos, then per message: system "{c}\n\n", user "User: {c}\n\n",
 *       assistant "Assistant: {c}{eos}"; generation prompt "Assistant:".
 *   V3: bos, the system messages joined by "\n\n", then per message: user
 *       "<｜User｜>{c}", assistant "<｜Assistant｜>{c}<｜end▁of▁sentence｜>";
 *       generation prompt "<｜Assistant｜>".
 *   R1: as V3, but an assistant reply keeps only what follows its last
 *       "</think>"; the generation prompt adds "<think>\n" when the template
 *       does.
 * ------------------------------------------------------------------------- */

#define TK_USER      "<\xef\xbd\x9cUser\xef\xbd\x9c>"
#define TK_ASSISTANT "<\xef\xbd\x9c" "Assistant\xef\xbd\x9c>"
#define TK_EOS_V3    "<\xef\xbd\x9c" "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>"

/* Chat family recognised from tokenizer_config.json's chat_template. */
dseek_chat_family dseek_chat_family_of(const dseek_tokenizer *tok) {
    return tok->family;
}

/* Short name of a family (for logs). */
const char *dseek_chat_family_name(dseek_chat_family f) {
    switch (f) {
    case DSEEK_CHAT_V2: return "deepseek-v2";
    case DSEEK_CHAT_V3: return "deepseek-v3";
    case DSEEK_CHAT_R1: return "deepseek-r1";
    default:            return "none";
    }
}

/* 1 if the rendered generation prompt already opens <think>. */
int dseek_chat_prompt_opens_think(const dseek_tokenizer *tok) {
    return tok->family == DSEEK_CHAT_R1 && tok->think_prompt;
}

/* Appends a NUL-terminated string. */
static void tk_sink_puts(tk_sink *k, const char *s) { tk_sink_put(k, s, strlen(s)); }

/* Renders msgs the way the family's Jinja template does; malloc'ed. */
char *dseek_chat_render(const dseek_tokenizer *tok, const dseek_chat_msg *msgs,
                        size_t n, int add_generation_prompt) {
    tk_sink k = {0};
    enum { SYS, USER, ASSIST } role;
    tk_sink_put(&k, "", 0);
    for (size_t i = 0; i < n; i++) {                /* validate roles */
        const char *r = msgs[i].role;
        if (!r || !msgs[i].content ||
            (strcmp(r, "system") && strcmp(r, "user") && strcmp(r, "assistant")))
            goto fail;
    }
    if (tok->family == DSEEK_CHAT_NONE) {
        if (tok->add_bos) tk_sink_puts(&k, tok->bos_str);
        for (size_t i = 0; i < n; i++) {
            if (i) tk_sink_puts(&k, "\n\n");
            tk_sink_puts(&k, msgs[i].content);
        }
    } else if (tok->family == DSEEK_CHAT_V2) {
        tk_sink_puts(&k, tok->bos_str);
        for (size_t i = 0; i < n; i++) {
            const char *r = msgs[i].role, *c = msgs[i].content;
            role = !strcmp(r, "user") ? USER : !strcmp(r, "system") ? SYS : ASSIST;
            if (role == USER) {
                tk_sink_puts(&k, "User: "); tk_sink_puts(&k, c);
                tk_sink_puts(&k, "\n\n");
            } else if (role == ASSIST) {
                tk_sink_puts(&k, "Assistant: "); tk_sink_puts(&k, c);
                tk_sink_puts(&k, tok->eos_str);
            } else {
                tk_sink_puts(&k, c); tk_sink_puts(&k, "\n\n");
            }
        }
        if (add_generation_prompt) tk_sink_puts(&k, "Assistant:");
    } else {
        int first_sys = 1;
        tk_sink_puts(&k, tok->bos_str);
        for (size_t i = 0; i < n; i++)
            if (!strcmp(msgs[i].role, "system")) {
                if (!first_sys) tk_sink_puts(&k, "\n\n");
                tk_sink_puts(&k, msgs[i].content);
                first_sys = 0;
            }
        for (size_t i = 0; i < n; i++) {
            const char *r = msgs[i].role, *c = msgs[i].content;
            if (!strcmp(r, "user")) {
                tk_sink_puts(&k, TK_USER); tk_sink_puts(&k, c);
            } else if (!strcmp(r, "assistant")) {
                if (tok->family == DSEEK_CHAT_R1) {
                    const char *t;
                    while ((t = strstr(c, "</think>")) != NULL) c = t + 8;
                }
                tk_sink_puts(&k, TK_ASSISTANT); tk_sink_puts(&k, c);
                tk_sink_puts(&k, TK_EOS_V3);
            }
        }
        if (add_generation_prompt) {
            tk_sink_puts(&k, TK_ASSISTANT);
            if (dseek_chat_prompt_opens_think(tok)) tk_sink_puts(&k, "<think>\n");
        }
    }
    if (k.oom) goto fail;
    return k.p;
fail:
    free(k.p);
    return NULL;
}

/* ----------------------------------------------------------------------------
 * <think> splitter
 * ------------------------------------------------------------------------- */

static const char *tk_think_tag(const dseek_think *t) {
    return t->in_think ? "</think>" : "<think>";
}

/* Starts a splitter outside (or inside) a think block. */
void dseek_think_init(dseek_think *t, int start_inside) {
    t->in_think = start_inside ? 1 : 0;
    t->matched = 0;
}

/* Feeds text; runs of text go to cb tagged in/out of the think block,
 * the tags themselves are dropped, a partial tag at the end is held. */
void dseek_think_push(dseek_think *t, const char *s, size_t n,
                      dseek_think_cb cb, void *ud) {
    size_t run = 0;                 /* start of text not yet passed to cb */
    size_t i = 0;
    while (i < n) {
        const char *tag = tk_think_tag(t);
        size_t tl = strlen(tag);
        if (s[i] == tag[t->matched]) {
            if (t->matched == 0 && i > run) cb(ud, t->in_think, s + run, i - run);
            t->matched++;
            i++;
            if (t->matched == tl) {
                t->in_think = !t->in_think;
                t->matched = 0;
            }
            run = i;
        } else if (t->matched) {
            /* the held bytes were text after all; re-examine this byte */
            cb(ud, t->in_think, tag, t->matched);
            t->matched = 0;
            run = i;
        } else {
            i++;
        }
    }
    if (!t->matched && n > run) cb(ud, t->in_think, s + run, n - run);
}

/* End of stream: a held partial tag is emitted as text. */
void dseek_think_flush(dseek_think *t, dseek_think_cb cb, void *ud) {
    if (t->matched) cb(ud, t->in_think, tk_think_tag(t), t->matched);
    t->matched = 0;
}

/* ============================================================================
 * 10. Generation, with MTP speculative decoding
 *
 * The generator owns the token history of a session. State between steps: the main cache
 * holds hist[0..n); `pending` is the last emitted token (position n), not yet run. A plain
 * step runs [pending] and samples the next token. A speculative step first lets the MTP
 * head catch up on the positions it has not seen (its cache must cover 0..n-1), drafts
 * d1..dk for positions n+1.., then verifies [pending, d1..dk] in one main forward: draft i
 * is kept while it passes the speculative-sampling test against the main distribution
 * (with greedy sampling: while it equals the argmax), and the first rejected position is
 * resampled from the residual max(0, p - q). Each step yields 1..k+1 tokens, distributed
 * exactly as plain decoding would (identical tokens with greedy sampling).
 * ========================================================================== */

#define MAX_DRAFT 8

struct dseek_gen {
    dseek_session *s;
    dseek_sampler *sp;
    dseek_gen_cfg cfg;
    int V;
    int *hist;                /* [n_ctx] tokens whose main cache entries are valid */
    int n;                    /* their count */
    int pending;              /* emitted, not yet run; -1 before the first feed */
    int mtp_n;                /* MTP cache valid for positions 0..mtp_n-1 */
    float *logits;            /* [MAX_DRAFT + 1, V] main logits of the last step */
    float *qlog;              /* [MAX_DRAFT, V] MTP logits of the drafts */
    float *q;                 /* [MAX_DRAFT, V] draft distributions */
    float *p;                 /* [V] main distribution */
    int *next;                /* [n_ctx] scratch for MTP inputs */
    double alpha;             /* running acceptance rate of a draft */
    double b_plain, b_verify, b_draft; /* running weight bytes read: plain forward, verify forward, one draft */
    double t_plain, t_verify, t_draft; /* running seconds of the same (reported, not decided on) */
    int since_probe;          /* plain steps since drafting last ran */
    dseek_gen_stats st;
};

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void ema(double *v, double x) { *v = *v > 0 ? 0.8 * *v + 0.2 * x : x; }

void dseek_gen_free(dseek_gen *g) {
    if (!g) return;
    dseek_sampler_free(g->sp);
    free(g->hist);
    free(g->logits);
    free(g->qlog);
    free(g->q);
    free(g->p);
    free(g->next);
    free(g);
}

int dseek_gen_new(dseek_session *s, const dseek_sampler_cfg *scfg, const dseek_gen_cfg *gcfg, dseek_gen **out) {
    *out = NULL;
    const dseek_model *m = s->m;
    dseek_gen *g = calloc(1, sizeof *g);
    if (!g) return DSEEK_ENOMEM;
    g->s = s;
    g->cfg = *gcfg;
    if (!m->info.n_mtp) g->cfg.mtp = 0;
    if (g->cfg.n_draft < 1) g->cfg.n_draft = 1;
    if (g->cfg.n_draft > MAX_DRAFT) g->cfg.n_draft = MAX_DRAFT;
    g->V = m->c.vocab_size;
    size_t V = (size_t)g->V;
    g->sp = dseek_sampler_new(scfg, g->V);
    g->hist = malloc((size_t)s->n_ctx * sizeof(int));
    g->next = malloc((size_t)s->n_ctx * sizeof(int));
    g->logits = malloc((MAX_DRAFT + 1) * V * sizeof(float));
    g->qlog = malloc(MAX_DRAFT * V * sizeof(float));
    g->q = malloc(MAX_DRAFT * V * sizeof(float));
    g->p = malloc(V * sizeof(float));
    g->pending = -1;
    g->alpha = 0.5; /* prior until measured */
    if (!g->sp || !g->hist || !g->next || !g->logits || !g->qlog || !g->q || !g->p) {
        dseek_gen_free(g);
        return DSEEK_ENOMEM;
    }
    *out = g;
    return 0;
}

/* Makes the context tokens[0..n) and samples the token after it into *first. The longest
 * prefix shared with what the cache already holds is kept; only the rest is computed. */
int dseek_gen_feed(dseek_gen *g, const int *tokens, int n, int *first) {
    dseek_session *s = g->s;
    if (n < 1) { snprintf(s->err, sizeof s->err, "empty prompt"); return DSEEK_EARG; }
    if (n >= s->n_ctx) {
        snprintf(s->err, sizeof s->err, "context full: the prompt has %d tokens, the context holds %d (raise -c)", n,
                 s->n_ctx);
        return DSEEK_EARG;
    }
    int keep = 0;
    while (keep < g->n && keep < n && g->hist[keep] == tokens[keep]) keep++;
    if (keep == n) keep = n - 1; /* the last token is run again for its logits */
    double t0 = now_seconds();
    int rc = dseek_forward(s, tokens + keep, n - keep, keep, g->logits, 0);
    if (rc) return rc;
    g->st.prompt_tokens += n - keep;
    g->st.prompt_seconds += now_seconds() - t0;
    memcpy(g->hist, tokens, (size_t)n * sizeof(int));
    g->n = n;
    if (g->mtp_n > keep) g->mtp_n = keep;
    sampler_probs(g->sp, g->logits, g->p);
    *first = g->pending = sample_from(g->sp, g->p);
    g->st.tokens++;
    return 0;
}

/* Runs the MTP head over the positions it has not seen, up to n-1 (the last one paired
 * with the pending token), leaving its logits for position n-1 in qlog. */
static int mtp_catch_up(dseek_gen *g) {
    int from = g->mtp_n, cnt = g->n - from;
    for (int i = 0; i < cnt; i++) g->next[i] = from + i + 1 < g->n ? g->hist[from + i + 1] : g->pending;
    int rc = dseek_mtp_forward(g->s, g->next, cnt, from, g->qlog, 0);
    if (rc) return rc;
    g->mtp_n = g->n;
    /* the head's output at n-1 is the hidden state a chained draft starts from */
    const size_t D = (size_t)g->s->m->c.hidden_size;
    int last = (cnt - 1) % g->s->n_batch;
    memcpy(g->s->hchain, g->s->xn + (size_t)last * D, D * sizeof(float));
    return 0;
}

/* One decode step: appends 1..n_draft+1 tokens to out (room for MAX_DRAFT + 1). */
int dseek_gen_step(dseek_gen *g, int *out, int *n_out) {
    dseek_session *s = g->s;
    const size_t V = (size_t)g->V, D = (size_t)s->m->c.hidden_size;
    *n_out = 0;
    if (g->pending < 0) { snprintf(s->err, sizeof s->err, "generate: feed a prompt first"); return DSEEK_EARG; }
    if (g->n >= s->n_ctx) {
        snprintf(s->err, sizeof s->err, "context full: %d tokens fill the context of %d", g->n, s->n_ctx);
        return DSEEK_EARG;
    }
    int k = g->cfg.n_draft;
    if (g->n + k >= s->n_ctx) k = s->n_ctx - 1 - g->n; /* drafts must fit in the context */
    int draft = g->cfg.mtp && k > 0;
    /* Adaptive: draft while the expected tokens per byte read beat plain decoding. Costs are
     * counted in weight bytes (decoding is bandwidth-bound), not seconds, so that the choice,
     * and with it the sampled text, is the same on every run with the same seed. */
    if (draft && g->cfg.adaptive && g->b_verify > 0 && g->b_draft > 0) {
        double plain = g->b_plain > 0 ? g->b_plain : (double)s->m->info.decode_bytes_per_token;
        double gain = (1 + g->alpha) / (g->b_verify + g->b_draft) - 1 / plain;
        draft = gain > 0 || g->since_probe >= 32;
    }
    int rc, n = g->n;
    double t0 = now_seconds();
    dseek_profile p0;
    dseek_session_profile(s, &p0);
    if (!draft) {
        g->since_probe++;
        if ((rc = dseek_forward(s, &g->pending, 1, n, g->logits, 1))) return rc;
        g->hist[g->n++] = g->pending;
        sampler_probs(g->sp, g->logits, g->p);
        out[(*n_out)++] = g->pending = sample_from(g->sp, g->p);
        ema(&g->t_plain, now_seconds() - t0);
        dseek_profile pe;
        dseek_session_profile(s, &pe);
        ema(&g->b_plain, (double)s->m->bytes_fixed + (double)(pe.experts_run - p0.experts_run) * s->m->bytes_expert);
        g->st.main_forwards++;
        g->st.tokens++;
        return 0;
    }
    g->since_probe = 0;
    /* draft k tokens: the MTP head on (h_{n-1}, pending), then chained on its own output */
    int behind = g->n - g->mtp_n; /* positions the head catches up on (1 or 2 when steady) */
    if ((rc = mtp_catch_up(g))) return rc;
    int d[MAX_DRAFT + 1];
    d[0] = g->pending;
    for (int i = 0; i < k; i++) {
        if (i > 0) {
            mtp_step(s, &d[i], 1, n + i - 1, s->hchain, g->qlog + (size_t)i * V, 0);
            if ((rc = check_logits(s, g->qlog + (size_t)i * V, 1, n + i, "MTP head"))) return rc;
            memcpy(s->hchain, s->xn, D * sizeof(float));
        }
        sampler_probs(g->sp, g->qlog + (size_t)i * V, g->q + (size_t)i * V);
        d[i + 1] = sample_from(g->sp, g->q + (size_t)i * V);
    }
    double t1 = now_seconds();
    dseek_profile p1;
    dseek_session_profile(s, &p1);
    /* verify [pending, d1..dk] at positions n..n+k */
    if ((rc = dseek_forward(s, d, k + 1, n, g->logits, 1))) return rc;
    g->hist[g->n++] = g->pending;
    g->st.main_forwards++;
    g->st.drafted += k;
    int acc = 0;
    for (; acc < k; acc++) {
        const float *q = g->q + (size_t)acc * V;
        sampler_probs(g->sp, g->logits + (size_t)acc * V, g->p);
        int t = d[acc + 1];
        double r = rng_uniform(&g->sp->rng);
        if (g->p[t] >= q[t] || r * q[t] < g->p[t]) { /* accept with probability min(1, p/q) */
            out[(*n_out)++] = t;
            g->hist[g->n++] = t;
            continue;
        }
        /* rejected: resample from the residual max(0, p - q), renormalized */
        double z = 0;
        for (size_t i = 0; i < V; i++) z += g->p[i] = g->p[i] > q[i] ? g->p[i] - q[i] : 0;
        for (size_t i = 0; i < V; i++) g->p[i] = (float)(g->p[i] / z);
        out[(*n_out)++] = g->pending = sample_from(g->sp, g->p);
        break;
    }
    if (acc == k) { /* all accepted: one more token from the last row */
        sampler_probs(g->sp, g->logits + (size_t)k * V, g->p);
        out[(*n_out)++] = g->pending = sample_from(g->sp, g->p);
    }
    g->st.accepted += acc;
    g->st.tokens += *n_out;
    double t2 = now_seconds();
    /* costs for one draft: the verify forward, and the head's share */
    dseek_profile p2;
    dseek_session_profile(s, &p2);
    ema(&g->t_verify, t2 - t1);
    ema(&g->b_verify, (double)s->m->bytes_fixed + (double)(p2.experts_run - p1.experts_run) * s->m->bytes_expert);
    if (behind <= 2) { /* a long catch-up is no draft's cost */
        ema(&g->t_draft, (t1 - t0) / k);
        /* MTP steps: the catch-up reads the head once, each chained draft once more */
        ema(&g->b_draft, ((double)s->m->bytes_mtp_fixed * (1 + (k - 1)) +
                          (double)(p1.mtp_experts_run - p0.mtp_experts_run) * s->m->bytes_expert) / k);
    }
    for (int i = 0; i < k; i++) g->alpha = 0.8 * g->alpha + 0.2 * (i < acc);
    return 0;
}

void dseek_gen_stats_get(const dseek_gen *g, dseek_gen_stats *st) {
    *st = g->st;
    st->acceptance = g->alpha;
    st->t_plain = g->t_plain;
    st->b_plain = g->b_plain > 0 ? g->b_plain : (double)g->s->m->info.decode_bytes_per_token;
    st->b_verify = g->b_verify;
    st->b_draft = g->b_draft;
    st->t_verify = g->t_verify;
    st->t_draft = g->t_draft;
}

int dseek_gen_pos(const dseek_gen *g) { return g->n; }

/* ============================================================================
 * 11. Quantizing a checkpoint: dseek quantize
 *
 * The output is a folder the engine opens like any checkpoint: config.json and the
 * tokenizer files copied, and one model.safetensors that is a valid safetensors file:
 *   - every matrix quant_target names becomes a 1-D "U8" tensor holding its tiles
 *     (section 1), zero-padded to a multiple of 64 bytes, so that with the data area
 *     starting on a 64-byte boundary (the header is padded with spaces) every quantized
 *     tensor is 64-byte aligned in the mmap;
 *   - "__metadata__" says what the bytes mean:
 *         "format": "dseek", "dseek.version": "1", "dseek.quant": "q4_0",
 *         "dseek.q.<tensor name>": "q4_0 [rows,cols]"   (block type, logical shape)
 *   - every other tensor (embeddings, norms, router, bias) is copied as it is, after the
 *     quantized ones, F32 first so that each keeps its natural alignment; the
 *     weight_scale_inv of a quantized fp8 matrix is dropped.
 * The loader (st_load, st_quant_meta) checks all of it and mmaps the tiles as they are: no
 * conversion at start-up. Writing streams: one tensor, and of it a chunk of row groups, at
 * a time (a source matrix is read 16 rows at a time, fp8 blocks dequantized on the fly),
 * and source pages are let go once written, so memory stays flat however big the model.
 * ========================================================================== */

typedef struct {
    char *p;
    size_t n, cap;
    int oom;
} SBuf;

static void sb_printf(SBuf *b, const char *fmt, ...) {
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int k = vsnprintf(b->p ? b->p + b->n : NULL, b->p ? b->cap - b->n : 0, fmt, ap);
        va_end(ap);
        if (k < 0) { b->oom = 1; return; }
        if (b->p && b->n + (size_t)k < b->cap) { b->n += (size_t)k; return; }
        size_t cap = (b->cap + (size_t)k + 1) * 2;
        char *p = realloc(b->p, cap);
        if (!p) { b->oom = 1; return; }
        b->p = p;
        b->cap = cap;
    }
}

/* a JSON string; tensor names are plain ASCII in practice, but escape anyway */
static void sb_json_str(SBuf *b, const char *s) {
    sb_printf(b, "\"");
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\') sb_printf(b, "\\%c", ch);
        else if (ch < 0x20) sb_printf(b, "\\u%04x", ch);
        else sb_printf(b, "%c", ch);
    }
    sb_printf(b, "\"");
}

enum { QW_QUANT, QW_COPY, QW_DROP };

typedef struct {
    TensorEntry *e;           /* source tensor */
    int kind;                 /* QW_* */
    size_t bytes;             /* in the output (padded for QW_QUANT) */
    uint64_t off;             /* offset in the data area */
    size_t idx;               /* position in the source table (keeps the sort stable) */
} QItem;

static int qitem_order(const void *a, const void *b) {
    const QItem *x = a, *y = b;
    /* quantized first, then copies by falling element size (F32, then 2-byte types) */
    int kx = x->kind == QW_QUANT ? 0 : x->e->dtype == DT_F32 ? 1 : 2;
    int ky = y->kind == QW_QUANT ? 0 : y->e->dtype == DT_F32 ? 1 : 2;
    return kx != ky ? kx - ky : (x->idx < y->idx ? -1 : x->idx > y->idx);
}

/* 1 if dseek quantize quantizes this tensor: a matrix quant_target names, with a logical
 * shape the loader accepts (st_quant_meta); an empty one is carried over as it is. */
static int quantizes(const TensorEntry *e) {
    return e->ndim == 2 && e->shape[0] >= 1 && e->shape[1] >= 1 && e->shape[0] <= (1ull << 32) &&
           e->shape[1] <= (1ull << 32) && quant_target(e->name);
}

static int copy_file(const char *from, const char *to) {
    size_t n;
    char *text = read_file(from, &n, (size_t)1 << 30);
    if (!text) return -1;
    FILE *f = fopen(to, "wb");
    int rc = !f || fwrite(text, 1, n, f) != n;
    if (f && fclose(f)) rc = 1;
    free(text);
    return rc ? -1 : 0;
}

int dseek_quantize(const char *dir, const char *out_dir, int quant, int progress, char *err, size_t errlen) {
    const int dt = quant_dtype(quant);
    if (dt < 0) {
        seterr(err, errlen, "quantize: unknown type %d", quant);
        return DSEEK_EARG;
    }
    char path[4096], tmp[4096];
    char *rin = realpath(dir, NULL), *rout = realpath(out_dir, NULL);
    int same = rin && rout && !strcmp(rin, rout);
    free(rin);
    free(rout);
    if (same) {
        seterr(err, errlen, "%s: the output folder is the input folder", out_dir);
        return DSEEK_EARG;
    }
    dseek_model *m;
    int rc = dseek_model_open(dir, &m, err, errlen); /* validates the whole checkpoint */
    if (rc) return rc;
    FILE *f = NULL;
    QItem *it = xcalloc(m->tt.n, sizeof *it);
    SBuf h = {0};
    uint8_t *buf = NULL;
    if (!it) { rc = DSEEK_ENOMEM; goto done; }
    if (mkdir(out_dir, 0755) && errno != EEXIST) {
        seterr(err, errlen, "%s: cannot create: %s", out_dir, strerror(errno));
        rc = DSEEK_EIO;
        goto done;
    }
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", out_dir);
    if (!access(path, F_OK)) {
        seterr(err, errlen, "%s: already holds a sharded model (model.safetensors.index.json): use an empty folder", out_dir);
        rc = DSEEK_EARG;
        goto done;
    }

    /* the plan: what becomes of each tensor, in output order, with its offset */
    size_t n = m->tt.n, total_src = 0;
    for (size_t i = 0; i < n; i++) {
        TensorEntry *e = &m->tt.v[i];
        it[i].e = e;
        it[i].idx = i;
        it[i].kind = quantizes(e) ? QW_QUANT : QW_COPY;
        if (it[i].kind == QW_QUANT) it[i].bytes = round_up(qtensor_bytes(dt, e->shape[0], e->shape[1]), 64);
        else it[i].bytes = e->nbytes;
    }
    for (size_t i = 0; i < n; i++) { /* drop the fp8 scales of quantized matrices */
        size_t k = strlen(it[i].e->name);
        if (k <= 10 || strcmp(it[i].e->name + k - 10, "_scale_inv")) continue;
        char base[600];
        snprintf(base, sizeof base, "%.*s", (int)(k - 10), it[i].e->name);
        TensorEntry *b = table_get(&m->tt, base);
        if (b && b->dtype == DT_F8 && quantizes(b)) it[i].kind = QW_DROP;
    }
    for (size_t i = 0; i < n; i++)
        if (it[i].kind == QW_COPY && it[i].e->dtype != DT_F32 && it[i].e->dtype != DT_BF16 && it[i].e->dtype != DT_F16) {
            seterr(err, errlen, "%s: %s: dtype %s: only F32, BF16 and F16 tensors can be carried over unquantized", dir,
                   it[i].e->name, dtype_name(it[i].e->dtype));
            rc = DSEEK_EUNSUP;
            goto done;
        }
    qsort(it, n, sizeof *it, qitem_order);
    uint64_t off = 0;
    for (size_t i = 0; i < n; i++) {
        if (it[i].kind == QW_DROP) continue;
        it[i].off = off;
        off += it[i].bytes;
        total_src += it[i].e->nbytes;
    }

    /* header: metadata first, then the tensors in data order */
    sb_printf(&h, "{\"__metadata__\":{\"format\":\"dseek\",\"dseek.version\":\"1\",\"dseek.quant\":\"%s\"",
              dtype_name(dt));
    for (size_t i = 0; i < n; i++)
        if (it[i].kind == QW_QUANT) {
            sb_printf(&h, ",");
            SBuf key = {0}; /* names have no length limit */
            sb_printf(&key, "dseek.q.%s", it[i].e->name);
            if (key.oom) h.oom = 1;
            else sb_json_str(&h, key.p);
            free(key.p);
            sb_printf(&h, ":\"%s [%llu,%llu]\"", dtype_name(dt), (unsigned long long)it[i].e->shape[0],
                      (unsigned long long)it[i].e->shape[1]);
        }
    sb_printf(&h, "}");
    for (size_t i = 0; i < n; i++) {
        const TensorEntry *e = it[i].e;
        if (it[i].kind == QW_DROP) continue;
        sb_printf(&h, ",");
        sb_json_str(&h, e->name);
        if (it[i].kind == QW_QUANT) sb_printf(&h, ":{\"dtype\":\"U8\",\"shape\":[%zu]", it[i].bytes);
        else {
            sb_printf(&h, ":{\"dtype\":\"%s\",\"shape\":[", dtype_name(e->dtype));
            for (int d = 0; d < e->ndim; d++) sb_printf(&h, "%s%llu", d ? "," : "", (unsigned long long)e->shape[d]);
            sb_printf(&h, "]");
        }
        sb_printf(&h, ",\"data_offsets\":[%llu,%llu]}", (unsigned long long)it[i].off,
                  (unsigned long long)(it[i].off + it[i].bytes));
    }
    sb_printf(&h, "}");
    while ((8 + h.n) % 64) sb_printf(&h, " "); /* the data area starts 64-byte aligned */
    if (h.oom) { rc = DSEEK_ENOMEM; goto done; }

    snprintf(tmp, sizeof tmp, "%s/model.safetensors.tmp", out_dir);
    snprintf(path, sizeof path, "%s/model.safetensors", out_dir);
    if (!(f = fopen(tmp, "wb"))) {
        seterr(err, errlen, "%s: cannot write: %s", tmp, strerror(errno));
        rc = DSEEK_EIO;
        goto done;
    }
    uint8_t len8[8];
    for (int i = 0; i < 8; i++) len8[i] = (uint8_t)((uint64_t)h.n >> (8 * i));
    int wok = fwrite(len8, 1, 8, f) == 8 && fwrite(h.p, 1, h.n, f) == h.n;

    /* data, tensor by tensor */
    const size_t chunk = 64u << 20;
    if (!(buf = malloc(chunk))) { rc = DSEEK_ENOMEM; goto done; }
    m->progress = progress;
    m->quant_to = dt; /* for the progress line */
    m->q_total = total_src;
    m->q_done = 0;
    m->q_t0 = m->q_last = clock_s();
    for (size_t i = 0; i < n && wok; i++) {
        TensorEntry *e = it[i].e;
        if (it[i].kind == QW_DROP) continue;
        if (it[i].kind == QW_COPY) {
            wok = fwrite(e->data, 1, e->nbytes, f) == e->nbytes;
            drop_source_pages(m, e->data, e->nbytes);
            quant_progress(m, e->nbytes);
            continue;
        }
        Tensor t;
        m->quant_to = 0; /* bind the source as it is */
        rc = bind_matrix(m, &t, e->name, e->shape[0], e->shape[1], err, errlen);
        m->quant_to = dt;
        if (rc) goto done;
        const size_t ng = (t.rows + QR - 1) / QR, gb = qgroup_bytes(dt, t.cols);
        const size_t per = chunk / gb ? chunk / gb : 1;
        if (gb > chunk) {
            seterr(err, errlen, "%s: %s: rows of %zu columns are too long to quantize", dir, e->name, t.cols);
            rc = DSEEK_EUNSUP;
            goto done;
        }
        size_t written = 0;
        for (size_t g0 = 0; g0 < ng && wok; g0 += per) {
            size_t g1 = g0 + per < ng ? g0 + per : ng;
            int bad = quantize_groups(&t, dt, g0, g1, buf);
            if (bad) {
                if (bad & 2) rc = DSEEK_ENOMEM;
                else {
                    seterr(err, errlen, "%s: %s: cannot be quantized to %s: a value is not finite or a block's scale "
                           "is beyond the range of a half", dir, e->name, dtype_name(dt));
                    rc = DSEEK_EFORMAT;
                }
                goto done;
            }
            wok = fwrite(buf, 1, (g1 - g0) * gb, f) == (g1 - g0) * gb;
            written += (g1 - g0) * gb;
        }
        memset(buf, 0, 64);
        if (wok && it[i].bytes > written) wok = fwrite(buf, 1, it[i].bytes - written, f) == it[i].bytes - written;
        drop_source_pages(m, e->data, e->nbytes);
        quant_progress(m, e->nbytes);
    }
    if (fclose(f)) wok = 0;
    f = NULL;
    if (!wok) {
        seterr(err, errlen, "%s: write failed: %s", tmp, strerror(errno));
        unlink(tmp);
        rc = DSEEK_EIO;
        goto done;
    }
    if (rename(tmp, path)) {
        seterr(err, errlen, "%s: cannot rename to %s: %s", tmp, path, strerror(errno));
        rc = DSEEK_EIO;
        goto done;
    }
    /* config and tokenizer; config.json is required, the others are copied when present */
    static const char *const files[] = {"config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        char from[4096];
        snprintf(from, sizeof from, "%s/%s", dir, files[i]);
        snprintf(path, sizeof path, "%s/%s", out_dir, files[i]);
        if (i > 0 && access(from, F_OK)) continue;
        if (copy_file(from, path)) {
            seterr(err, errlen, "%s: cannot copy to %s: %s", from, path, strerror(errno));
            rc = DSEEK_EIO;
            goto done;
        }
    }
done:
    if (f) {
        fclose(f);
        unlink(tmp);
    }
    free(buf);
    free(h.p);
    free(it);
    dseek_model_free(m);
    return rc;
}
