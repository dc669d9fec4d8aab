/* test_quant.c - dseek's quantized block formats and int8 kernels, tested from the inside
 * (this file includes src/dseek.c to reach its static functions).
 *
 *   test_quant           the checks below; exit status 1 on any failure
 *   test_quant --bench   each kernel's matrix-vector speed against the memory bandwidth
 *
 * Checks:
 *   1. f32_to_f16 rounds like the F16C instruction (when the CPU has it) and round-trips
 *      every half;
 *   2. the tile layout is the one section 1 of dseek.c documents, byte for byte (Q4_K:
 *      its scales, mins and quants read back from the documented places, full and partial
 *      super-blocks);
 *   3. Q8_0 / Q4_0 / Q4_K block errors: Q8_0 within half a step, Q4_0 never worse than the
 *      plain max/-8 rule on the same data, Q4_K below Q4_0 on the same rows;
 *   4. every kernel this CPU runs gives the same bits as the portable one, for odd shapes
 *      (partial row groups, column blocks and Q4_K super-blocks) and 1..20 tokens, through
 *      the threaded product too; Q4_K's padding columns contribute exactly nothing;
 *   5. the portable kernel against float64 products of the dequantized weights with the
 *      float activations: within the bound that 8-bit activation rounding allows;
 *   6. non-finite activations (an inf, a NaN among finite values) give NaN rows; zero activations give exact zeros;
 *   7. qgroup_dequant (used for kv_b in attention) = qrow_dequant, row by row. */
#include "../src/dseek.c"

static int fails;
#define CHECK(c, ...)                                                      \
    do {                                                                   \
        if (!(c)) {                                                        \
            fails++;                                                       \
            printf("FAIL %s:%d: ", __FILE__, __LINE__);                    \
            printf(__VA_ARGS__);                                           \
            printf("\n");                                                  \
        }                                                                  \
    } while (0)

static uint64_t rng = 0x2545F4914F6CDD1Dull;
static uint32_t rnd32(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng >> 16);
}
static float rnd_uniform(void) { return (rnd32() & 0xffffff) / 16777216.0f; }
static float rnd_normal(void) {
    float u = rnd_uniform() + 1e-7f, v = rnd_uniform();
    return sqrtf(-2 * logf(u)) * cosf(6.2831853f * v);
}

/* ---- 1. halves ---- */

#ifdef DS_X86
__attribute__((target("f16c"))) static uint16_t f16_hw(float f) { return (uint16_t)_cvtss_sh(f, 0); }
#endif

static void test_f16(void) {
    int bad = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        float f = f16_to_f32((uint16_t)h);
        if (isnan(f)) continue;
        if (f32_to_f16(f) != h) bad++;
    }
    CHECK(!bad, "%d halves do not round-trip through f32_to_f16", bad);
#ifdef DS_X86
    if (!cpu_has_f16c()) { printf("skip f32_to_f16 vs F16C: no F16C\n"); return; }
    bad = 0;
    uint32_t worst = 0;
    for (long i = 0; i < 4000000; i++) {
        uint32_t u = rnd32() << 16 ^ rnd32();
        if (i < 65536) u = (uint32_t)i << 13 ^ 0x1000u; /* halfway cases of every half */
        float f;
        memcpy(&f, &u, 4);
        if (isnan(f)) continue;
        if (f32_to_f16(f) != f16_hw(f)) { bad++; worst = u; }
    }
    CHECK(!bad, "%d floats convert differently from F16C (e.g. 0x%08x)", bad, worst);
    printf("ok   f32_to_f16: every half round-trips; equals F16C on 4M floats incl. all ties\n");
#endif
}

/* ---- 2. layout ---- */

