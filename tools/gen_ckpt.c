/*
 * gen_ckpt.c - write random DeepSeek-V2/V3 checkpoints in exact Hugging Face layout.
 *
 * Output: DIR/config.json plus DIR/model.safetensors, or N shards model-0000i-of-0000N
 * .safetensors with model.safetensors.index.json. Names, dtypes, shapes and order follow
 * the released checkpoints (shared/SPEC.md). fp8 mode: attention and MLP/expert projections
 * are F8_E4M3 with F32 128x128-block `weight_scale_inv`, the rest BF16, the router bias F32.
 * --twin-f32 DIR2 writes the same model with every tensor F32 = the dequantized values.
 *
 * Contract: C11, libc + libm, single-threaded, streaming: a shard's header is computed
 * before its data, tensors are generated and written 128 rows at a time, so memory stays
 * small whatever the model size. Each tensor draws from its own PRNG stream keyed by
 * (--seed, name): values do not depend on dtype, shard count or layer count.
 * Errors print one line to stderr and exit with status 2.
 * Build: cc -O2 -std=c11 -Wall -Wextra tools/gen_ckpt.c -o tools/gen_ckpt -lm
 */
#define _POSIX_C_SOURCE 200809L
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* ============================== helpers ================================== */

/* Print one error line and exit with status 2. */
static void die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("gen_ckpt: error: ", stderr);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(2);
}

static void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) die("out of memory (%zu bytes)", n);
    return p;
}

/* Growable string; sb_add appends printf-formatted text, strf returns a malloc'd one. */
typedef struct { char *p; size_t n, cap; } sb_t;

static void sb_vadd(sb_t *b, const char *fmt, va_list ap) {
    va_list aq;
    va_copy(aq, ap);
    size_t k = (size_t)vsnprintf(NULL, 0, fmt, aq);
    va_end(aq);
    if (b->n + k + 1 > b->cap) {
        b->cap = (b->n + k + 1) * 2;
        if (!(b->p = realloc(b->p, b->cap))) die("out of memory");
    }
    vsnprintf(b->p + b->n, k + 1, fmt, ap);
    b->n += k;
}

static void sb_add(sb_t *b, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    sb_vadd(b, fmt, ap);
    va_end(ap);
}

static char *strf(const char *fmt, ...) {
    sb_t b = {0};
    va_list ap;
    va_start(ap, fmt);
    sb_vadd(&b, fmt, ap);
    va_end(ap);
    return b.p;
}

