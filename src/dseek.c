/* dseek.c - the whole dseek inference engine for DeepSeek-V2 / V3 / R1 checkpoints.
 *
 * Read top to bottom:
 *   1. utilities (errors, number formats)
 *   2. config.json
 *   3. safetensors files and the tensor table
 *   4. binding weights to the model structs
 *   5. kernels (matmul, norms, RoPE)
 *   6. the forward pass: MLA attention, MoE routing, experts
 *   7. sessions
 *   8. sampling
 *
 * Shapes: T tokens in a forward step, D hidden size, H heads, R kv_lora_rank,
 * nope / rope / v the per-head dims, E routed experts, k experts per token.
 * The maths follows ../shared/SPEC.md; comments say where a choice comes from. */
#define _GNU_SOURCE
#include "dseek.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
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

static void seterr(char *err, size_t errlen, const char *fmt, ...) {
    if (!err || !errlen) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
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
        }
    }

    /* quantization_config: only DeepSeek's fp8 block format */
    c->fp8_block_rows = c->fp8_block_cols = 128;
    const cJSON *qc = cJSON_GetObjectItemCaseSensitive(root, "quantization_config");
    if (!rc && qc && !cJSON_IsNull(qc)) {
        const cJSON *qm = cJSON_GetObjectItemCaseSensitive(qc, "quant_method");
        const cJSON *bs = cJSON_GetObjectItemCaseSensitive(qc, "weight_block_size");
        const cJSON *fmt = cJSON_GetObjectItemCaseSensitive(qc, "fmt");
        if (!cJSON_IsString(qm) || strcmp(qm->valuestring, "fp8")) {
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

enum { DT_F32, DT_BF16, DT_F16, DT_F8, DT_OTHER };

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
    uint8_t *map;             /* whole file, read-only */
    size_t size;
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
    static const char *const n[] = {"F32", "BF16", "F16", "F8_E4M3", "other"};
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
    uint8_t *map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (map == MAP_FAILED) { seterr(err, errlen, "%s: mmap failed: %s", path, strerror(errno)); return DSEEK_EIO; }
    mf->path = strdup(path);
    mf->map = map;
    mf->size = size;
    if (!mf->path) return DSEEK_ENOMEM;

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
    Span *spans = xcalloc((size_t)n, sizeof *spans);
    if (!spans) { cJSON_Delete(h); return DSEEK_ENOMEM; }
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
    if (!rc) { /* no two tensors may share bytes */
        qsort(spans, (size_t)ns, sizeof *spans, span_cmp);
        for (int i = 1; i < ns; i++)
            if (spans[i].b < spans[i - 1].e && spans[i].e > spans[i].b && spans[i - 1].e > spans[i - 1].b) {
                seterr(err, errlen, "%s: %s: data_offsets overlap those of %s", path, spans[i].name, spans[i - 1].name);
                rc = DSEEK_EFORMAT;
                break;
            }
    }
    free(spans);
    cJSON_Delete(h);
    return rc;
}

/* ============================================================================
 * 4. Weights: the model structs and binding tensors to them
 * ========================================================================== */

/* A weight matrix [rows = out, cols = in] in its stored dtype. */
typedef struct {
    const uint8_t *data;      /* rows*cols elements, row-major, in the mmap (or an aligned copy) */
    const float *scale;       /* F8 only: scale_inv [ceil(rows/br), ceil(cols/bc)] */
    size_t rows, cols;
    int dtype;                /* DT_F32 / DT_BF16 / DT_F16 / DT_F8 */
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
    void **owned;             /* small float32 copies made at load (norms, router) */
    size_t n_owned, cap_owned;
    size_t max_in;            /* largest input dim of any matmul */
    size_t max_inter;         /* largest MLP width */
};

static void *model_own(dseek_model *m, size_t bytes) {
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

/* Binds a 2-D weight. F8 weights also bind <name>_scale_inv. */
static int bind_matrix(dseek_model *m, Tensor *t, const char *name, size_t rows, size_t cols, char *err, size_t errlen) {
    TensorEntry *e;
    int rc = find_tensor(m, name, 1 << DT_F32 | 1 << DT_BF16 | 1 << DT_F16 | 1 << DT_F8, rows, cols, &e, err, errlen);
    if (rc) return rc;
    memset(t, 0, sizeof *t);
    t->rows = rows;
    t->cols = cols;
    t->dtype = e->dtype;
    t->data = e->data;
    size_t align = e->dtype == DT_F32 ? 4 : e->dtype == DT_F8 ? 1 : 2;
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
    if (cols > m->max_in) m->max_in = cols;
    m->info.n_params += rows * cols;
    m->info.weight_bytes += e->nbytes;
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
    default: DS_ASSERT(0);
    }
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

void dseek_model_free(dseek_model *m) {
    if (!m) return;
    if (m->layers)
        for (int i = 0; i < m->c.num_hidden_layers + m->info.n_mtp; i++) free(m->layers[i].experts);
    free(m->layers);
    for (size_t i = 0; i < m->n_owned; i++) free(m->owned[i]);
    free(m->owned);
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
        return st_load(path, "model.safetensors", 0, &m->files[0], &m->tt, NULL, err, errlen);
    }
    cJSON *idx = cJSON_ParseWithLength(text, len);
    free(text);
    const cJSON *wm = cJSON_GetObjectItemCaseSensitive(idx, "weight_map");
    int rc = 0;
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
    for (int i = 0; i < nf && !rc; i++) {
        char fp[4096];
        snprintf(fp, sizeof fp, "%s/%s", dir, names[i]);
        m->n_files = i + 1;
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

int dseek_model_open(const char *dir, dseek_model **out, char *err, size_t errlen) {
    *out = NULL;
    fp8_table_init();
    dseek_model *m = calloc(1, sizeof *m);
    if (!m || !(m->dir = strdup(dir))) {
        free(m);
        seterr(err, errlen, "out of memory");
        return DSEEK_ENOMEM;
    }
    int rc = config_parse(dir, &m->c, err, errlen);
    if (!rc) rc = load_files(m, dir, err, errlen);
    const Config *c = &m->c;
    if (rc) goto fail;
    size_t V = (size_t)c->vocab_size, D = (size_t)c->hidden_size;

    m->info.n_mtp = c->num_nextn_predict_layers;
    m->layers = xcalloc((size_t)(c->num_hidden_layers + m->info.n_mtp), sizeof(Layer));
    m->inv_freq = xcalloc((size_t)c->qk_rope_head_dim / 2, sizeof(float));
    if (!m->layers || !m->inv_freq) { rc = DSEEK_ENOMEM; goto fail; }
    if ((rc = bind_matrix(m, &m->embed, "model.embed_tokens.weight", V, D, err, errlen))) goto fail;
    for (int l = 0; l < c->num_hidden_layers + m->info.n_mtp && !rc; l++)
        rc = bind_layer(m, l, l >= c->num_hidden_layers, err, errlen);
    if (rc) goto fail;
    if ((rc = bind_vector(m, &m->final_norm, "model.norm.weight", D, err, errlen))) goto fail;
    if (c->tie_word_embeddings && !table_get(&m->tt, "lm_head.weight")) m->lm_head = m->embed;
    else if ((rc = bind_matrix(m, &m->lm_head, "lm_head.weight", V, D, err, errlen))) goto fail;
    rope_setup(m);

    m->info.vocab_size = c->vocab_size;
    m->info.hidden_size = c->hidden_size;
    m->info.n_layers = c->num_hidden_layers;
    m->info.bos_token_id = c->bos_token_id;
    m->info.eos_token_id = c->eos_token_id;
    m->info.max_position = c->max_position_embeddings;
    m->info.cache_bytes_per_token = (size_t)(c->num_hidden_layers + m->info.n_mtp) *
                                    (size_t)(c->kv_lora_rank + c->qk_rope_head_dim) * sizeof(float);
    if (2 * D > m->max_in) m->max_in = 2 * D;
    *out = m;
    return 0;
fail:
    if (rc == DSEEK_ENOMEM) seterr(err, errlen, "%s: out of memory while loading", dir);
    dseek_model_free(m);
    return rc;
}

const dseek_info *dseek_model_info(const dseek_model *m) { return &m->info; }

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

void dseek_set_threads(int n) {
#ifdef _OPENMP
    if (n <= 0) n = omp_get_num_procs();
    omp_set_num_threads(n);
#endif
    if (n > 0) openblas_set_num_threads(n);
}

/* Scratch the matmul needs, owned by the session. */
typedef struct {
    float *rowbuf;            /* [threads, max_in] one converted weight row per thread */
    size_t rowbuf_stride;
    float *wbuf;              /* [wbuf_len] a block of converted weight rows for sgemm */
    size_t wbuf_len;
} Scratch;

/* y[T, rows] = x[T, cols] W^T. Few tokens: each thread converts one weight row at a time
 * and dots it with every token (the weight is read once). Many tokens: blocks of rows are
 * converted to float32 and multiplied with OpenBLAS sgemm. */
#define SGEMM_MIN_TOKENS 16
static void matmul(const Scratch *sc, float *y, const float *x, const Tensor *w, int T) {
    size_t rows = w->rows, cols = w->cols;
    if (T < SGEMM_MIN_TOKENS) {
#pragma omp parallel for schedule(static)
        for (size_t r = 0; r < rows; r++) {
            float *row = sc->rowbuf + (size_t)thread_id() * sc->rowbuf_stride;
            const float *wr = row;
            if (w->dtype == DT_F32) wr = (const float *)w->data + r * cols;
            else tensor_row(w, r, row);
            for (int t = 0; t < T; t++) {
                const float *xt = x + (size_t)t * cols;
                float acc = 0;
                for (size_t i = 0; i < cols; i++) acc += wr[i] * xt[i];
                y[(size_t)t * rows + r] = acc;
            }
        }
        return;
    }
    if (w->dtype == DT_F32) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, (int)rows, (int)cols, 1.0f, x, (int)cols,
                    (const float *)w->data, (int)cols, 0.0f, y, (int)rows);
        return;
    }
    size_t block = sc->wbuf_len / cols;
    if (block > rows) block = rows;
    DS_ASSERT(block >= 1);
    for (size_t r0 = 0; r0 < rows; r0 += block) {
        size_t nr = r0 + block <= rows ? block : rows - r0;
#pragma omp parallel for schedule(static)
        for (size_t r = 0; r < nr; r++) tensor_row(w, r0 + r, sc->wbuf + r * cols);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, (int)nr, (int)cols, 1.0f, x, (int)cols, sc->wbuf,
                    (int)cols, 0.0f, y + r0, (int)rows);
    }
}