static void test_layout(void) {
    /* a Q8_0 tile with q = position-dependent values, scale 1: row r, column c must read
     * byte 32 + 64 (c/4) + 4 r + c%4 */
    uint8_t tile[Q8_TILE];
    for (int r = 0; r < QR; r++) { tile[2 * r] = 0x00; tile[2 * r + 1] = 0x3c; } /* half 1.0 */
    for (int i = 32; i < Q8_TILE; i++) tile[i] = (uint8_t)((i * 7) % 200 - 100);
    int bad = 0;
    float row[QK];
    for (int r = 0; r < QR; r++) {
        qrow_dequant(DT_Q8_0, tile, QK, (size_t)r, row);
        for (int c = 0; c < QK; c++) bad += row[c] != (float)(int8_t)tile[32 + 64 * (c / 4) + 4 * r + c % 4];
    }
    uint8_t t4[Q4_TILE];
    for (int r = 0; r < QR; r++) { t4[2 * r] = 0x00; t4[2 * r + 1] = 0x40; } /* half 2.0 */
    for (int i = 32; i < Q4_TILE; i++) t4[i] = (uint8_t)(i * 37);
    for (int r = 0; r < QR; r++) {
        qrow_dequant(DT_Q4_0, t4, QK, (size_t)r, row);
        for (int c = 0; c < QK; c++) {
            uint8_t v = t4[32 + 64 * ((c % 16) / 4) + 4 * r + c % 4];
            bad += row[c] != 2.0f * (float)((c < 16 ? v & 15 : v >> 4) - 8);
        }
    }
    /* Q4_K: two super-blocks of random bytes with sane halves (d = 1.0 - r/64, dmin =
     * 0.5 + r/64), read as a [16, 288] and a [16, 256 + 200] matrix */
    const uint64_t rng_saved = rng; /* the tests after this one see the random numbers they always did */
    uint8_t *tk = malloc(2 * Q4K_TILE);
    for (int i = 0; i < 2 * Q4K_TILE; i++) tk[i] = (uint8_t)rnd32();
    for (int s = 0; s < 2; s++)
        for (int r = 0; r < QR; r++) {
            uint16_t d = f32_to_f16(1.0f - r / 64.0f), dm = f32_to_f16(0.5f + r / 64.0f);
            uint8_t *t = tk + s * Q4K_TILE;
            t[2 * r] = (uint8_t)d; t[2 * r + 1] = (uint8_t)(d >> 8);
            t[32 + 2 * r] = (uint8_t)dm; t[32 + 2 * r + 1] = (uint8_t)(dm >> 8);
        }
    static const size_t kcols[] = {288, 456};
    float rowk[512];
    for (int ci = 0; ci < 2; ci++)
        for (int r = 0; r < QR; r++) {
            qrow_dequant(DT_Q4_K, tk, kcols[ci], (size_t)r, rowk);
            for (size_t c = 0; c < kcols[ci]; c++) {
                const uint8_t *t = tk + c / 256 * Q4K_TILE;
                int j = (int)(c % 256 / 32), cc = (int)(c % 32);
                int lo = t[64 + 16 * j + r], hi = t[192 + 16 * (j % 4) + r] >> (4 * (j / 4));
                int sc = (lo & 15) + 16 * (hi & 3), m = (lo >> 4) + 16 * ((hi >> 2) & 3);
                uint8_t v = t[256 + 256 * j + 64 * ((cc % 16) / 4) + 4 * r + cc % 4];
                int q = cc < 16 ? v & 15 : v >> 4;
                double want = (double)(1.0f - r / 64.0f) * sc * q - (double)(0.5f + r / 64.0f) * m;
                bad += rowk[c] != (float)want; /* both products exact, one rounding */
            }
        }
    free(tk);
    rng = rng_saved;
    CHECK(!bad, "%d values of a tile are not where section 1 of dseek.c says", bad);
    if (!bad) printf("ok   tile layout as documented (Q8_0, Q4_0, Q4_K full and partial super-blocks)\n");
}

/* ---- 3. block errors ---- */

