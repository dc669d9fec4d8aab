/* main.c - the dseek command line: logits, run.
 * Every error is one line on stderr and a non-zero exit: 2 for bad files or arguments. */
#include "dseek.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static void die(const char *fmt, const char *a) {
    fprintf(stderr, "dseek: ");
    fprintf(stderr, fmt, a);
    fputc('\n', stderr);
    exit(2);
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* ---- argument parsing ---- */

typedef struct {
    const char *model;        /* -m DIR */
    const char *tokens;       /* --tokens 0,5,7 */
    const char *out;          /* -o FILE */
    int decode;               /* --decode: one token at a time */
    int chunk;                /* --chunk N */
    int ctx;                  /* -c */
    int threads;              /* -t */
    int n_predict;            /* -n */
    int ids;                  /* --ids */
    int mtp;                  /* --mtp: logits of the MTP head */
    int no_mtp;               /* --no-mtp */
    int n_draft;              /* --draft N */
    int no_adapt;             /* --no-adaptive */
    int batch;                /* -b: most tokens per forward step */
    int n_prompt;             /* bench -p */
    int reps;                 /* bench -r */
    int json;                 /* bench --json */
    dseek_sampler_cfg samp;
} Args;

static long parse_long(const char *flag, const char *v, long lo, long hi) {
    if (!v) die("%s: missing value", flag);
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (errno || *end || end == v || x < lo || x > hi) {
        fprintf(stderr, "dseek: %s: expected an integer in [%ld, %ld], got \"%s\"\n", flag, lo, hi, v);
        exit(2);
    }
    return x;
}

static float parse_float(const char *flag, const char *v, float lo, float hi) {
    if (!v) die("%s: missing value", flag);
    char *end;
    float x = strtof(v, &end);
    if (*end || end == v || !(x >= lo && x <= hi)) {
        fprintf(stderr, "dseek: %s: expected a number in [%g, %g], got \"%s\"\n", flag, lo, hi, v);
        exit(2);
    }
    return x;
}

static void usage(const char *cmd) {
    if (!cmd || !strcmp(cmd, "bench"))
        fprintf(stderr,
                "usage: dseek bench -m DIR [-p 512] [-n 128] [-r 3] [-t THREADS] [--json] [--no-mtp]\n"
                "  prefill of p random tokens and decode of n tokens, repeated r times: tokens/s (mean +- sd),\n"
                "  model bytes, bytes read per decoded token, latent-cache bytes per token, resident memory,\n"
                "  and decode speed against the memory-bandwidth roofline measured in the same run;\n"
                "  models with an MTP layer are also decoded with speculative decoding\n");
    if (!cmd || !strcmp(cmd, "logits"))
        fprintf(stderr,
                "usage: dseek logits -m DIR --tokens 0,5,7,... -o out.npy [--decode | --chunk N] [--mtp] [-c CTX] [-t THREADS]\n"
                "  writes the [T, vocab] float32 logits of every position as a NumPy .npy file\n"
                "  default: one prefill of all tokens; --decode: one token at a time; --chunk N: N at a time\n"
                "  --mtp: the MTP head's logits instead, for the inputs tokens[1:] + [argmax of the last row]\n");
    if (!cmd || !strcmp(cmd, "run"))
        fprintf(stderr,
                "usage: dseek run -m DIR --tokens 0,5,7 [-n N] [--temp T] [--top-k K] [--top-p P] [--min-p P]\n"
                "                 [--seed S] [--ids] [-c CTX] [-b BATCH] [-t THREADS] [--no-mtp] [--draft N] [--no-adaptive]\n"
                "  generates N tokens after the prompt and prints their ids, space separated\n"
                "  models with an MTP layer draft with it (speculative decoding, same output):\n"
                "  --no-mtp turns that off, --draft N chains N drafts per step (default 1),\n"
                "  --no-adaptive drafts every step instead of only while it is measured faster\n");
}

