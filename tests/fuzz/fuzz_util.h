/* fuzz_util.h - helpers shared by the libFuzzer targets in tests/fuzz/: a private temporary
 * folder per process (removed at exit), whole-file reads and writes, splitting an input
 * into parts, and the checks run on a model that opened.
 * The targets use only the public API (include/dseek.h). */
#ifndef DSEEK_FUZZ_UTIL_H
#define DSEEK_FUZZ_UTIL_H

#define _GNU_SOURCE
#include "dseek.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Aborts the fuzzer with a message: a broken harness setup, or a property that failed
 * (libFuzzer reports the abort as a crash and saves the input). */
#define FZ_CHECK(cond, ...)                                                              \
    do {                                                                                  \
        if (!(cond)) {                                                                    \
            fprintf(stderr, "fuzz check failed at %s:%d: %s: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                                 \
            fputc('\n', stderr);                                                          \
            abort();                                                                      \
        }                                                                                 \
    } while (0)

static char fz_dir[256];    /* this process's temporary folder ("" before fz_tmpdir) */

/* Removes every file in the folder dir (it holds no sub-folders). */
static inline void fz_clear_dir(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    char p[600];
    while ((e = readdir(d)) != NULL) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        unlink(p);
    }
    closedir(d);
}

static inline void fz_clear(void) { fz_clear_dir(fz_dir); }

static inline void fz_cleanup(void) {
    if (!fz_dir[0]) return;
    fz_clear();
    rmdir(fz_dir);
}

/* Makes the per-process folder: in /dev/shm when it is there (no disk traffic per
 * input), else in $TMPDIR or /tmp. Removed at exit. */
static inline const char *fz_tmpdir(void) {
    if (fz_dir[0]) return fz_dir;
    const char *base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    snprintf(fz_dir, sizeof fz_dir, "%s/dseek-fuzz-XXXXXX", base);
    FZ_CHECK(mkdtemp(fz_dir) != NULL, "cannot make a temporary folder under %s", base);
    atexit(fz_cleanup);
    return fz_dir;
}

/* Path of `name` inside the folder (a static buffer per call site is enough here). */
static inline const char *fz_path(const char *name, char *buf, size_t len) {
    snprintf(buf, len, "%s/%s", fz_tmpdir(), name);
    return buf;
}

static inline void fz_write(const char *name, const void *data, size_t n) {
    char p[600];
    FILE *f = fopen(fz_path(name, p, sizeof p), "wb");
    FZ_CHECK(f != NULL, "cannot write %s", p);
    FZ_CHECK(fwrite(data, 1, n, f) == n || n == 0, "short write to %s", p);
    FZ_CHECK(fclose(f) == 0, "cannot close %s", p);
}

static inline void fz_remove(const char *name) {
    char p[600];
    unlink(fz_path(name, p, sizeof p));
}

/* Reads a whole file (malloc'ed, NUL added); aborts when it cannot. */
static inline char *fz_read(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    FZ_CHECK(f != NULL, "cannot read %s (run from the repository root, or set the paths: see the file's header)", path);
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc((size_t)len + 1);
    FZ_CHECK(b && fread(b, 1, (size_t)len, f) == (size_t)len, "cannot read %s", path);
    fclose(f);
    b[len] = 0;
    if (n) *n = (size_t)len;
    return b;
}

/* An environment variable, or def. */
static inline const char *fz_env(const char *name, const char *def) {
    const char *v = getenv(name);
    return v && *v ? v : def;
}

/* Makes this process's folder (fz_tmpdir) and copies the data file `name` of the data
 * folder ($DSEEK_FUZZ_DATA, else tests/fuzz/data) into it as `as`. */
static inline void fz_put_data(const char *name, const char *as) {
    char p[600];
    snprintf(p, sizeof p, "%s/%s", fz_env("DSEEK_FUZZ_DATA", "tests/fuzz/data"), name);
    size_t n;
    char *b = fz_read(p, &n);
    fz_tmpdir();
    fz_write(as, b, n);
    free(b);
}

/* Splits data[0..n) at each occurrence of sep: up to max parts, the last one takes the
 * rest. Returns the number of parts. */
static inline int fz_split(const uint8_t *data, size_t n, const char *sep, const uint8_t **part, size_t *len, int max) {
    size_t sl = strlen(sep);
    int k = 0;
    const uint8_t *p = data, *end = data + n;
    while (k < max - 1) {
        const uint8_t *q = memmem(p, (size_t)(end - p), sep, sl);
        if (!q) break;
        part[k] = p;
        len[k++] = (size_t)(q - p);
        p = q + sl;
    }
    part[k] = p;
    len[k++] = (size_t)(end - p);
    return k;
}

/* 1 if s[0..n) is well-formed UTF-8. */
static inline int fz_utf8_ok(const unsigned char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i], len, lo = 0x80, hi = 0xBF;
        if (c < 0x80) { i++; continue; }
        if (c >= 0xC2 && c <= 0xDF) len = 2;
        else if (c >= 0xE0 && c <= 0xEF) { len = 3; if (c == 0xE0) lo = 0xA0; if (c == 0xED) hi = 0x9F; }
        else if (c >= 0xF0 && c <= 0xF4) { len = 4; if (c == 0xF0) lo = 0x90; if (c == 0xF4) hi = 0x8F; }
        else return 0;
        if (i + len > n) return 0;
        for (unsigned k = 1; k < len; k++) {
            if (s[i + k] < lo || s[i + k] > hi) return 0;
            lo = 0x80; hi = 0xBF;
        }
        i += len;
    }
    return 1;
}