static void test_blocks(void) {
    double e8 = 0, e4 = 0, e4plain = 0, n = 0;
    int bad8 = 0, worse = 0;
    for (int it = 0; it < 20000; it++) {
        float x[QK];
        float scale = expf(rnd_normal() * 3);
        for (int i = 0; i < QK; i++) x[i] = rnd_normal() * scale * (rnd32() % 50 == 0 ? 8 : 1);
        uint16_t d;
        int8_t q8[QK];
        uint8_t q4[QK];
        CHECK(!q8_0_block(x, &d, q8), "q8_0_block refused finite data");
        float ds = f16_to_f32(d);
        double s8 = 0, s4 = 0, sp = 0, ss = 0;
        for (int i = 0; i < QK; i++) {
            double err = fabs(x[i] - ds * q8[i]);
            if (err > 0.5 * ds * 1.0001 + 1e-30 && fabs(x[i]) < 127 * ds) bad8++;
            s8 += err * err;
            ss += (double)x[i] * x[i];
        }
        CHECK(!q4_0_block(x, &d, q4), "q4_0_block refused finite data");
        ds = f16_to_f32(d);
        float amax = 0, m = 0;
        for (int i = 0; i < QK; i++)
            if (fabsf(x[i]) > amax) { amax = fabsf(x[i]); m = x[i]; }
        float dp = m / -8, idp = 1 / dp;
        for (int i = 0; i < QK; i++) {
            double e = x[i] - ds * (q4[i] - 8);
            s4 += e * e;
            int qp = (int)lrintf(x[i] * idp);
            qp = qp > 7 ? 7 : qp < -8 ? -8 : qp;
            double ep = x[i] - dp * qp;
            sp += ep * ep;
        }
        worse += s4 > sp * 1.01 + 1e-30; /* 1%: the scale is rounded to a half */
        e8 += s8 / ss;
        e4 += s4 / ss;
        e4plain += sp / ss;
        n++;
    }
    CHECK(!bad8, "%d Q8_0 values off by more than half a step", bad8);
    CHECK(worse < 20, "Q4_0 worse than the max/-8 rule on %d of 20000 blocks", worse);
    CHECK(e4 < e4plain, "Q4_0 relative error %.4f not below the plain rule's %.4f", sqrt(e4 / n), sqrt(e4plain / n));
    printf("ok   block errors (relative RMS): q8_0 %.5f, q4_0 %.4f (plain max/-8 rule %.4f)\n", sqrt(e8 / n),
           sqrt(e4 / n), sqrt(e4plain / n));

    /* Q4_K against Q4_0 on the same 256-wide rows: Gaussian rows whose sub-blocks have
     * scales spread over 1:8, skewed rows (|normal| or a shifted normal), rare outliers */
    static const char *const kind[] = {"gaussian", "skewed", "outliers"};
    for (int kd = 0; kd < 3; kd++) {
        double ek = 0, e0 = 0;
        int worse_k = 0;
        const int rows = 3000;
        for (int it = 0; it < rows; it++) {
            float x[QKK], sub[QKS];
            float scale = expf(rnd_normal() * 2);
            scale = scale > 1e3f ? 1e3f : scale < 1e-3f ? 1e-3f : scale; /* Q4_0's halves stay in range */
            for (int j = 0; j < QKS; j++) sub[j] = scale * (0.125f + rnd_uniform());
            for (int i = 0; i < QKK; i++) {
                float g = rnd_normal();
                if (kd == 1) g = it % 2 ? fabsf(g) : g + 1.5f;
                if (kd == 2 && rnd32() % 64 == 0) g *= 8;
                x[i] = g * sub[i / QK];
            }
            uint16_t d, dmin, d0;
            uint8_t sc[QKS], m[QKS], q[QKK], q0[QK];
            CHECK(!q4_k_superblock(x, &d, &dmin, sc, m, q), "q4_k_superblock refused finite data");
            double sk = 0, s0 = 0, ss = 0;
            for (int j = 0; j < QKS; j++) {
                CHECK(sc[j] < 64 && m[j] < 64, "6-bit scale out of range");
                float ds = f16_to_f32(d) * sc[j], dm = f16_to_f32(dmin) * m[j];
                CHECK(!q4_0_block(x + j * QK, &d0, q0), "q4_0_block refused finite data");
                for (int i = 0; i < QK; i++) {
                    double ek1 = x[j * QK + i] - ((double)ds * q[j * QK + i] - dm);
                    double e01 = x[j * QK + i] - (double)f16_to_f32(d0) * (q0[i] - 8);
                    CHECK(q[j * QK + i] < 16, "4-bit quant out of range");
                    sk += ek1 * ek1;
                    s0 += e01 * e01;
                    ss += (double)x[j * QK + i] * x[j * QK + i];
                }
            }
            worse_k += sk > s0;
            ek += sk / ss;
            e0 += s0 / ss;
        }
        CHECK(ek < e0 * (kd == 0 ? 0.95 : 0.8), "Q4_K relative error %.4f not clearly below Q4_0's %.4f (%s rows)",
              sqrt(ek / rows), sqrt(e0 / rows), kind[kd]);
        printf("ok   q4_k vs q4_0 relative RMS, %-8s rows: %.4f vs %.4f (q4_k worse on %d of %d rows)\n", kind[kd],
               sqrt(ek / rows), sqrt(e0 / rows), worse_k, rows);
    }
    /* an all-zero super-block, and padding: zeros quantize to exact zeros */
    float z[QKK] = {0};
    uint16_t d, dmin;
    uint8_t sc[QKS], m[QKS], q[QKK];
    CHECK(!q4_k_superblock(z, &d, &dmin, sc, m, q) && !d && !dmin, "a zero super-block has non-zero halves");
    z[7] = INFINITY;
    CHECK(q4_k_superblock(z, &d, &dmin, sc, m, q), "q4_k_superblock accepted an infinity");
    z[7] = 1e38f;
    CHECK(q4_k_superblock(z, &d, &dmin, sc, m, q), "q4_k_superblock accepted a scale beyond the range of a half");
    /* a NaN among finite values (a comparison skips it: it must not be quantized as 0) */
    for (int i = 0; i < QKK; i++) z[i] = 0.25f * (float)(i % 7) - 0.5f;
    for (int at = 0; at < QK; at += 13) {
        z[at] = NAN;
        int8_t q8[QK];
        CHECK(q8_0_block(z, &d, q8), "q8_0_block accepted a NaN at %d", at);
        CHECK(q4_0_block(z, &d, q), "q4_0_block accepted a NaN at %d", at);
        CHECK(q4_k_superblock(z, &d, &dmin, sc, m, q), "q4_k_superblock accepted a NaN at %d", at);
        z[at] = 0.5f;
    }
}

