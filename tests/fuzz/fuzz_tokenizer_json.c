/* fuzz_tokenizer_json.c - libFuzzer target: loading tokenizer.json and
 * tokenizer_config.json from arbitrary bytes.
 *
 * The input is tokenizer.json, optionally followed by the separator "\n--8<--\n" and
 * tokenizer_config.json (without it, no config file is given). A tokenizer that loads
 * is used: sample texts and the input itself are encoded (ids in range) and decoded
 * whole and streaming, and a conversation is rendered with its chat template.
 * Seeds: tests/fuzz/corpus/tokenizer_json/ (small hand-made tokenizers covering every
 * normalizer, pre-tokenizer and option the loader knows, with and without configs). */
#include "fuzz_util.h"

#define SEP "\n--8<--\n"

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc; (void)argv;
    fz_tmpdir();
    return 0;
}

static void use(dseek_tokenizer *tok, const char *text, size_t n) {
    const size_t V = dseek_vocab_size(tok);
    int *ids = NULL;
    size_t nid = 0;
    if (dseek_tokenize(tok, text, n, 1, &ids, &nid)) return; /* a regex run-time error (match limit) */
    for (size_t i = 0; i < nid; i++) FZ_CHECK(ids[i] >= 0 && (size_t)ids[i] < V, "id %d out of range %zu", ids[i], V);
    size_t total = dseek_detokenize(tok, ids, nid, 0, NULL, 0);
    char *out = malloc(total + 1);
    FZ_CHECK(out != NULL, "oom");
    FZ_CHECK(dseek_detokenize(tok, ids, nid, 0, out, total + 1) == total, "decode length");
    FZ_CHECK(fz_utf8_ok((unsigned char *)out, total), "decode gave bad UTF-8");
    dseek_detok_stream *st = dseek_detok_stream_new(tok, DSEEK_DETOK_SKIP_SPECIAL);
    FZ_CHECK(st != NULL, "oom");
    size_t len;
    for (size_t i = 0; i < nid; i++) FZ_CHECK(dseek_detok_stream_push(st, ids[i], &len) != NULL, "oom");
    FZ_CHECK(dseek_detok_stream_flush(st, &len) != NULL, "oom");
    dseek_detok_stream_free(st);
    for (size_t i = 0; i < nid && i < 8; i++) {
        const char *p = dseek_token_piece(tok, ids[i]);
        if (p) (void)dseek_token_id(tok, p);
    }
    free(out);
    free(ids);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const uint8_t *part[2];
    size_t len[2];
    int np = fz_split(data, size, SEP, part, len, 2);
    fz_write("tokenizer.json", part[0], len[0]);
    if (np == 2) fz_write("tokenizer_config.json", part[1], len[1]);
    char a[600], b[600], err[1024] = "";
    dseek_tokenizer *tok = NULL;
    int rc = dseek_tokenizer_load_files(fz_path("tokenizer.json", a, sizeof a),
                                        np == 2 ? fz_path("tokenizer_config.json", b, sizeof b) : NULL, &tok, err,
                                        sizeof err);
    if (rc) {
        FZ_CHECK(tok == NULL, "a failed load returns no tokenizer");
        FZ_CHECK(err[0] && !strchr(err, '\n'), "one line of error, got \"%s\"", err);
        FZ_CHECK(!strncmp(err, "tokenizer.json:", 15) || !strncmp(err, "tokenizer_config.json:", 22) ||
                     strstr(err, "out of memory"), "the error names the file: \"%s\"", err);
        return 0;
    }
    static const char *const samples[] = {
        "Hello, world! 123456 numbers and   spaces\n\ttabs",
        "\xe4\xbd\xa0\xe5\xa5\xbd\xef\xbc\x8c\xe4\xb8\x96\xe7\x95\x8c \xf0\x9f\x98\x80 caf\xc3\xa9",
        "bad \xff\xfe utf8 \xc3 \xed\xa0\x80 end",
        ("<\xef\xbd\x9c" "begin\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>x<|endoftext|> <s></s>"),
        "",
    };
    for (size_t i = 0; i < sizeof samples / sizeof samples[0]; i++) use(tok, samples[i], strlen(samples[i]));
    use(tok, (const char *)data, size < 512 ? size : 512);
    dseek_chat_msg msgs[3] = {{"system", "sys"}, {"user", "hi"}, {"assistant", "<think>x</think>ok"}};
    char *r = dseek_chat_render(tok, msgs, 3, 1);
    FZ_CHECK(r != NULL, "render failed");
    use(tok, r, strlen(r));
    free(r);
    dseek_tokenizer_free(tok);
    return 0;
}