static void parse_args(int argc, char **argv, Args *a, const char *cmd) {
    memset(a, 0, sizeof *a);
    a->n_predict = 16;
    a->samp.top_p = 1.0f;
    a->samp.seed = 1;
    for (int i = 2; i < argc; i++) {
        const char *f = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
#define VAL (i++, v ? v : (die("%s: missing value", f), ""))
        if (!strcmp(f, "-h") || !strcmp(f, "--help")) { usage(cmd); exit(0); }
        else if (!strcmp(f, "-m") || !strcmp(f, "--model")) a->model = VAL;
        else if (!strcmp(f, "--tokens")) a->tokens = VAL;
        else if (!strcmp(f, "-o")) a->out = VAL;
        else if (!strcmp(f, "--decode")) a->decode = 1;
        else if (!strcmp(f, "--chunk")) { a->chunk = (int)parse_long(f, v, 1, 1 << 20); i++; }
        else if (!strcmp(f, "-c") || !strcmp(f, "--ctx")) { a->ctx = (int)parse_long(f, v, 1, 1 << 24); i++; }
        else if (!strcmp(f, "-t") || !strcmp(f, "--threads")) { a->threads = (int)parse_long(f, v, 1, 1024); i++; }
        else if (!strcmp(f, "-n")) { a->n_predict = (int)parse_long(f, v, 0, 1 << 24); i++; }
        else if (!strcmp(f, "--temp")) { a->samp.temperature = parse_float(f, v, 0, 100); i++; }
        else if (!strcmp(f, "--top-k")) { a->samp.top_k = (int)parse_long(f, v, 0, 1 << 24); i++; }
        else if (!strcmp(f, "--top-p")) { a->samp.top_p = parse_float(f, v, 0, 1); i++; }
        else if (!strcmp(f, "--min-p")) { a->samp.min_p = parse_float(f, v, 0, 1); i++; }
        else if (!strcmp(f, "--seed")) { a->samp.seed = (uint64_t)parse_long(f, v, 0, 0x7fffffffffffffffL); i++; }
        else if (!strcmp(f, "--ids")) a->ids = 1;
        else if (!strcmp(f, "-p") && !strcmp(cmd, "bench")) { a->n_prompt = (int)parse_long(f, v, 0, 1 << 20); i++; }
        else if (!strcmp(f, "-r")) { a->reps = (int)parse_long(f, v, 1, 1000); i++; }
        else if (!strcmp(f, "--json")) a->json = 1;
        else if (!strcmp(f, "-b") || !strcmp(f, "--batch")) { a->batch = (int)parse_long(f, v, 1, 1 << 16); i++; }
        else if (!strcmp(f, "--mtp")) a->mtp = 1;
        else if (!strcmp(f, "--no-mtp")) a->no_mtp = 1;
        else if (!strcmp(f, "--no-adaptive")) a->no_adapt = 1;
        else if (!strcmp(f, "--draft")) { a->n_draft = (int)parse_long(f, v, 1, 8); i++; }
        else {
            fprintf(stderr, "dseek %s: unknown option \"%s\" (see dseek %s --help)\n", cmd, f, cmd);
            exit(2);
        }
#undef VAL
    }
    if (!a->model) die("%s: -m DIR is required", cmd);
    if (a->n_predict < 0) die("%s: -n must be >= 0", cmd);
}

/* Parses "0,5,7" into a malloc'd array. */
static int *parse_tokens(const char *s, int *n) {
    if (!s || !*s) die("%s", "--tokens: expected a comma-separated list of token ids");
    int cap = 16, k = 0;
    int *v = malloc((size_t)cap * sizeof(int));
    const char *p = s;
    while (*p) {
        char *end;
        errno = 0;
        long x = strtol(p, &end, 10);
        if (end == p || errno || x < 0 || x > 0x7fffffff) die("--tokens: bad token id near \"%s\"", p);
        if (k == cap) v = realloc(v, (size_t)(cap *= 2) * sizeof(int));
        v[k++] = (int)x;
        p = end;
        if (*p == ',') p++;
        else if (*p) die("--tokens: bad token id near \"%s\"", p);
    }
    *n = k;
    return v;
}

static dseek_model *open_model(const char *dir, int threads) {
    dseek_set_threads(threads);
    char err[1024];
    dseek_model *m;
    if (dseek_model_open(dir, &m, err, sizeof err)) {
        fprintf(stderr, "dseek: %s\n", err);
        exit(2);
    }
    return m;
}

static dseek_session *open_session(const dseek_model *m, int ctx, int batch) {
    char err[1024];
    dseek_session *s;
    if (dseek_session_new(m, ctx, batch, &s, err, sizeof err)) {
        fprintf(stderr, "dseek: %s\n", err);
        exit(2);
    }
    return s;
}