/* ---- 4-6. kernels ---- */

typedef struct {
    Tensor src, q;            /* float32 source, quantized */
    float *deq;               /* dequantized [rows, cols] */
} QMat;

static QMat make_qmat(int dt, size_t rows, size_t cols) {
    QMat m;
    float *w = malloc(rows * cols * sizeof(float));
    for (size_t i = 0; i < rows * cols; i++) w[i] = rnd_normal() * 0.05f;
    m.src = (Tensor){.data = (const uint8_t *)w, .rows = rows, .cols = cols, .dtype = DT_F32};
    uint8_t *q = malloc(qtensor_bytes(dt, rows, cols));
    DS_ASSERT(!quantize_groups(&m.src, dt, 0, (rows + QR - 1) / QR, q));
    m.q = (Tensor){.data = q, .rows = rows, .cols = cols, .dtype = dt};
    m.deq = malloc(rows * cols * sizeof(float));
    for (size_t r = 0; r < rows; r++) tensor_row(&m.q, r, m.deq + r * cols);
    return m;
}

static void free_qmat(QMat *m) {
    free((void *)m->src.data);
    free((void *)m->q.data);
    free(m->deq);
}

static QAct make_qact(size_t cols, int T) {
    size_t nb = (cols + QK - 1) / QK;
    QAct a = {.q = malloc((size_t)T * nb * QK), .d = malloc((size_t)T * nb * sizeof(float)),
              .s = malloc((size_t)T * nb * sizeof(int32_t))};
    return a;
}

static void free_qact(QAct *a) {
    free(a->q);
    free(a->d);
    free(a->s);
}

/* y[T, rows] with kernel k, one row group at a time (no threads) */
static void run_kernel(int k, const Tensor *w, const QAct *a, int T, float *y) {
    const size_t ng = (w->rows + QR - 1) / QR, nb = (w->cols + QK - 1) / QK, gb = qgroup_bytes(w->dtype, w->cols);
    for (size_t g = 0; g < ng; g++) {
        int nr = w->rows - g * QR < QR ? (int)(w->rows - g * QR) : QR;
        qkernels[k].fn(w->data + g * gb, nb, w->dtype, a, T, y + g * QR, w->rows, nr);
    }
}

static int portable_index(void) {
    for (int k = 0; k < (int)(sizeof qkernels / sizeof qkernels[0]); k++)
        if (qkernels[k].fn == qgroup_portable) return k;
    return -1;
}