/* Write a whole text file or die. */
static void write_text(const char *dir, const char *name, const sb_t *b) {
    char *path = strf("%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(b->p, 1, b->n, f) != b->n || fclose(f) != 0)
        die("cannot write %s: %s", path, strerror(errno));
    free(path);
}

/* mkdir -p */
static void make_dirs(const char *dir) {
    char *p = strf("%s", dir), c;
    struct stat st;
    for (char *s = p + 1;; s++) {
        if ((c = *s) && c != '/') continue;
        *s = '\0';
        if (mkdir(p, 0777) != 0 && errno != EEXIST) die("cannot create directory %s: %s", p, strerror(errno));
        if (!(*s = c)) break;
    }
    if (stat(p, &st) != 0 || !S_ISDIR(st.st_mode)) die("%s is not a directory", p);
    free(p);
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Shortest decimal that reads back as x (as Python prints it); integral values get ".0"
 * when is_float. Returns buf (32 bytes). */
static char *jnum(char *buf, double x, int is_float) {
    if (x == floor(x) && fabs(x) < 1e15) snprintf(buf, 32, is_float ? "%.1f" : "%.0f", x);
    else for (int p = 1; p <= 17; p++) if (snprintf(buf, 32, "%.*g", p, x) && strtod(buf, NULL) == x) break;
    return buf;
}

/* ============================ random numbers ============================= */

/* splitmix64: fast, 64-bit state, good enough statistics for weights. */
static inline uint64_t rng_next(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Approximately normal: Irwin-Hall sum of four 16-bit uniforms, centred; times IH_UNIT it
 * has unit variance (bounded at +-3.46 sigma). */
#define IH_UNIT 2.6428e-5f /* sqrt(3) / 65536 */
static inline float rnd_ih(uint64_t *s) {
    uint64_t r = rng_next(s);
    int32_t t = (int32_t)(r & 0xFFFF) + (int32_t)((r >> 16) & 0xFFFF) +
                (int32_t)((r >> 32) & 0xFFFF) + (int32_t)(r >> 48);
    return (float)(t - 131070);
}

/* Uniform on [-1, 1). */
static inline float rnd_uniform(uint64_t *s) {
    return (float)(rng_next(s) >> 40) * (1.0f / 8388608.0f) - 1.0f;
}

/* Per-tensor stream: FNV-1a of the name mixed with the global seed. */
static uint64_t tensor_stream(uint64_t seed, const char *name) {
    uint64_t h = 0xCBF29CE484222325ull;
    for (const char *c = name; *c; c++) h = (h ^ (uint8_t)*c) * 0x100000001B3ull;
    uint64_t s = seed;
    return rng_next(&s) ^ h;
}

/* ============================ number formats ============================= */

enum { DT_F32, DT_BF16, DT_F16, DT_F8 };
static const char *DT_NAME[] = {"F32", "BF16", "F16", "F8_E4M3"};
static const size_t DT_SIZE[] = {4, 2, 2, 1};

static inline uint32_t f2u(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static inline float u2f(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

/* Round 0 <= v < 2^22 to the nearest integer, ties to even (no libm call, unlike rintf). */
static inline uint32_t rne_u(float v) { return (uint32_t)((v + 12582912.0f) - 12582912.0f); }

/* f32 -> bf16, round to nearest even (inputs are finite). */
static inline uint16_t to_bf16(float x) {
    uint32_t u = f2u(x);
    return (uint16_t)((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

/* f32 -> IEEE half, round to nearest even, subnormals kept, overflow -> inf. */
static inline uint16_t to_f16(float x) {
    uint32_t u = f2u(x), sign = (u >> 16) & 0x8000u;
    u &= 0x7FFFFFFFu;
    if (u >= 0x47800000u) return (uint16_t)(sign | 0x7C00u);           /* >= 65536 */
    if (u < 0x38800000u) return (uint16_t)(sign | rne_u(u2f(u) * 16777216.0f)); /* < 2^-14 */
    u += 0xFFFu + ((u >> 13) & 1u);
    uint32_t h = (u >> 13) - (112u << 10);
    return (uint16_t)(sign | (h >= 0x7C00u ? 0x7C00u : h));
}

/* f32 -> e4m3fn (bias 7, max 448, no inf), round to nearest even, saturating at 448. */
static inline uint8_t to_fp8(float x) {
    uint32_t u = f2u(x), sign = (u >> 24) & 0x80u;
    u &= 0x7FFFFFFFu;
    if (u - 0x3C800000u < 0x43E00000u - 0x3C800000u)           /* 2^-6 <= |x| < 448: normal */
        return (uint8_t)(sign | (((u + 0x7FFFFu + ((u >> 20) & 1u)) >> 20) - (120u << 3)));
    if (u >= 0x43E00000u) return (uint8_t)(sign | 0x7Eu);      /* |x| >= 448 */
    return (uint8_t)(sign | rne_u(u2f(u) * 512.0f));           /* subnormal: m * 2^-9 */
}

static float FP8_VAL[256];     /* e4m3fn code -> value */
static float F16_VAL[65536];   /* half code -> value   */

static void build_tables(void) {
    for (int c = 0; c < 256; c++) {
        int e = (c >> 3) & 15, m = c & 7;
        float v = e == 0 ? ldexpf((float)m, -9) : ldexpf((float)(8 + m), e - 10);
        if (e == 15 && m == 7) v = NAN;
        FP8_VAL[c] = (c & 0x80) ? -v : v;
    }
    for (int c = 0; c < 65536; c++) {
        int e = (c >> 10) & 31, m = c & 1023;
        float v = e == 0 ? ldexpf((float)m, -24) : e == 31 ? (m ? NAN : INFINITY) : ldexpf((float)(1024 + m), e - 25);
        F16_VAL[c] = (c & 0x8000) ? -v : v;
    }
}

/* ================================ config ================================= */

typedef struct {
    const char *preset, *out, *twin;    /* --preset, --out DIR, --twin-f32 DIR2 (NULL: none)  */
    int v3;                             /* model_type deepseek_v3 (else deepseek_v2)           */
    long layers, dense;                 /* num_hidden_layers, first_k_dense_replace            */
    long hidden, inter, moe_inter;      /* hidden_size, intermediate_size, moe_intermediate_size */
    long experts, shared, topk;         /* n_routed_experts, n_shared_experts, num_experts_per_tok */
    long groups, topk_groups;           /* n_group, topk_group                                 */
    const char *topk_method, *scoring;  /* topk_method, scoring_func                           */
    long norm_topk;                     /* norm_topk_prob (0/1)                                */
    double scaling;                     /* routed_scaling_factor                               */
    long heads, q_lora, kv_lora;        /* num_attention_heads, q_lora_rank (0 = null), kv_lora_rank */
    long nope, rope, vdim, vocab;       /* qk_nope_head_dim, qk_rope_head_dim, v_head_dim, vocab_size */
    double rope_theta;                  /* rope_theta                                          */
    double yarn, beta_fast, beta_slow;  /* rope_scaling.factor (0 = null), beta_fast, beta_slow */
    double mscale, mscale_all;          /* rope_scaling.mscale, mscale_all_dim                 */
    long yarn_orig;                     /* rope_scaling.original_max_position_embeddings       */
    long mtp, mtp_copy;                 /* num_nextn_predict_layers; MTP embed/head copy main  */
    const char *dtype_s;                /* f32 | bf16 | f16 | fp8                               */
    int dtype;                          /* DT_* of the linear projections                      */
    long shards, bos, eos, max_pos;     /* shard count, token ids, max_position_embeddings (0 = auto) */
    long seed, dry_run;                 /* PRNG seed; write config.json only and print the plan */
} cfg_t;

/* Presets. tiny-* are small enough for unit tests; dims need not be multiples of 128. */
static void apply_preset(cfg_t *c, const char *p) {
    cfg_t d = {.preset = p, .out = "ckpt", .v3 = 1, .layers = 4, .dense = 1, .hidden = 256, .inter = 384,
               .moe_inter = 96, .experts = 16, .shared = 1, .topk = 4, .groups = 4, .topk_groups = 2,
               .topk_method = "noaux_tc", .scoring = "sigmoid", .norm_topk = 1, .scaling = 2.5,
               .heads = 4, .q_lora = 192, .kv_lora = 128, .nope = 64, .rope = 32, .vdim = 64,
               .vocab = 1024, .rope_theta = 10000, .yarn = 40, .beta_fast = 32, .beta_slow = 1,
               .mscale = 1, .mscale_all = 1, .yarn_orig = 64, .mtp = 1, .mtp_copy = 1, .dtype_s = "fp8",
               .shards = 1, .bos = 0, .eos = 1, .seed = 1};
    if (!strcmp(p, "tiny-v3")) {
    } else if (!strcmp(p, "tiny-v2")) {
        d.v3 = 0; d.layers = 3; d.inter = 512; d.moe_inter = 64; d.shared = 2; d.groups = 1;
        d.topk_groups = 1; d.topk_method = "greedy"; d.scoring = "softmax"; d.norm_topk = 0;
        d.scaling = 1.0; d.q_lora = 0; d.nope = 32; d.rope = 16; d.vdim = 32; d.yarn = 0; d.mtp = 0;
        d.dtype_s = "bf16";
    } else if (!strcmp(p, "v2lite")) {
        d.v3 = 0; d.layers = 27; d.dense = 1; d.hidden = 2048; d.inter = 10944; d.moe_inter = 1408;
        d.experts = 64; d.shared = 2; d.topk = 6; d.groups = 1; d.topk_groups = 1; d.topk_method = "greedy";
        d.scoring = "softmax"; d.norm_topk = 0; d.scaling = 1.0; d.heads = 16; d.q_lora = 0;
        d.kv_lora = 512; d.nope = 128; d.rope = 64; d.vdim = 128; d.vocab = 102400; d.yarn = 40;
        d.yarn_orig = 4096; d.mscale = 0.707; d.mscale_all = 0.707; d.mtp = 0; d.dtype_s = "bf16";
        d.bos = 100000; d.eos = 100001;
    } else if (!strcmp(p, "v3block")) {
        d.layers = 61; d.dense = 3; d.hidden = 7168; d.inter = 18432; d.moe_inter = 2048; d.experts = 256;
        d.shared = 1; d.topk = 8; d.groups = 8; d.topk_groups = 4; d.heads = 128; d.q_lora = 1536;
        d.kv_lora = 512; d.nope = 128; d.rope = 64; d.vdim = 128; d.vocab = 129280; d.yarn_orig = 4096;
    } else {
        die("unknown --preset '%s' (tiny-v2, tiny-v3, v2lite, v3block)", p);
    }
    *c = d;
}

/* Command-line options: one table drives parsing and --help. */
enum { O_LONG, O_DBL, O_STR };
typedef struct { const char *name; int type; size_t off; double lo, hi; const char *help; } opt_t;
#define F(x) offsetof(cfg_t, x)
static const opt_t OPTS[] = {
    {"out", O_STR, F(out), 0, 0, "output directory (created if missing)"},
    {"twin-f32", O_STR, F(twin), 0, 0, "also write the dequantized model, all F32, to this directory"},
    {"seed", O_LONG, F(seed), 0, 9e15, "PRNG seed"},
    {"preset", O_STR, F(preset), 0, 0, "tiny-v2 | tiny-v3 | v2lite | v3block (applied before the overrides)"},
    {"layers", O_LONG, F(layers), 1, 100000, "num_hidden_layers"},
    {"dense", O_LONG, F(dense), 0, 100000, "first_k_dense_replace"},
    {"hidden", O_LONG, F(hidden), 1, 1e6, "hidden_size"},
    {"inter", O_LONG, F(inter), 1, 1e7, "intermediate_size (dense MLP)"},
    {"moe-inter", O_LONG, F(moe_inter), 1, 1e7, "moe_intermediate_size"},
    {"experts", O_LONG, F(experts), 1, 1e5, "n_routed_experts"},
    {"shared", O_LONG, F(shared), 0, 1e3, "n_shared_experts"},
    {"topk", O_LONG, F(topk), 1, 1e5, "num_experts_per_tok"},
    {"groups", O_LONG, F(groups), 1, 1e5, "n_group"},
    {"topk-groups", O_LONG, F(topk_groups), 1, 1e5, "topk_group"},
    {"topk-method", O_STR, F(topk_method), 0, 0, "greedy | group_limited_greedy | noaux_tc"},
    {"scoring", O_STR, F(scoring), 0, 0, "softmax | sigmoid"},
    {"norm-topk", O_LONG, F(norm_topk), 0, 1, "norm_topk_prob 0|1"},
    {"scaling", O_DBL, F(scaling), 0, 1e6, "routed_scaling_factor"},
    {"heads", O_LONG, F(heads), 1, 1e5, "num_attention_heads"},
    {"q-lora", O_LONG, F(q_lora), 0, 1e6, "q_lora_rank (0 = null: plain q_proj)"},
    {"kv-lora", O_LONG, F(kv_lora), 1, 1e6, "kv_lora_rank"},
    {"nope", O_LONG, F(nope), 1, 1e5, "qk_nope_head_dim"},
    {"rope-dim", O_LONG, F(rope), 2, 1e5, "qk_rope_head_dim (even)"},
    {"vdim", O_LONG, F(vdim), 1, 1e5, "v_head_dim"},
    {"vocab", O_LONG, F(vocab), 2, 1e8, "vocab_size"},
    {"rope-theta", O_DBL, F(rope_theta), 1, 1e12, "rope_theta"},
    {"yarn", O_DBL, F(yarn), 0, 1e6, "YaRN factor (0 = rope_scaling null)"},
    {"yarn-orig", O_LONG, F(yarn_orig), 1, 1e9, "rope_scaling.original_max_position_embeddings"},
    {"beta-fast", O_DBL, F(beta_fast), 0, 1e6, "rope_scaling.beta_fast"},
    {"beta-slow", O_DBL, F(beta_slow), 0, 1e6, "rope_scaling.beta_slow"},
    {"mscale", O_DBL, F(mscale), 0, 1e6, "rope_scaling.mscale"},
    {"mscale-all-dim", O_DBL, F(mscale_all), 0, 1e6, "rope_scaling.mscale_all_dim"},
    {"mtp", O_LONG, F(mtp), 0, 100, "num_nextn_predict_layers (MTP layers at model.layers.{L..})"},
    {"mtp-copy", O_LONG, F(mtp_copy), 0, 1, "1: MTP embed_tokens/shared_head.head copy the main ones (as released)"},
    {"dtype", O_STR, F(dtype_s), 0, 0, "f32 | bf16 | f16 | fp8 (F8_E4M3 + 128x128 weight_scale_inv)"},
    {"shards", O_LONG, F(shards), 1, 99999, "number of safetensors files (>1 adds the index)"},
    {"bos", O_LONG, F(bos), 0, 1e9, "bos_token_id"},
    {"eos", O_LONG, F(eos), 0, 1e9, "eos_token_id"},
    {"max-pos", O_LONG, F(max_pos), 0, 1e12, "max_position_embeddings (0 = yarn factor*orig, else 4096)"},
    {"dry-run", O_LONG, F(dry_run), 0, 1, "1: write config.json only, print tensors/params/bytes"},
};
#define NOPTS (sizeof OPTS / sizeof OPTS[0])

static void usage(void) {
    printf("usage: gen_ckpt [--preset P] [--FLAG VALUE]...\n"
           "Writes a random DeepSeek-V2/V3 checkpoint (config.json + safetensors) in Hugging Face layout.\n"
           "Defaults: --preset tiny-v3 (4 layers, 1 dense, hidden 256, 16 experts top-4, fp8, MTP 1).\n\n");
    for (size_t i = 0; i < NOPTS; i++) printf("  --%-16s %s\n", OPTS[i].name, OPTS[i].help);
    printf("  --%-16s %s\n", "help", "this text");
}

/* Parse argv: --preset first (wherever it is), then every other flag in order. */
static void parse_args(cfg_t *c, int argc, char **argv) {
    const char *preset = "tiny-v3";
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) { usage(); exit(0); }
        if (!strcmp(argv[i], "--preset") && i + 1 < argc) preset = argv[i + 1];
        else if (!strncmp(argv[i], "--preset=", 9)) preset = argv[i] + 9;
    }
    apply_preset(c, preset);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *val = NULL, *eq;
        if (strncmp(a, "--", 2)) die("unexpected argument '%s' (try --help)", a);
        size_t len = (eq = strchr(a, '=')) ? (size_t)(eq - a - 2) : strlen(a + 2);
        const opt_t *o = NULL;
        for (size_t k = 0; k < NOPTS; k++)
            if (strlen(OPTS[k].name) == len && !strncmp(OPTS[k].name, a + 2, len)) o = &OPTS[k];
        if (!o) die("unknown flag '%s' (try --help)", a);
        if (eq) val = eq + 1;
        else if (i + 1 < argc && strncmp(argv[i + 1], "--", 2)) val = argv[++i];
        else die("flag --%s needs a value", o->name);
        void *dst = (char *)c + o->off;
        if (o->type == O_STR) {
            if (!*val) die("flag --%s: empty value", o->name);
            *(const char **)dst = val;
            continue;
        }
        char *end = NULL;
        errno = 0;
        double v = strtod(val, &end);
        if (errno || end == val || *end || !isfinite(v) || v < o->lo || v > o->hi || (o->type == O_LONG && v != floor(v)))
            die("flag --%s: bad value '%s' (%s in [%.15g, %.15g])", o->name, val,
                o->type == O_LONG ? "integer" : "number", o->lo, o->hi);
        if (o->type == O_LONG) *(long *)dst = (long)v;
        else *(double *)dst = v;
    }
}

/* Reject configs no engine could run; each message names the flag. */
static void validate(cfg_t *c) {
    static const char *DTS[] = {"f32", "bf16", "f16", "fp8"};
    c->dtype = -1;
    for (int i = 0; i < 4; i++) if (!strcmp(c->dtype_s, DTS[i])) c->dtype = i;
    if (c->dtype < 0) die("--dtype '%s': expected f32, bf16, f16 or fp8", c->dtype_s);
    if (strcmp(c->scoring, "softmax") && strcmp(c->scoring, "sigmoid"))
        die("--scoring '%s': expected softmax or sigmoid", c->scoring);
    int greedy = !strcmp(c->topk_method, "greedy"), noaux = !strcmp(c->topk_method, "noaux_tc");
    if (!greedy && !noaux && strcmp(c->topk_method, "group_limited_greedy"))
        die("--topk-method '%s': expected greedy, group_limited_greedy or noaux_tc", c->topk_method);
    if (c->dense > c->layers) die("--dense %ld exceeds --layers %ld", c->dense, c->layers);
    if (c->topk > c->experts) die("--topk %ld exceeds --experts %ld", c->topk, c->experts);
    if (c->experts % c->groups) die("--experts %ld is not a multiple of --groups %ld", c->experts, c->groups);
    if (c->topk_groups > c->groups) die("--topk-groups %ld exceeds --groups %ld", c->topk_groups, c->groups);
    if (!greedy && c->topk > c->topk_groups * (c->experts / c->groups))
        die("--topk %ld exceeds the experts in --topk-groups %ld groups", c->topk, c->topk_groups);
    if (noaux && c->experts / c->groups < 2) die("--topk-method noaux_tc needs >= 2 experts per group");
    if (c->rope % 2) die("--rope-dim %ld must be even", c->rope);
    if (c->bos >= c->vocab || c->eos >= c->vocab) die("--bos/--eos must be below --vocab %ld", c->vocab);
    if (c->yarn > 0 && c->yarn < 1) die("--yarn %g: factor must be 0 (off) or >= 1", c->yarn);
    if (c->twin && !strcmp(c->twin, c->out)) die("--twin-f32 must differ from --out");
    if (c->max_pos == 0) c->max_pos = c->yarn > 0 ? (long)llround(c->yarn * (double)c->yarn_orig) : 4096;
}

/* config.json with the keys of the released configs, sorted as HF writes them. */
static void write_config(const cfg_t *c, const char *dir, int f32_twin) {
    sb_t b = {0};
    const char *V = c->v3 ? "V3" : "V2";
    int fp8 = c->dtype == DT_F8 && !f32_twin;
    const char *tdt = f32_twin || c->dtype == DT_F32 ? "float32" : c->dtype == DT_F16 ? "float16" : "bfloat16";
    char t1[32], t2[32], t3[32], t4[32], t5[32];
    sb_add(&b, "{\n  \"architectures\": [\n    \"Deepseek%sForCausalLM\"\n  ],\n", V);
    sb_add(&b, "  \"attention_bias\": false,\n  \"attention_dropout\": 0.0,\n  \"auto_map\": {\n"
               "    \"AutoConfig\": \"configuration_deepseek.Deepseek%sConfig\",\n"
               "    \"AutoModel\": \"modeling_deepseek.Deepseek%sModel\",\n"
               "    \"AutoModelForCausalLM\": \"modeling_deepseek.Deepseek%sForCausalLM\"\n  },\n", V, V, V);
    if (!c->v3) sb_add(&b, "  \"aux_loss_alpha\": 0.001,\n");
    sb_add(&b, "  \"bos_token_id\": %ld,\n  \"eos_token_id\": %ld,\n  \"ep_size\": 1,\n", c->bos, c->eos);
    sb_add(&b, "  \"first_k_dense_replace\": %ld,\n  \"hidden_act\": \"silu\",\n  \"hidden_size\": %ld,\n",
           c->dense, c->hidden);
    sb_add(&b, "  \"initializer_range\": 0.02,\n  \"intermediate_size\": %ld,\n  \"kv_lora_rank\": %ld,\n",
           c->inter, c->kv_lora);
    sb_add(&b, "  \"max_position_embeddings\": %ld,\n  \"model_type\": \"deepseek_v%d\",\n", c->max_pos, c->v3 ? 3 : 2);
    sb_add(&b, "  \"moe_intermediate_size\": %ld,\n  \"moe_layer_freq\": 1,\n  \"n_group\": %ld,\n",
           c->moe_inter, c->groups);
    sb_add(&b, "  \"n_routed_experts\": %ld,\n  \"n_shared_experts\": %ld,\n  \"norm_topk_prob\": %s,\n",
           c->experts, c->shared, c->norm_topk ? "true" : "false");
    sb_add(&b, "  \"num_attention_heads\": %ld,\n  \"num_experts_per_tok\": %ld,\n", c->heads, c->topk);
    sb_add(&b, "  \"num_hidden_layers\": %ld,\n  \"num_key_value_heads\": %ld,\n", c->layers, c->heads);
    if (c->mtp > 0) sb_add(&b, "  \"num_nextn_predict_layers\": %ld,\n", c->mtp);
    if (!c->v3) sb_add(&b, "  \"pretraining_tp\": 1,\n");
    sb_add(&b, c->q_lora > 0 ? "  \"q_lora_rank\": %ld,\n" : "  \"q_lora_rank\": null,\n", c->q_lora);
    sb_add(&b, "  \"qk_nope_head_dim\": %ld,\n  \"qk_rope_head_dim\": %ld,\n", c->nope, c->rope);
    if (fp8)
        sb_add(&b, "  \"quantization_config\": {\n    \"activation_scheme\": \"dynamic\",\n    \"fmt\": \"e4m3\",\n"
                   "    \"quant_method\": \"fp8\",\n    \"weight_block_size\": [\n      128,\n      128\n    ]\n  },\n");
    sb_add(&b, "  \"rms_norm_eps\": 1e-06,\n");
    if (c->yarn > 0)
        sb_add(&b, "  \"rope_scaling\": {\n    \"beta_fast\": %s,\n    \"beta_slow\": %s,\n    \"factor\": %s,\n"
                   "    \"mscale\": %s,\n    \"mscale_all_dim\": %s,\n    \"original_max_position_embeddings\": %ld,\n"
                   "    \"type\": \"yarn\"\n  },\n", jnum(t1, c->beta_fast, 0), jnum(t2, c->beta_slow, 0),
               jnum(t3, c->yarn, 0), jnum(t4, c->mscale, 1), jnum(t5, c->mscale_all, 1), c->yarn_orig);
    else
        sb_add(&b, "  \"rope_scaling\": null,\n");
    sb_add(&b, "  \"rope_theta\": %s,\n  \"routed_scaling_factor\": %s,\n  \"scoring_func\": \"%s\",\n",
           jnum(t1, c->rope_theta, 0), jnum(t2, c->scaling, 1), c->scoring);
    if (!c->v3) sb_add(&b, "  \"seq_aux\": true,\n");
    sb_add(&b, "  \"tie_word_embeddings\": false,\n  \"topk_group\": %ld,\n  \"topk_method\": \"%s\",\n",
           c->topk_groups, c->topk_method);
    sb_add(&b, "  \"torch_dtype\": \"%s\",\n  \"transformers_version\": \"%s\",\n  \"use_cache\": true,\n",
           tdt, c->v3 ? "4.33.1" : "4.39.3");
    sb_add(&b, "  \"v_head_dim\": %ld,\n  \"vocab_size\": %ld\n}\n", c->vdim, c->vocab);
    write_text(dir, "config.json", &b);
    free(b.p);
}

/* ============================== tensor plan ============================== */

/* How a tensor's values are drawn. */
enum { K_LINEAR, K_EMBED, K_NORM, K_GATE, K_BIAS, K_HEAD };

typedef struct {
    char *name;            /* HF tensor name                                          */
    const char *seed_name; /* name keying the PRNG stream (MTP copies use the main's) */
    int kind;              /* K_*                                                     */
    int dtype;             /* DT_* in the main output                                 */
    int quant;             /* 1: F8_E4M3 followed by <name>_scale_inv                 */
    size_t rows, cols;     /* [rows, cols]; cols == 0 for 1-D [rows]                  */
    float std;             /* scale of the normal draw (K_LINEAR/EMBED/GATE/HEAD)     */
} lt_t;

typedef struct { lt_t *t; size_t n, cap; const cfg_t *c; } plan_t;

/* Append a tensor. quantizable: attention or MLP/expert projection (fp8 in fp8 mode). */
static void add(plan_t *p, char *name, int kind, size_t rows, size_t cols, int quantizable) {
    if (p->n == p->cap) {
        p->cap = p->cap ? 2 * p->cap : 1024;
        p->t = realloc(p->t, p->cap * sizeof *p->t);
        if (!p->t) die("out of memory");
    }
    const cfg_t *c = p->c;
    lt_t *t = &p->t[p->n++];
    *t = (lt_t){.name = name, .seed_name = name, .kind = kind, .rows = rows, .cols = cols};
    t->quant = c->dtype == DT_F8 && quantizable;
    t->dtype = kind == K_BIAS ? DT_F32 : t->quant ? DT_F8 : c->dtype == DT_F8 ? DT_BF16 : c->dtype;
    double in = (double)(cols ? cols : 1);
    t->std = kind == K_EMBED ? 1.0f
           : kind == K_HEAD  ? (float)(2.0 / sqrt(in))    /* logits ~ N(0, 4): clear top-1 margins   */
           : kind == K_GATE  ? (float)((strcmp(c->scoring, "sigmoid") ? 2.0 : 1.5) / sqrt(in))
                             : (float)(1.0 / sqrt(in));   /* unit-variance outputs for unit inputs */
}

/* self_attn.* of one layer (MLA). */
static void add_attn(plan_t *p, long L) {
    const cfg_t *c = p->c;
    size_t D = (size_t)c->hidden, H = (size_t)c->heads, qk = (size_t)(c->nope + c->rope);
    if (c->q_lora > 0) {
        add(p, strf("model.layers.%ld.self_attn.q_a_proj.weight", L), K_LINEAR, (size_t)c->q_lora, D, 1);
        add(p, strf("model.layers.%ld.self_attn.q_a_layernorm.weight", L), K_NORM, (size_t)c->q_lora, 0, 0);
        add(p, strf("model.layers.%ld.self_attn.q_b_proj.weight", L), K_LINEAR, H * qk, (size_t)c->q_lora, 1);
    } else {
        add(p, strf("model.layers.%ld.self_attn.q_proj.weight", L), K_LINEAR, H * qk, D, 1);
    }
    add(p, strf("model.layers.%ld.self_attn.kv_a_proj_with_mqa.weight", L), K_LINEAR, (size_t)(c->kv_lora + c->rope), D, 1);
    add(p, strf("model.layers.%ld.self_attn.kv_a_layernorm.weight", L), K_NORM, (size_t)c->kv_lora, 0, 0);
    add(p, strf("model.layers.%ld.self_attn.kv_b_proj.weight", L), K_LINEAR, H * (size_t)(c->nope + c->vdim), (size_t)c->kv_lora, 1);
    add(p, strf("model.layers.%ld.self_attn.o_proj.weight", L), K_LINEAR, D, H * (size_t)c->vdim, 1);
}

/* gate/up/down of one MLP whose weight names start with pre. */
static void add_mlp(plan_t *p, const char *pre, size_t D, size_t I) {
    add(p, strf("%s.gate_proj.weight", pre), K_LINEAR, I, D, 1);
    add(p, strf("%s.up_proj.weight", pre), K_LINEAR, I, D, 1);
    add(p, strf("%s.down_proj.weight", pre), K_LINEAR, D, I, 1);
}

/* One decoder layer: attention, dense MLP or MoE, the two norms. */
static void add_layer(plan_t *p, long L, int moe) {
    const cfg_t *c = p->c;
    size_t D = (size_t)c->hidden;
    char pre[96];
    add_attn(p, L);
    if (!moe) {
        snprintf(pre, sizeof pre, "model.layers.%ld.mlp", L);
        add_mlp(p, pre, D, (size_t)c->inter);
    } else {
        add(p, strf("model.layers.%ld.mlp.gate.weight", L), K_GATE, (size_t)c->experts, D, 0);
        if (!strcmp(c->topk_method, "noaux_tc"))
            add(p, strf("model.layers.%ld.mlp.gate.e_score_correction_bias", L), K_BIAS, (size_t)c->experts, 0, 0);
        for (long e = 0; e < c->experts; e++) {
            snprintf(pre, sizeof pre, "model.layers.%ld.mlp.experts.%ld", L, e);
            add_mlp(p, pre, D, (size_t)c->moe_inter);
        }
        if (c->shared > 0) {
            snprintf(pre, sizeof pre, "model.layers.%ld.mlp.shared_experts", L);
            add_mlp(p, pre, D, (size_t)(c->moe_inter * c->shared));
        }
    }
    add(p, strf("model.layers.%ld.input_layernorm.weight", L), K_NORM, D, 0, 0);
    add(p, strf("model.layers.%ld.post_attention_layernorm.weight", L), K_NORM, D, 0, 0);
}

/* All tensors in the order of the released files. */
static plan_t build_plan(const cfg_t *c) {
    plan_t p = {.c = c};
    size_t D = (size_t)c->hidden, V = (size_t)c->vocab;
    add(&p, strf("model.embed_tokens.weight"), K_EMBED, V, D, 0);
    for (long L = 0; L < c->layers; L++) add_layer(&p, L, L >= c->dense);
    for (long L = c->layers; L < c->layers + c->mtp; L++) {  /* MTP: extra MoE layer + its head */
        add(&p, strf("model.layers.%ld.embed_tokens.weight", L), K_EMBED, V, D, 0);
        if (c->mtp_copy) p.t[p.n - 1].seed_name = "model.embed_tokens.weight";
        add(&p, strf("model.layers.%ld.enorm.weight", L), K_NORM, D, 0, 0);
        add(&p, strf("model.layers.%ld.hnorm.weight", L), K_NORM, D, 0, 0);
        add(&p, strf("model.layers.%ld.eh_proj.weight", L), K_LINEAR, D, 2 * D, 0);
        add_layer(&p, L, L >= c->dense);
        add(&p, strf("model.layers.%ld.shared_head.norm.weight", L), K_NORM, D, 0, 0);
        add(&p, strf("model.layers.%ld.shared_head.head.weight", L), K_HEAD, V, D, 0);
        if (c->mtp_copy) p.t[p.n - 1].seed_name = "lm_head.weight";
    }
    add(&p, strf("model.norm.weight"), K_NORM, D, 0, 0);
    add(&p, strf("lm_head.weight"), K_HEAD, V, D, 0);
    return p;
}

/* ============================ output files =============================== */

typedef struct {
    char *name;          /* tensor name                          */
    int dtype;           /* DT_*                                 */
    size_t shape[2];     /* dims; shape[1] == 0 for a 1-D tensor */
    size_t nbytes, off;  /* size; offset in its shard's data     */
    int shard, layer;    /* shard index; model.layers.N or -1    */
} entry_t;

typedef struct {
    const char *dir;     /* output directory                            */
    entry_t *e;          /* all tensors, in file order                  */
    int n, nshards;      /* tensor count, shard count                   */
    int *first;          /* first entry of each shard; first[nshards]=n */
    FILE *fp;            /* open shard                                  */
    char *path;          /* its path                                    */
    int shard, cur;      /* open shard index, current entry (-1: none)  */
    size_t left, bytes;  /* bytes due: current entry; all entries       */
} out_t;

/* File name of shard s of ns, written into buf (64 bytes). */
static char *shard_name(char *buf, int s, int ns) {
    if (ns == 1) snprintf(buf, 64, "model.safetensors");
    else snprintf(buf, 64, "model-%05d-of-%05d.safetensors", s + 1, ns);
    return buf;
}

/* Split entries into ns contiguous runs of about equal bytes, every run non-empty,
 * with (whenever possible) a boundary inside a decoder layer so that a reader
 * must consult the index to find all of one layer's tensors. */
static void plan_shards(out_t *o) {
    int n = o->n, ns = o->nshards, *b = xmalloc(((size_t)ns + 1) * sizeof *b);
    size_t total = 0, cum = 0;
    for (int i = 0; i < n; i++) total += o->e[i].nbytes;
    o->bytes = total;
    b[0] = 0; b[ns] = n;
    for (int i = 1, j = 0; i < ns; i++) {
        double target = (double)total * i / ns;
        while (j < n && (double)cum + 0.5 * (double)o->e[j].nbytes < target) cum += o->e[j++].nbytes;
        if (j > 0 && j + 1 < n && o->e[j].layer >= 0 && o->e[j].layer != o->e[j - 1].layer)
            cum += o->e[j++].nbytes; /* at a layer's first tensor: move one on to split the layer */
        b[i] = j;
    }
    for (int i = 1; i < ns; i++) if (b[i] <= b[i - 1]) b[i] = b[i - 1] + 1;
    for (int i = ns - 1; i >= 1; i--) if (b[i] >= b[i + 1]) b[i] = b[i + 1] - 1;
    int split = 0;
    for (int i = 1; i < ns; i++) split |= o->e[b[i]].layer >= 0 && o->e[b[i]].layer == o->e[b[i] - 1].layer;
    if (ns > 1 && !split) { /* fall back: cut the last decoder layer in the middle */
        int hi = n, lo;
        while (hi > 0 && o->e[hi - 1].layer < 0) hi--;
        for (lo = hi; lo > 0 && o->e[lo - 1].layer == o->e[hi - 1].layer; lo--) {}
        if ((lo + hi) / 2 > b[ns - 2] && hi - lo >= 2) b[ns - 1] = (lo + hi) / 2;
    }
    for (int s = 0; s < ns; s++) {
        size_t off = 0;
        for (int i = b[s]; i < b[s + 1]; i++) { o->e[i].shard = s; o->e[i].off = off; off += o->e[i].nbytes; }
    }
    o->first = b;
}

/* Entries of one output: main (dtypes of the plan, scale_inv after each fp8 weight) or twin (all F32). */
static out_t make_out(const plan_t *p, const char *dir, int twin, int ns) {
    out_t o = {.dir = dir, .nshards = ns, .shard = -1, .cur = -1};
    o.e = xmalloc(2 * p->n * sizeof *o.e);
    for (size_t i = 0; i < p->n; i++) {
        const lt_t *t = &p->t[i];
        int layer = -1;
        sscanf(t->name, "model.layers.%d.", &layer);
        entry_t *e = &o.e[o.n++];
        *e = (entry_t){.name = t->name, .dtype = twin ? DT_F32 : t->dtype,
                       .shape = {t->rows, t->cols}, .layer = layer};
        e->nbytes = t->rows * (t->cols ? t->cols : 1) * DT_SIZE[e->dtype];
        if (t->quant && !twin) {
            entry_t *s = &o.e[o.n++];
            *s = (entry_t){.name = strf("%s_scale_inv", t->name), .dtype = DT_F32,
                           .shape = {(t->rows + 127) / 128, (t->cols + 127) / 128}, .layer = layer};
            s->nbytes = s->shape[0] * s->shape[1] * 4;
        }
    }
    if (ns > o.n) die("--shards %d exceeds the number of tensors (%d)", ns, o.n);
    plan_shards(&o);
    return o;
}

/* Remove weight files a previous run may have left in dir (our names only). */
static void clean_dir(const char *dir) {
    DIR *d = opendir(dir);
    struct dirent *de;
    int a, b;
    char tail[32];
    if (!d) die("cannot open directory %s: %s", dir, strerror(errno));
    while ((de = readdir(d))) {
        const char *nm = de->d_name;
        int ours = !strcmp(nm, "model.safetensors") || !strcmp(nm, "model.safetensors.index.json") ||
                   (sscanf(nm, "model-%5d-of-%5d%31s", &a, &b, tail) == 3 && !strcmp(tail, ".safetensors"));
        if (!ours) continue;
        char *path = strf("%s/%s", dir, nm);
        if (remove(path) != 0) die("cannot remove stale %s: %s", path, strerror(errno));
        free(path);
    }
    closedir(d);
}

static void close_shard(out_t *o) {
    if (!o->fp) return;
    if (fclose(o->fp) != 0) die("cannot write %s: %s", o->path, strerror(errno));
    o->fp = NULL;
    free(o->path);
}

/* Open shard s and write its header: u64 length, JSON padded with spaces to a multiple of 8. */
static void open_shard(out_t *o, int s) {
    char nm[64];
    close_shard(o);
    o->path = strf("%s/%s", o->dir, shard_name(nm, s, o->nshards));
    o->fp = fopen(o->path, "wb");
    if (!o->fp) die("cannot create %s: %s", o->path, strerror(errno));
    setvbuf(o->fp, NULL, _IOFBF, 1 << 22);
    sb_t h = {0};
    sb_add(&h, "{\"__metadata__\":{\"format\":\"pt\"}");
    for (int i = o->first[s]; i < o->first[s + 1]; i++) {
        const entry_t *e = &o->e[i];
        sb_add(&h, ",\"%s\":{\"dtype\":\"%s\",\"shape\":[%zu", e->name, DT_NAME[e->dtype], e->shape[0]);
        if (e->shape[1]) sb_add(&h, ",%zu", e->shape[1]);
        sb_add(&h, "],\"data_offsets\":[%zu,%zu]}", e->off, e->off + e->nbytes);
    }
    sb_add(&h, "}");
    while (h.n % 8) sb_add(&h, " ");
    uint8_t len[8];
    for (int k = 0; k < 8; k++) len[k] = (uint8_t)((uint64_t)h.n >> (8 * k));
    if (fwrite(len, 1, 8, o->fp) != 8 || fwrite(h.p, 1, h.n, o->fp) != h.n)
        die("cannot write %s: %s", o->path, strerror(errno));
    free(h.p);
    o->shard = s;
}

/* Start the next tensor, opening its shard when it lives in a new one. */
static void out_next(out_t *o) {
    if (o->cur >= 0 && o->left) die("internal: %s short by %zu bytes", o->e[o->cur].name, o->left);
    o->cur++;
    if (o->e[o->cur].shard != o->shard) open_shard(o, o->e[o->cur].shard);
    o->left = o->e[o->cur].nbytes;
}

static void out_write(out_t *o, const void *p, size_t n) {
    if (n > o->left) die("internal: %s overflows by %zu bytes", o->e[o->cur].name, n - o->left);
    if (fwrite(p, 1, n, o->fp) != n) die("cannot write %s: %s", o->path, strerror(errno));
    o->left -= n;
}

/* Close the last shard; with several shards write model.safetensors.index.json. */
static void out_finish(out_t *o) {
    if (o->left || o->cur != o->n - 1) die("internal: output %s incomplete", o->dir);
    close_shard(o);
    if (o->nshards == 1) return;
    sb_t b = {0};
    sb_add(&b, "{\n  \"metadata\": {\n    \"total_size\": %zu\n  },\n  \"weight_map\": {\n", o->bytes);
    char nm[64];
    for (int i = 0; i < o->n; i++)
        sb_add(&b, "    \"%s\": \"%s\"%s\n", o->e[i].name, shard_name(nm, o->e[i].shard, o->nshards),
               i + 1 < o->n ? "," : "");
    sb_add(&b, "  }\n}\n");
    write_text(o->dir, "model.safetensors.index.json", &b);
    free(b.p);
}

/* ============================== generation =============================== */

typedef struct {
    float *f;          /* 128 rows of values                  */
    uint8_t *enc;      /* the same rows encoded               */
    float *tw;         /* the same rows dequantized (twin)    */
    size_t done, total;/* bytes written / to write            */
    double t0, last;   /* progress clock                      */
    int show, tty;     /* print progress; stderr is a tty     */
} gen_t;

static void progress(gen_t *g, size_t bytes, int final) {
    g->done += bytes;
    if (!g->show) return;
    double t = now_s();
    if (!final && t - g->last < (g->tty ? 0.5 : 10.0)) return;
    g->last = t;
    double rate = (double)g->done / (t - g->t0 + 1e-9);
    fprintf(stderr, "%sgen_ckpt: %.2f / %.2f GB (%3.0f%%) %.0f MB/s, eta %.0f s%s", g->tty ? "\r" : "",
            g->done / 1e9, g->total / 1e9, 100.0 * g->done / (g->total ? g->total : 1), rate / 1e6,
            (double)(g->total - g->done) / (rate + 1), g->tty && !final ? "   " : "\n");
}

/* Draw n values of tensor t, continuing its stream. */
static void fill(float *f, size_t n, const lt_t *t, uint64_t *st) {
    const float k = t->std * IH_UNIT;
    if (t->kind == K_NORM) for (size_t i = 0; i < n; i++) f[i] = 1.0f + (0.1f * IH_UNIT) * rnd_ih(st);
    else if (t->kind == K_BIAS) for (size_t i = 0; i < n; i++) f[i] = 0.1f * rnd_uniform(st);
    else for (size_t i = 0; i < n; i++) f[i] = k * rnd_ih(st);
}

/* max |p[i]|, four independent chains for speed. */
static float absmax(const float *p, size_t n) {
    float m[4] = {0, 0, 0, 0};
    size_t i = 0;
    for (; i + 4 <= n; i += 4)
        for (int k = 0; k < 4; k++) m[k] = fabsf(p[i + k]) > m[k] ? fabsf(p[i + k]) : m[k];
    for (; i < n; i++) m[0] = fabsf(p[i]) > m[0] ? fabsf(p[i]) : m[0];
    m[0] = m[0] > m[1] ? m[0] : m[1];
    m[2] = m[2] > m[3] ? m[2] : m[3];
    return m[0] > m[2] ? m[0] : m[2];
}

/* Generate one tensor 128 rows at a time into the main output (and the twin), then,
 * for fp8, its weight_scale_inv: scale = amax/448 per 128x128 block, edges partial. */
static void gen_tensor(const lt_t *t, uint64_t seed, out_t *om, out_t *ot, gen_t *g) {
    size_t rows = t->cols ? t->rows : 1, cols = t->cols ? t->cols : t->rows;
    size_t nbc = (cols + 127) / 128, nbr = (rows + 127) / 128;
    float *scales = t->quant ? xmalloc(nbr * nbc * sizeof(float)) : NULL;
    uint64_t st = tensor_stream(seed, t->seed_name);
    out_next(om);
    if (ot) out_next(ot);
    for (size_t r0 = 0; r0 < rows; r0 += 128) {
        size_t rb = rows - r0 < 128 ? rows - r0 : 128, n = rb * cols;
        float *f = g->f, *tw = g->tw;
        fill(f, n, t, &st);
        if (t->dtype == DT_F32) {
            memcpy(g->enc, f, n * 4);
            memcpy(tw, f, n * 4);
        } else if (t->dtype == DT_BF16) {
            uint16_t *h = (uint16_t *)(void *)g->enc;
            for (size_t i = 0; i < n; i++) h[i] = to_bf16(f[i]);
            for (size_t i = 0; ot && i < n; i++) tw[i] = u2f((uint32_t)h[i] << 16);
        } else if (t->dtype == DT_F16) {
            uint16_t *h = (uint16_t *)(void *)g->enc;
            for (size_t i = 0; i < n; i++) h[i] = to_f16(f[i]);
            for (size_t i = 0; ot && i < n; i++) tw[i] = F16_VAL[h[i]];
        } else {
            for (size_t cb = 0; cb < nbc; cb++) {
                size_t c0 = cb * 128, c1 = c0 + 128 < cols ? c0 + 128 : cols;
                float amax = 0.0f;
                for (size_t r = 0; r < rb; r++) {
                    float a = absmax(f + r * cols + c0, c1 - c0);
                    amax = a > amax ? a : amax;
                }
                float s = amax > 0.0f ? amax / 448.0f : 1.0f, inv = amax > 0.0f ? 448.0f / amax : 1.0f;
                scales[(r0 / 128) * nbc + cb] = s;
                for (size_t r = 0; r < rb; r++)
                    for (size_t j = c0; j < c1; j++) g->enc[r * cols + j] = to_fp8(f[r * cols + j] * inv);
                for (size_t r = 0; ot && r < rb; r++) /* exactly what a reader dequantizes */
                    for (size_t j = c0; j < c1; j++) tw[r * cols + j] = FP8_VAL[g->enc[r * cols + j]] * s;
            }
        }
        out_write(om, g->enc, n * DT_SIZE[t->dtype]);
        if (ot) out_write(ot, tw, n * 4);
        progress(g, n * DT_SIZE[t->dtype] + (ot ? n * 4 : 0), 0);
    }
    if (t->quant) {
        out_next(om);
        out_write(om, scales, nbr * nbc * sizeof(float));
        progress(g, nbr * nbc * sizeof(float), 0);
        free(scales);
    }
}

/* ================================= main ================================== */

/* Frees the plan and the outputs (scale_inv entries own their names): a LeakSanitizer-clean exit. */
static void free_all(plan_t *p, out_t *o, out_t *tw) {
    out_t *outs[2] = {o, tw};
    for (int k = 0; k < 2; k++) {
        for (int i = 0; i < outs[k]->n; i++)
            if (strstr(outs[k]->e[i].name, "_scale_inv")) free(outs[k]->e[i].name);
        free(outs[k]->e);
        free(outs[k]->first);
    }
    for (size_t i = 0; i < p->n; i++) free(p->t[i].name);
    free(p->t);
}

int main(int argc, char **argv) {
    const uint16_t one = 1;
    if (*(const uint8_t *)&one != 1) die("big-endian hosts are not supported");
    cfg_t c;
    parse_args(&c, argc, argv);
    validate(&c);
    build_tables();

    plan_t p = build_plan(&c);
    out_t om = make_out(&p, c.out, 0, (int)c.shards), ot = {0};
    if (c.twin) ot = make_out(&p, c.twin, 1, (int)c.shards);
    size_t params = 0, maxcols = 1;
    for (size_t i = 0; i < p.n; i++) {
        size_t cols = p.t[i].cols ? p.t[i].cols : p.t[i].rows;
        params += p.t[i].rows * (p.t[i].cols ? p.t[i].cols : 1);
        if (cols > maxcols) maxcols = cols;
    }

    make_dirs(c.out);
    if (c.dry_run) {
        write_config(&c, c.out, 0);
        printf("tensors %d params %zu bytes %zu shards %ld\n", om.n, params, om.bytes, c.shards);
        free_all(&p, &om, &ot);
        return 0;
    }
    clean_dir(c.out);
    if (c.twin) { make_dirs(c.twin); clean_dir(c.twin); }

    gen_t g = {.total = om.bytes + ot.bytes, .t0 = now_s(), .tty = isatty(2)};
    g.last = g.t0;
    g.show = g.total > (size_t)1 << 30; /* progress line for models above 1 GiB */
    g.f = xmalloc(128 * maxcols * sizeof(float));
    g.enc = xmalloc(128 * maxcols * sizeof(float));
    g.tw = xmalloc(128 * maxcols * sizeof(float));
    for (size_t i = 0; i < p.n; i++) gen_tensor(&p.t[i], (uint64_t)c.seed, &om, c.twin ? &ot : NULL, &g);
    progress(&g, 0, 1);
    out_finish(&om);
    write_config(&c, c.out, 0);
    if (c.twin) { out_finish(&ot); write_config(&c, c.twin, 1); }
    fprintf(stderr, "gen_ckpt: %s: %d tensors, %.3f B params, %.1f MB in %ld file(s)%s (%.1f s)\n", c.out, om.n,
            params / 1e9, om.bytes / 1e6, c.shards, c.twin ? ", plus F32 twin" : "", now_s() - g.t0);
    free(g.f);
    free(g.enc);
    free(g.tw);
    free_all(&p, &om, &ot);
    return 0;
}