/* Writes a float32 [rows, cols] array as .npy (version 1.0). */
static int write_npy(const char *path, const float *a, size_t rows, size_t cols) {
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    char hdr[128];
    int n = snprintf(hdr, sizeof hdr, "{'descr': '<f4', 'fortran_order': False, 'shape': (%zu, %zu), }", rows, cols);
    int total = 10 + n + 1, pad = (64 - total % 64) % 64;
    unsigned short hl = (unsigned short)(n + pad + 1);
    fwrite("\x93NUMPY\x01\x00", 1, 8, f);
    fputc(hl & 0xff, f);
    fputc(hl >> 8, f);
    fwrite(hdr, 1, (size_t)n, f);
    for (int i = 0; i < pad; i++) fputc(' ', f);
    fputc('\n', f);
    size_t w = fwrite(a, sizeof(float), rows * cols, f);
    return fclose(f) || w != rows * cols ? -1 : 0;
}

static void check(dseek_session *s, int rc) {
    if (rc) {
        fprintf(stderr, "dseek: %s\n", dseek_session_error(s));
        exit(2);
    }
}

static int argmax(const float *v, int n) {
    int b = 0;
    for (int i = 1; i < n; i++)
        if (v[i] > v[b]) b = i;
    return b;
}

/* ---- subcommands ---- */

static int cmd_logits(int argc, char **argv) {
    Args a;
    parse_args(argc, argv, &a, "logits");
    if (!a.out) die("%s", "logits: -o FILE is required");
    int T;
    int *tok = parse_tokens(a.tokens, &T);
    dseek_model *m = open_model(a.model, a.threads);
    int V = dseek_model_info(m)->vocab_size;
    int step = a.decode ? 1 : a.chunk ? a.chunk : T;
    dseek_session *s = open_session(m, a.ctx ? a.ctx : T, step);
    float *logits = malloc((size_t)T * (size_t)V * sizeof(float));
    float *mtp = a.mtp ? malloc((size_t)T * (size_t)V * sizeof(float)) : NULL;
    int *next = malloc((size_t)T * sizeof(int));
    if (!logits || !next || (a.mtp && !mtp)) die("%s", "out of memory for the logits");
    if (a.mtp && !dseek_model_info(m)->n_mtp) die("%s: --mtp: the model has no MTP layer", a.model);
    for (int i = 0; i < T; i += step) {
        int n = T - i < step ? T - i : step;
        check(s, dseek_forward(s, tok + i, n, i, logits + (size_t)i * V, 1));
        if (!a.mtp) continue;
        /* the head at position j reads the token at j+1; after the last one, the main argmax */
        for (int j = i; j < i + n; j++) next[j - i] = j + 1 < T ? tok[j + 1] : argmax(logits + (size_t)j * V, V);
        check(s, dseek_mtp_forward(s, next, n, i, mtp + (size_t)i * V, 1));
    }
    if (write_npy(a.out, a.mtp ? mtp : logits, (size_t)T, (size_t)V)) die("%s: cannot write", a.out);
    free(logits);
    free(mtp);
    free(next);
    free(tok);
    dseek_session_free(s);
    dseek_model_free(m);
    return 0;
}

static int cmd_run(int argc, char **argv) {
    Args a;
    parse_args(argc, argv, &a, "run");
    int T;
    int *tok = parse_tokens(a.tokens, &T);
    dseek_model *m = open_model(a.model, a.threads);
    const dseek_info *info = dseek_model_info(m);
    int ctx = a.ctx ? a.ctx : T + a.n_predict + 1;
    dseek_session *s = open_session(m, ctx, a.batch ? a.batch : T < 512 ? T : 512);
    dseek_gen_cfg gc = {.mtp = !a.no_mtp, .n_draft = a.n_draft ? a.n_draft : 1, .adaptive = !a.no_adapt};
    dseek_gen *g;
    if (dseek_gen_new(s, &a.samp, &gc, &g)) die("%s", "out of memory");
    int out[16], n_out, n = 0, first;
    if (a.n_predict > 0) {
        check(s, dseek_gen_feed(g, tok, T, &first));
        printf("%d", first);
        n = 1;
    }
    double t1 = now_s();
    while (n < a.n_predict) {
        check(s, dseek_gen_step(g, out, &n_out));
        for (int i = 0; i < n_out && n < a.n_predict; i++, n++) printf(" %d", out[i]);
        fflush(stdout);
    }
    printf("\n");
    double t2 = now_s();
    dseek_gen_stats st;
    dseek_gen_stats_get(g, &st);
    fprintf(stderr, "prompt: %ld tokens, %.2f tok/s; generation: %d tokens, %.2f tok/s\n", st.prompt_tokens,
            st.prompt_seconds > 0 ? st.prompt_tokens / st.prompt_seconds : 0.0, n, n > 1 ? (n - 1) / (t2 - t1) : 0.0);
    if (info->n_mtp && !a.no_mtp)
        fprintf(stderr, "mtp: %ld drafts, %ld accepted (%.1f%%), %.2f tokens per main forward; "
                        "costs: 1-token forward %.2f ms, verify %.2f ms, draft %.2f ms\n",
                st.drafted, st.accepted, st.drafted ? 100.0 * st.accepted / st.drafted : 0.0,
                st.main_forwards ? (double)(st.tokens - 1) / st.main_forwards : 0.0, st.t_plain * 1e3,
                st.t_verify * 1e3, st.t_draft * 1e3);
    dseek_gen_free(g);
    free(tok);
    dseek_session_free(s);
    dseek_model_free(m);
    return 0;
}