static void test_kernels(void) {
    static const size_t shapes[][2] = {{16, 32}, {1, 32}, {17, 33}, {40, 200}, {100, 2048}, {33, 4133}, {130, 512},
                                       {20, 1408}, {16, 288}};
    static const int Ts[] = {1, 2, 3, 4, 5, 6, 7, 8, 15, 16, 20};
    const int nk = (int)(sizeof qkernels / sizeof qkernels[0]), kp = portable_index();
    int ran[8] = {0};
    double worst_ratio = 0;
    static const int dts[] = {DT_Q8_0, DT_Q4_0, DT_Q4_K};
    for (int dti = 0; dti < 3; dti++) {
        int dt = dts[dti];
        for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
            size_t rows = shapes[si][0], cols = shapes[si][1];
            QMat m = make_qmat(dt, rows, cols);
            for (size_t ti = 0; ti < sizeof Ts / sizeof Ts[0]; ti++) {
                int T = Ts[ti];
                float *x = malloc((size_t)T * cols * sizeof(float));
                for (size_t i = 0; i < (size_t)T * cols; i++) x[i] = rnd_normal() * (rnd32() % 64 ? 1.0f : 20.0f);
                QAct a = make_qact(cols, T);
                qact_quantize(&a, x, cols, T);
                float *yp = malloc((size_t)T * rows * sizeof(float)), *yk = malloc((size_t)T * rows * sizeof(float));
                run_kernel(kp, &m.q, &a, T, yp);
                /* 4. every kernel = portable, bit for bit; and through the threaded product */
                for (int k = 0; k < nk; k++) {
                    if (!qkernel_supported(k)) continue;
                    memset(yk, 0xff, (size_t)T * rows * sizeof(float));
                    run_kernel(k, &m.q, &a, T, yk);
                    ran[k]++;
                    CHECK(!memcmp(yp, yk, (size_t)T * rows * sizeof(float)), "%s != portable: %s [%zu,%zu] T=%d",
                          qkernels[k].name, dtype_name(dt), rows, cols, T);
                }
                memset(yk, 0xff, (size_t)T * rows * sizeof(float));
                qmatmul_act(yk, &a, &m.q, T);
                CHECK(!memcmp(yp, yk, (size_t)T * rows * sizeof(float)), "qmatmul_act (%s, threads) != portable: %s [%zu,%zu] T=%d",
                      qkernels[qkernel].name, dtype_name(dt), rows, cols, T);
                /* 5. against float64 products with the dequantized weights: the activations'
                 * rounding moves each x by at most half a step (max|x| of its block / 254) */
                int bad = 0;
                for (int t = 0; t < T; t++)
                    for (size_t r = 0; r < rows; r++) {
                        const float *wr = m.deq + r * cols, *xt = x + (size_t)t * cols;
                        double ref = 0, bound = 0, mag = 0;
                        for (size_t b = 0; b * QK < cols; b++) {
                            double amax = 0, sw = 0;
                            for (size_t c = b * QK; c < cols && c < (b + 1) * QK; c++) {
                                ref += (double)wr[c] * xt[c];
                                amax = fabs(xt[c]) > amax ? fabs(xt[c]) : amax;
                                sw += fabs(wr[c]);
                                mag += fabs((double)wr[c] * xt[c]);
                            }
                            bound += sw * amax / 254;
                        }
                        bound = bound * 1.0001 + 1e-6 * mag + 1e-30;
                        double err = fabs(yp[(size_t)t * rows + r] - ref);
                        if (err > bound) bad++;
                        if (err / bound > worst_ratio) worst_ratio = err / bound;
                    }
                CHECK(!bad, "portable kernel vs float64: %d outputs beyond the rounding bound (%s [%zu,%zu] T=%d)", bad,
                      dtype_name(dt), rows, cols, T);
                free(x);
                free(yp);
                free(yk);
                free_qact(&a);
            }
            free_qmat(&m);
        }
    }
    for (int k = 0; k < nk; k++)
        if (ran[k]) printf("ok   kernel %-12s = portable bit for bit (%d cases)\n", qkernels[k].name, ran[k]);
        else printf("skip kernel %-12s: this CPU cannot run it\n", qkernels[k].name);
    printf("ok   portable kernel vs float64: worst error %.2f of the activation-rounding bound\n", worst_ratio);

    /* 6. special activations */
    for (int dti = 0; dti < 3; dti++) {
        QMat m = make_qmat(dts[dti], 20, 70);
        QAct a = make_qact(70, 3);
        float x[210] = {0}, y[60];
        x[70 + 5] = INFINITY;
        for (int i = 0; i < 70; i++) x[140 + i] = 0.1f * (float)(i % 5); /* and a NaN among finite values */
        x[140 + 41] = NAN;
        qact_quantize(&a, x, 70, 3);
        for (int k = 0; k < nk; k++) {
            if (!qkernel_supported(k)) continue;
            run_kernel(k, &m.q, &a, 3, y);
            int zeros = 0, nans = 0;
            for (int r = 0; r < 20; r++) {
                zeros += y[r] == 0 && !signbit(y[r]);
                nans += isnan(y[20 + r]) + isnan(y[40 + r]);
            }
            CHECK(zeros == 20 && nans == 40, "%s %s: zero activations give %d/20 zeros, an inf or NaN %d/40 NaN rows",
                  qkernels[k].name, dtype_name(dts[dti]), zeros, nans);
        }
        free_qact(&a);
        free_qmat(&m);
    }

    /* Q4_K padding: a [20, 1408] matrix (5.5 super-blocks: its last tile holds 4 of 8
     * sub-blocks) is, row group by row group, the first bytes of the same matrix with 128
     * zero columns appended (6 whole tiles), and whatever finite activations meet those
     * columns, every kernel's products are the same bits */
    {
        const size_t R = 20, C = 1408, CP = 1536;
        const int T = 3;
        QMat m = make_qmat(DT_Q4_K, R, C);
        float *wp = calloc(R * CP, sizeof(float)), *x = malloc(T * CP * sizeof(float)), *xc = malloc(T * C * sizeof(float));
        for (size_t r = 0; r < R; r++) memcpy(wp + r * CP, m.src.data + r * C * sizeof(float), C * sizeof(float));
        Tensor src = {.data = (const uint8_t *)wp, .rows = R, .cols = CP, .dtype = DT_F32};
        uint8_t *qp = malloc(qtensor_bytes(DT_Q4_K, R, CP));
        DS_ASSERT(!quantize_groups(&src, DT_Q4_K, 0, (R + QR - 1) / QR, qp));
        const size_t gb = qgroup_bytes(DT_Q4_K, C), gbp = qgroup_bytes(DT_Q4_K, CP);
        CHECK(gb == 5 * Q4K_TILE + 256 + 4 * 256 && gbp == 6 * Q4K_TILE, "q4_k group bytes %zu, %zu", gb, gbp);
        for (size_t g = 0; g < (R + QR - 1) / QR; g++)
            CHECK(!memcmp(qp + g * gbp, m.q.data + g * gb, gb), "q4_k: zero padding columns quantize differently");
        for (size_t i = 0; i < T * CP; i++) x[i] = rnd_normal() * 3;
        for (int t = 0; t < T; t++) memcpy(xc + t * C, x + t * CP, C * sizeof(float));
        QAct a = make_qact(C, T), ap = make_qact(CP, T);
        qact_quantize(&a, xc, C, T);
        qact_quantize(&ap, x, CP, T);
        Tensor wq = {.data = qp, .rows = R, .cols = CP, .dtype = DT_Q4_K};
        float y[3 * 20], yp[3 * 20];
        int badp = 0;
        for (int k = 0; k < nk; k++) {
            if (!qkernel_supported(k)) continue;
            run_kernel(k, &m.q, &a, T, y);
            run_kernel(k, &wq, &ap, T, yp);
            badp += memcmp(y, yp, sizeof y) != 0;
        }
        CHECK(!badp, "q4_k: activations on zero padding columns change the products (%d kernels)", badp);
        if (!badp) printf("ok   q4_k padding: cols 1408 = 1536 with zero columns, tiles (cut after the last sub-block) and products bit for bit\n");
        free_qact(&a);
        free_qact(&ap);
        free(wp);
        free(x);
        free(xc);
        free(qp);
        free_qmat(&m);
    }

    /* 7. group dequantization = row dequantization */
    int badg = 0;
    for (int dti = 0; dti < 3; dti++) {
        static const size_t gcols[] = {200, 1408};
        for (int ci = 0; ci < 2; ci++) {
            const int dt = dts[dti];
            const size_t cols = gcols[ci];
            QMat g = make_qmat(dt, 37, cols);
            float *out = malloc(QR * cols * sizeof(float));
            size_t gb = qgroup_bytes(dt, cols);
            for (size_t gi = 0; gi < 3; gi++) {
                int nr = gi == 2 ? 5 : QR;
                qgroup_dequant(dt, g.q.data + gi * gb, cols, out, nr);
                badg += memcmp(out, g.deq + gi * QR * cols, (size_t)nr * cols * sizeof(float)) != 0;
            }
            free(out);
            free_qmat(&g);
        }
    }
    CHECK(!badg, "qgroup_dequant differs from qrow_dequant in %d row groups", badg);
}