/* out[n] = x[n] / sqrt(mean(x^2) + eps) * w[n] */
static void rmsnorm(float *out, const float *x, const float *w, size_t n, float eps) {
    double ss = 0;
    for (size_t i = 0; i < n; i++) ss += (double)x[i] * x[i];
    float inv = (float)(1.0 / sqrt(ss / (double)n + eps));
    for (size_t i = 0; i < n; i++) out[i] = x[i] * inv * w[i];
}

/* Rotates adjacent pairs (2i, 2i+1) of v[d] by pos * inv_freq[i] (SPEC: interleaved RoPE). */
static void rope_apply(float *v, int d, int pos, const float *inv_freq, float mscale) {
    for (int i = 0; i < d / 2; i++) {
        float ang = (float)pos * inv_freq[i];
        float c = (float)cos((double)ang) * mscale, s = (float)sin((double)ang) * mscale;
        float a = v[2 * i], b = v[2 * i + 1];
        v[2 * i] = a * c - b * s;
        v[2 * i + 1] = a * s + b * c;
    }
}

static float silu(float x) { return x / (1.0f + expf(-x)); }

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
    float *att;               /* per thread: q_lat+q_pe [R+rope], o_lat [R], scores [n_ctx] */
    size_t att_stride;
    float *gate, *up;         /* MLP activations [B, max_inter] */
    float *rlogits;           /* router scores [B, E] */
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
    float *cache;             /* latent cache [L + n_mtp][n_ctx][R + rope] */
    char err[512];
};