static long rss_kib(const char *key) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long v = 0;
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, key, strlen(key))) v = atol(line + strlen(key));
    if (f) fclose(f);
    return v;
}

static void mean_sd(const double *x, int n, double *mean, double *sd) {
    double s = 0, q = 0;
    for (int i = 0; i < n; i++) s += x[i];
    *mean = s / n;
    for (int i = 0; i < n; i++) q += (x[i] - *mean) * (x[i] - *mean);
    *sd = n > 1 ? sqrt(q / (n - 1)) : 0;
}

/* Decodes n tokens after bos; returns tokens/s over the steps and fills st. */
static double bench_decode(dseek_session *s, const dseek_info *info, int n, int mtp, dseek_gen_stats *st) {
    dseek_sampler_cfg sc = {.temperature = 0, .top_p = 1};
    dseek_gen_cfg gc = {.mtp = mtp, .n_draft = 1, .adaptive = 1};
    dseek_gen *g;
    if (dseek_gen_new(s, &sc, &gc, &g)) die("%s", "out of memory");
    int bos = info->bos_token_id < info->vocab_size ? info->bos_token_id : 0, first, out[16], k, got = 1;
    check(s, dseek_gen_feed(g, &bos, 1, &first));
    double t0 = now_s();
    while (got < n) {
        check(s, dseek_gen_step(g, out, &k));
        got += k;
    }
    double t = now_s() - t0;
    dseek_gen_stats_get(g, st);
    dseek_gen_free(g);
    return (got - 1) / t;
}