/* What a model that opened must survive: a session, prefill with every row of logits,
 * a decode step, bad arguments (refused, not crashing), the MTP head, and generation
 * with MTP drafting up to the end of a small context. Non-finite weights may make a
 * forward fail with an error; nothing may crash, leak or read out of bounds. */
static inline void fz_exercise_model(dseek_model *m) {
    const dseek_info *info = dseek_model_info(m);
    const int V = info->vocab_size, ctx = 8;
    FZ_CHECK(V >= 1 && info->hidden_size >= 1, "info");
    char err[512];
    dseek_session *s;
    if (dseek_session_new(m, ctx, 3, &s, err, sizeof err)) return; /* e.g. too big for memory */
    float *logits = malloc((size_t)ctx * (size_t)V * sizeof(float));
    FZ_CHECK(logits != NULL, "oom");
    int tok[4] = {0, V - 1, V / 2, V > 1 ? 1 : 0};
    int rc = dseek_forward(s, tok, 4, 0, logits, 1);
    if (rc == 0) {
        FZ_CHECK(dseek_forward(s, tok + 1, 1, 4, logits, 0) == 0 || dseek_session_error(s)[0], "decode");
        if (info->n_mtp) (void)dseek_mtp_forward(s, tok + 1, 3, 0, logits, 1);
    } else FZ_CHECK(dseek_session_error(s)[0] != 0, "a failed forward says why");
    /* refused arguments */
    int bad[2] = {-1, V};
    FZ_CHECK(dseek_forward(s, bad, 1, 0, logits, 0) == DSEEK_EARG, "token -1 accepted");
    FZ_CHECK(dseek_forward(s, bad + 1, 1, 0, logits, 0) == DSEEK_EARG, "token V accepted");
    FZ_CHECK(dseek_forward(s, tok, 4, ctx - 2, logits, 0) == DSEEK_EARG, "past the context accepted");
    FZ_CHECK(dseek_forward(s, tok, 0, 0, logits, 0) == DSEEK_EARG, "no tokens accepted");
    /* generation with drafting (greedy and sampled) */
    for (int pass = 0; pass < 2; pass++) {
        dseek_sampler_cfg sc = {.temperature = pass ? 0.8f : 0, .top_k = 5, .top_p = 0.9f, .min_p = 0.01f, .seed = 3};
        dseek_gen_cfg gc = {.mtp = 1, .n_draft = 2, .adaptive = 0};
        dseek_gen *g;
        FZ_CHECK(dseek_gen_new(s, &sc, &gc, &g) == 0, "gen_new");
        int first, out[16], k;
        if (dseek_gen_feed(g, tok, 2, &first) == 0) {
            FZ_CHECK(first >= 0 && first < V, "first token %d of %d", first, V);
            while (dseek_gen_pos(g) < ctx - 1) {
                if (dseek_gen_step(g, out, &k)) break;
                FZ_CHECK(k >= 1 && k <= 9, "step gave %d tokens", k);
                for (int i = 0; i < k; i++) FZ_CHECK(out[i] >= 0 && out[i] < V, "token %d of %d", out[i], V);
            }
        }
        dseek_gen_free(g);
    }
    free(logits);
    dseek_session_free(s);
}

#endif