/* MLP: y[T, D] = down(silu(gate(x)) * up(x)) */
static void mlp_forward(dseek_session *s, const MLP *f, const float *x, float *y, int T) {
    size_t I = f->gate.rows;
    matmul(&s->sc, s->gate, x, &f->gate, T);
    matmul(&s->sc, s->up, x, &f->up, T);
    for (size_t i = 0; i < (size_t)T * I; i++) s->gate[i] = silu(s->gate[i]) * s->up[i];
    matmul(&s->sc, y, s->gate, &f->down, T);
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
    const size_t qd = nope + rope, C = R + rope;
    float *cache = s->cache + (size_t)li * (size_t)s->n_ctx * C;

    /* queries: q_proj, or q_b(RMSNorm(q_a(x))) */
    if (c->q_lora_rank) {
        size_t ql = (size_t)c->q_lora_rank;
        matmul(&s->sc, s->qa, xn, &ly->q_a, T);
        for (int t = 0; t < T; t++) rmsnorm(s->qa + t * ql, s->qa + t * ql, ly->q_a_norm, ql, c->rms_norm_eps);
        matmul(&s->sc, s->q, s->qa, &ly->q_b, T);
    } else matmul(&s->sc, s->q, xn, &ly->q_proj, T);

    /* latent c = RMSNorm(kv[:R]) and rope key RoPE(kv[R:]) go to the cache */
    matmul(&s->sc, s->kv, xn, &ly->kv_a, T);
    for (int t = 0; t < T; t++) {
        float *row = cache + (size_t)(pos + t) * C;
        rmsnorm(row, s->kv + t * C, ly->kv_a_norm, R, c->rms_norm_eps);
        memcpy(row + R, s->kv + t * C + R, rope * sizeof(float));
        rope_apply(row + R, (int)rope, pos + t, m->inv_freq, m->rope_mscale);
    }

    /* kv_b_proj in float32 for this layer: W_UK[h] rows h*(nope+v).., W_UV[h] the next v */
#pragma omp parallel for schedule(static)
    for (size_t r = 0; r < H * (nope + vd); r++) tensor_row(&ly->kv_b, r, s->kvb + r * R);

    const float scale = m->softmax_scale;
#pragma omp parallel for schedule(dynamic, 1)
    for (size_t th = 0; th < (size_t)T * H; th++) {
        size_t t = th / H, h = th % H;
        int n = pos + (int)t + 1; /* causal: positions 0..pos+t */
        float *qc = s->att + (size_t)thread_id() * s->att_stride; /* [R + rope]: q_lat then q_pe */
        float *olat = qc + C, *sc = olat + R;
        const float *qh = s->q + t * H * qd + h * qd;
        /* absorbed query: q_lat = W_UK[h]^T q_nope */
        memset(qc, 0, R * sizeof(float));
        const float *wuk = s->kvb + h * (nope + vd) * R;
        for (size_t i = 0; i < nope; i++) {
            float a = qh[i];
            const float *wr = wuk + i * R;
            for (size_t r = 0; r < R; r++) qc[r] += a * wr[r];
        }
        memcpy(qc + R, qh + nope, rope * sizeof(float));
        rope_apply(qc + R, (int)rope, pos + (int)t, m->inv_freq, m->rope_mscale);
        /* scores against the cache, softmax */
        float mx = -INFINITY;
        for (int j = 0; j < n; j++) {
            const float *cj = cache + (size_t)j * C;
            float a = 0;
            for (size_t r = 0; r < C; r++) a += qc[r] * cj[r];
            sc[j] = a * scale;
            if (sc[j] > mx) mx = sc[j];
        }
        float sum = 0;
        for (int j = 0; j < n; j++) { sc[j] = expf(sc[j] - mx); sum += sc[j]; }
        /* o_lat = sum_j p_j c_j, then out[h] = W_UV[h] o_lat */
        memset(olat, 0, R * sizeof(float));
        for (int j = 0; j < n; j++) {
            float p = sc[j] / sum;
            const float *cj = cache + (size_t)j * C;
            for (size_t r = 0; r < R; r++) olat[r] += p * cj[r];
        }
        const float *wuv = wuk + nope * R;
        float *o = s->heads + t * H * vd + h * vd;
        for (size_t k = 0; k < vd; k++) {
            float a = 0;
            for (size_t r = 0; r < R; r++) a += wuv[k * R + r] * olat[r];
            o[k] = a;
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

/* MoE block: y = sum_i w_i Expert_i(x) + Shared(x). Tokens are grouped by expert so that each
 * chosen expert's weights are read once for all the tokens that chose it. */
static void moe_forward(dseek_session *s, const Layer *ly, const float *xn, float *y, int T) {
    const Config *c = &s->m->c;
    const size_t D = (size_t)c->hidden_size, E = (size_t)c->n_routed_experts, k = (size_t)c->num_experts_per_tok;
    /* router logits in float32: gate.weight x */
    for (int t = 0; t < T; t++)
        for (size_t e = 0; e < E; e++) {
            const float *wr = ly->router + e * D, *xt = xn + t * D;
            float a = 0;
            for (size_t i = 0; i < D; i++) a += wr[i] * xt[i];
            s->rlogits[t * E + e] = a;
        }
    for (int t = 0; t < T; t++) route_token(c, s->rlogits + t * E, ly->router_bias, s->topk + t * k, s->topw + t * k);

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
static void layer_forward(dseek_session *s, int li, int T, int pos) {
    const dseek_model *m = s->m;
    const Layer *ly = &m->layers[li];
    const size_t D = (size_t)m->c.hidden_size;
    for (int t = 0; t < T; t++) rmsnorm(s->xn + t * D, s->x + t * D, ly->attn_norm, D, m->c.rms_norm_eps);
    mla_forward(s, li, s->xn, s->y, T, pos);
    for (size_t i = 0; i < (size_t)T * D; i++) s->x[i] += s->y[i];
    for (int t = 0; t < T; t++) rmsnorm(s->xn + t * D, s->x + t * D, ly->ffn_norm, D, m->c.rms_norm_eps);
    if (ly->is_moe) moe_forward(s, ly, s->xn, s->y, T);
    else mlp_forward(s, &ly->mlp, s->xn, s->y, T);
    for (size_t i = 0; i < (size_t)T * D; i++) s->x[i] += s->y[i];
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
    if (all_rows) matmul(&s->sc, logits, h, &m->lm_head, T);
    else matmul(&s->sc, logits, h + (size_t)(T - 1) * D, &m->lm_head, 1);
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
    if (!logits) return;
    if (all_rows) matmul(&s->sc, logits, s->xn, &ly->head, T);
    else matmul(&s->sc, logits, s->xn + (size_t)(T - 1) * D, &ly->head, 1);
}

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
    }
    return 0;
}

/* ============================================================================
 * 7. Sessions
 * ========================================================================== */

void dseek_session_free(dseek_session *s) {
    if (!s) return;
    float **bufs[] = {&s->sc.rowbuf, &s->sc.wbuf, &s->x, &s->xn, &s->y, &s->qa, &s->q, &s->kv, &s->heads,
                      &s->kvb, &s->att, &s->gate, &s->up, &s->rlogits, &s->topw, &s->xe, &s->ye, &s->hid, &s->hchain, &s->xcat, &s->cache};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) free(*bufs[i]);
    free(s->topk);
    free(s->etok);
    free(s);
}

const char *dseek_session_error(const dseek_session *s) { return s->err; }
int dseek_session_ctx(const dseek_session *s) { return s->n_ctx; }

int dseek_session_new(const dseek_model *m, int n_ctx, int n_batch, dseek_session **out, char *err, size_t errlen) {
    *out = NULL;
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
    s->sc.wbuf_len = m->max_in > (4u << 20) ? m->max_in : (4u << 20);
    s->sc.wbuf = xcalloc(s->sc.wbuf_len, sizeof(float));
    s->x = xcalloc(B * D, sizeof(float));
    s->xn = xcalloc(B * D, sizeof(float));
    s->y = xcalloc(B * D, sizeof(float));
    s->qa = xcalloc(B * (size_t)(c->q_lora_rank ? c->q_lora_rank : 1), sizeof(float));
    s->q = xcalloc(B * H * qd, sizeof(float));
    s->kv = xcalloc(B * (R + rope), sizeof(float));
    s->heads = xcalloc(B * H * vd, sizeof(float));
    s->kvb = xcalloc(H * ((size_t)c->qk_nope_head_dim + vd) * R, sizeof(float));
    s->att_stride = (R + rope) + R + (size_t)n_ctx;
    s->att = xcalloc((size_t)s->nth * s->att_stride, sizeof(float));
    s->gate = xcalloc(B * inter, sizeof(float));
    s->up = xcalloc(B * inter, sizeof(float));
    s->rlogits = xcalloc(B * (E ? E : 1), sizeof(float));
    s->topk = xcalloc(B * (k ? k : 1), sizeof(int));
    s->topw = xcalloc(B * (k ? k : 1), sizeof(float));
    s->etok = xcalloc(B, sizeof(int));
    s->xe = xcalloc(B * D, sizeof(float));
    s->ye = xcalloc(B * D, sizeof(float));
    s->hid_by_pos = m->info.n_mtp > 0;
    s->hid = xcalloc((s->hid_by_pos ? (size_t)n_ctx : B) * D, sizeof(float));
    s->hchain = xcalloc(D, sizeof(float));
    s->xcat = xcalloc(B * 2 * D, sizeof(float));
    s->cache = xcalloc(nl * (size_t)n_ctx * (R + rope), sizeof(float));
    if (!s->sc.rowbuf || !s->sc.wbuf || !s->x || !s->xn || !s->y || !s->qa || !s->q || !s->kv || !s->heads ||
        !s->kvb || !s->att || !s->gate || !s->up || !s->rlogits || !s->topk || !s->topw || !s->etok || !s->xe ||
        !s->ye || !s->hid || !s->hchain || !s->xcat || !s->cache) {
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
 * 9. Generation, with MTP speculative decoding
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
    double t_plain, t_verify, t_draft; /* running costs in seconds (0 = not measured yet) */
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
    if (draft && g->cfg.adaptive && g->t_plain > 0 && g->t_verify > 0 && g->t_draft > 0) {
        /* expected tokens per second with one draft vs plain decoding */
        double gain = (1 + g->alpha) / (g->t_verify + g->t_draft) - 1 / g->t_plain;
        draft = gain > 0 || g->since_probe >= 32;
    } else if (draft && g->cfg.adaptive && g->t_plain == 0)
        draft = 0; /* measure a plain step first */
    int rc, n = g->n;
    double t0 = now_seconds();
    if (!draft) {
        g->since_probe++;
        if ((rc = dseek_forward(s, &g->pending, 1, n, g->logits, 1))) return rc;
        g->hist[g->n++] = g->pending;
        sampler_probs(g->sp, g->logits, g->p);
        out[(*n_out)++] = g->pending = sample_from(g->sp, g->p);
        ema(&g->t_plain, now_seconds() - t0);
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
            memcpy(s->hchain, s->xn, D * sizeof(float));
        }
        sampler_probs(g->sp, g->qlog + (size_t)i * V, g->q + (size_t)i * V);
        d[i + 1] = sample_from(g->sp, g->q + (size_t)i * V);
    }
    double t1 = now_seconds();
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
    ema(&g->t_verify, t2 - t1);
    if (behind <= 2) ema(&g->t_draft, (t1 - t0) / k); /* a long catch-up is no draft's cost */
    for (int i = 0; i < k; i++) g->alpha = 0.9 * g->alpha + 0.1 * (i < acc);
    return 0;
}

void dseek_gen_stats_get(const dseek_gen *g, dseek_gen_stats *st) {
    *st = g->st;
    st->acceptance = g->alpha;
    st->t_plain = g->t_plain;
    st->t_verify = g->t_verify;
    st->t_draft = g->t_draft;
}

int dseek_gen_pos(const dseek_gen *g) { return g->n; }