static int cmd_bench(int argc, char **argv) {
    Args a;
    parse_args(argc, argv, &a, "bench");
    int P = a.n_prompt, N = a.n_predict, R = a.reps ? a.reps : 3;
    int explicit_p = 0, explicit_n = 0;
    for (int i = 2; i < argc; i++) {
        explicit_p |= !strcmp(argv[i], "-p");
        explicit_n |= !strcmp(argv[i], "-n");
    }
    if (!explicit_p) P = 512;
    if (!explicit_n) N = 128;
    dseek_model *m = open_model(a.model, a.threads);
    const dseek_info *info = dseek_model_info(m);
    dseek_session *s = open_session(m, a.ctx ? a.ctx : (P > N + 2 ? P : N + 2) + 16, P > 512 ? 512 : P > 0 ? P : 1);
    int *tok = malloc((size_t)(P > 0 ? P : 1) * sizeof(int));
    uint64_t r = 42;
    for (int i = 0; i < P; i++) {
        r = r * 6364136223846793005ull + 1442695040888963407ull;
        tok[i] = i == 0 ? info->bos_token_id % info->vocab_size : (int)((r >> 33) % (uint64_t)info->vocab_size);
    }
    double bw = dseek_memory_bandwidth((size_t)512 << 20);
    double pp[1000], tg[1000], tgm[1000];
    dseek_gen_stats st = {0}, stm = {0};
    int mtp = info->n_mtp && !a.no_mtp;
    for (int rep = 0; rep < R; rep++) {
        if (P > 0) {
            double t0 = now_s();
            check(s, dseek_forward(s, tok, P, 0, NULL, 0));
            pp[rep] = P / (now_s() - t0);
        }
        if (N > 1) {
            tg[rep] = bench_decode(s, info, N, 0, &st);
            if (mtp) tgm[rep] = bench_decode(s, info, N, 1, &stm);
        }
    }
    double ppm, pps, tgmn, tgs, tmm, tms;
    mean_sd(pp, R, &ppm, &pps);
    mean_sd(tg, R, &tgmn, &tgs);
    mean_sd(tgm, R, &tmm, &tms);
    double roof = bw > 0 ? bw / (double)info->decode_bytes_per_token : 0;
    long rss = rss_kib("VmHWM:");
    if (a.json) {
        printf("{\"model\": \"%s\", \"params\": %zu, \"model_bytes\": %zu, \"decode_bytes_per_token\": %zu, "
               "\"cache_bytes_per_token\": %zu, \"bandwidth_gbs\": %.2f, \"peak_rss_mib\": %.1f}\n",
               a.model, info->n_params, info->weight_bytes, info->decode_bytes_per_token, info->cache_bytes_per_token,
               bw / 1e9, rss / 1024.0);
        if (P > 0) printf("{\"test\": \"pp%d\", \"tokens_per_s\": %.3f, \"sd\": %.3f, \"reps\": %d}\n", P, ppm, pps, R);
        if (N > 1) printf("{\"test\": \"tg%d\", \"tokens_per_s\": %.3f, \"sd\": %.3f, \"reps\": %d, \"roofline_tokens_per_s\": %.3f, \"roofline_pct\": %.1f}\n",
                          N, tgmn, tgs, R, roof, roof > 0 ? 100 * tgmn / roof : 0);
        if (N > 1 && mtp)
            printf("{\"test\": \"tg%d_mtp\", \"tokens_per_s\": %.3f, \"sd\": %.3f, \"reps\": %d, \"speedup\": %.3f, "
                   "\"acceptance\": %.4f, \"tokens_per_forward\": %.3f, \"verify_over_forward\": %.3f, \"draft_over_forward\": %.3f}\n",
                   N, tmm, tms, R, tmm / tgmn, stm.drafted ? (double)stm.accepted / stm.drafted : 0,
                   stm.main_forwards ? (double)(stm.tokens - 1) / stm.main_forwards : 0,
                   stm.t_plain > 0 ? stm.t_verify / stm.t_plain : 0, stm.t_plain > 0 ? stm.t_draft / stm.t_plain : 0);
    } else {
        printf("model: %s\n  %.3f B params, %.2f GiB of weights, decode reads %.3f GiB/token, latent cache %.1f KiB/token\n",
               a.model, info->n_params / 1e9, info->weight_bytes / 1073741824.0,
               info->decode_bytes_per_token / 1073741824.0, info->cache_bytes_per_token / 1024.0);
        printf("  memory read bandwidth (measured now): %.1f GB/s; peak resident memory %.1f MiB\n", bw / 1e9, rss / 1024.0);
        if (P > 0) printf("pp%-5d %9.2f +- %.2f tok/s   (%d reps)\n", P, ppm, pps, R);
        if (N > 1) printf("tg%-5d %9.2f +- %.2f tok/s   (%.0f%% of the %.2f tok/s bandwidth roofline)\n", N, tgmn, tgs,
                          roof > 0 ? 100 * tgmn / roof : 0, roof);
        if (N > 1 && mtp)
            printf("tg%-5d %9.2f +- %.2f tok/s with MTP (x%.2f): acceptance %.1f%%, %.2f tokens per main forward,\n"
                   "          verify forward = %.2f x a 1-token forward, one draft = %.2f x a forward\n",
                   N, tmm, tms, tmm / tgmn, stm.drafted ? 100.0 * stm.accepted / stm.drafted : 0,
                   stm.main_forwards ? (double)(stm.tokens - 1) / stm.main_forwards : 0,
                   stm.t_plain > 0 ? stm.t_verify / stm.t_plain : 0, stm.t_plain > 0 ? stm.t_draft / stm.t_plain : 0);
    }
    free(tok);
    dseek_session_free(s);
    dseek_model_free(m);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")) {
        fprintf(stderr, "usage: dseek COMMAND [options]   (dseek COMMAND --help for each)\n"
                        "commands:\n"
                        "  logits   write the logits of a token sequence as .npy\n"
                        "  run      generate tokens after a prompt\n"
                        "  bench    measure prefill and decode speed\n");
        return argc < 2 ? 2 : 0;
    }
    if (!strcmp(argv[1], "logits")) return cmd_logits(argc, argv);
    if (!strcmp(argv[1], "run")) return cmd_run(argc, argv);
    if (!strcmp(argv[1], "bench")) return cmd_bench(argc, argv);
    fprintf(stderr, "dseek: unknown command \"%s\" (see dseek --help)\n", argv[1]);
    return 2;
}