/* ---- --bench ---- */

/* CPU time of the process: on a shared machine, wall time also counts the time other
 * processes held the cores; with one thread, CPU time is what the kernel itself took. */
static double secs(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* The bench probe of memory bandwidth, timed in CPU time like the kernels (one thread). */
static double probe_bw(void) {
    size_t n = (size_t)128 << 20;
    float *buf = malloc(n * sizeof(float)), best = 0;
    for (size_t i = 0; i < n; i++) buf[i] = (float)(i & 1023);
    float sink = 0;
    for (int rep = 0; rep < 5; rep++) {
        double t0 = secs();
        float acc[16] = {0};
        for (size_t i = 0; i < n; i += 16)
            for (int k = 0; k < 16; k++) acc[k] += buf[i + k];
        double t = secs() - t0;
        sink += acc[3];
        if (n * 4 / t > best) best = (float)(n * 4 / t);
    }
    free(buf);
    return sink == -1.0f ? 0 : best; /* the sums are used, so the reads stay */
}

static void bench(void) {
    const size_t rows = 16384, cols = 8192; /* 128 M weights: far beyond any cache */
    static const int dts[] = {DT_Q8_0, DT_Q4_0, DT_Q4_K};
    for (int dti = 0; dti < 3; dti++) {
        int dt = dts[dti];
        size_t bytes = qtensor_bytes(dt, rows, cols);
        uint8_t *q = malloc(bytes);
        for (size_t i = 0; i < bytes; i++) q[i] = (uint8_t)rnd32();
        for (size_t g = 0; g < rows / QR * (cols / qtile_cols(dt)); g++) /* sane scales (Q4_K: and mins) */
            for (int r = 0; r < (dt == DT_Q4_K ? 2 * QR : QR); r++) {
                q[g * qtile_bytes(dt) + 2 * r] = 0;
                q[g * qtile_bytes(dt) + 2 * r + 1] = 0x20;
            }
        Tensor w = {.data = q, .rows = rows, .cols = cols, .dtype = dt};
        float *x = malloc(cols * 4 * sizeof(float)), *y = malloc(rows * 4 * sizeof(float));
        for (size_t i = 0; i < cols * 4; i++) x[i] = rnd_normal();
        QAct a = make_qact(cols, 4);
        qact_quantize(&a, x, cols, 4);
        for (int k = 0; k < (int)(sizeof qkernels / sizeof qkernels[0]); k++) {
            if (!qkernel_supported(k)) continue;
            qkernel = k;
            for (int T = 1; T <= 4; T *= 2) {
                double best = 1e30;
                for (int rep = 0; rep < 8; rep++) {
                    double t0 = secs();
                    qmatmul_act(y, &a, &w, T);
                    double t = secs() - t0;
                    best = t < best ? t : best;
                }
                printf("%s %-12s T=%d: %6.1f GB/s of weights (%.2f ms of CPU time for %zu MB)\n", dtype_name(dt),
                       qkernels[k].name, T, bytes / best / 1e9, best * 1e3, bytes >> 20);
            }
        }
        free_qact(&a);
        free(q);
        free(x);
        free(y);
    }
    printf("memory read bandwidth (a 16-lane float sum, one thread, CPU time): %.1f GB/s\n", probe_bw() / 1e9);
}

int main(int argc, char **argv) {
    char err[256];
    fp8_table_init();
    if (qkernels_init(err, sizeof err)) {
        printf("FAIL %s\n", err);
        return 1;
    }
    if (argc > 1 && !strcmp(argv[1], "--bench")) {
        bench();
        return 0;
    }
    printf("kernels in use: %s\n", dseek_kernel_name());
    test_f16();
    test_layout();
    test_blocks();
    test_kernels();
    printf("test_quant.c: %s\n", fails ? "FAILED" : "all passed");
    return fails ? 1 : 0;
}
