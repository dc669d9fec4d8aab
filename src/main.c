/* main.c - the dseek command line: run, chat, tokenize, logits, bench, quantize.
 * Every error is one line on stderr and a non-zero exit: 2 for bad files or arguments. */
#define _GNU_SOURCE
#include "dseek.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* Prints prefix and the formatted message as one line on stderr (control characters, which
 * arguments and file names may hold, are shown as '?') and exits with status 2. */
static _Noreturn void vfail(const char *prefix, const char *fmt, va_list ap) {
    char msg[2048];
    vsnprintf(msg, sizeof msg, fmt, ap);
    for (char *c = msg; *c; c++)
        if ((unsigned char)*c < 0x20 || *c == 0x7f) *c = '?';
    fprintf(stderr, "%s%s\n", prefix, msg);
    exit(2);
}

static _Noreturn void die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vfail("dseek: ", fmt, ap);
    va_end(ap);
}

static _Noreturn void die_cmd(const char *fmt, ...) { /* a message that names its own command */
    va_list ap;
    va_start(ap, fmt);
    vfail("", fmt, ap);
    va_end(ap);
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
    int depth;                /* bench -d: tokens already in the context when decoding starts */
    int reps;                 /* bench -r */
    int json;                 /* bench --json */
    const char *prompt;       /* -p TEXT */
    const char *file;         /* -f FILE */
    const char *system;       /* --system TEXT */
    int chat;                 /* run --chat: apply the chat template */
    int hide_think;           /* --hide-think */
    const char *ids_log;      /* chat --ids-log FILE (for tests) */
    const char *routing_out;  /* logits --routing-out FILE */
    int check_tensors;        /* --check-tensors: scan every weight for NaN/Inf at load */
    int quant;                /* --quant TYPE (quantize at load), quantize --type TYPE: DSEEK_QUANT_* */
    int load, mlock;          /* --no-mmap / --mmap / --lazy-mmap (DSEEK_LOAD_*), --mlock */
    int cache_type;           /* --cache-type f32 | bf16 (dseek_cache_type) */
    dseek_sampler_cfg samp;
} Args;

static long parse_long(const char *flag, const char *v, long lo, long hi) {
    if (!v) die("%s: missing value", flag);
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (errno || *end || end == v || x < lo || x > hi)
        die("%s: expected an integer in [%ld, %ld], got \"%s\"", flag, lo, hi, v);
    return x;
}

static float parse_float(const char *flag, const char *v, float lo, float hi) {
    if (!v) die("%s: missing value", flag);
    char *end;
    float x = strtof(v, &end);
    if (*end || end == v || !(x >= lo && x <= hi))
        die("%s: expected a number in [%g, %g], got \"%s\"", flag, (double)lo, (double)hi, v);
    return x;
}

static int parse_cache_type(const char *flag, const char *v) {
    if (!v) die("%s: missing value", flag);
    if (!strcmp(v, "f32")) return DSEEK_CACHE_F32;
    if (!strcmp(v, "bf16")) return DSEEK_CACHE_BF16;
    fprintf(stderr, "dseek: %s: unknown cache type \"%s\" (f32 or bf16)\n", flag, v);
    exit(2);
}

static int parse_quant(const char *flag, const char *v) {
    if (!v) die("%s: missing value", flag);
    int q = dseek_quant_parse(v);
    if (q < 0) {
        fprintf(stderr, "dseek: %s: unknown type \"%s\" (q8_0, q4_0 or q4_k)\n", flag, v);
        exit(2);
    }
    return q;
}

static void usage(const char *cmd) {
    if (!cmd || !strcmp(cmd, "quantize"))
        fprintf(stderr,
                "usage: dseek quantize -m DIR -o OUT --type q8_0|q4_0|q4_k [-t THREADS]\n"
                "  writes DIR's model with its matrices in dseek's block format to the folder OUT\n"
                "  (model.safetensors + config.json + tokenizer files), which dseek mmaps directly;\n"
                "  embeddings, norms, router and bias are kept as they are. Any command also takes\n"
                "  --quant q8_0|q4_0|q4_k to quantize a plain checkpoint in memory while loading it\n");
    if (!cmd || !strcmp(cmd, "bench"))
        fprintf(stderr,
                "usage: dseek bench -m DIR [-p 512] [-n 128] [-d 0] [-r 3] [-t THREADS] [--json] [--no-mtp] [--quant q8_0|q4_0|q4_k]\n"
                "                   [--check-tensors] [--cache-type f32|bf16]\n"
                "  prefill of p random tokens and decode of n tokens (after d tokens of context), repeated r times: tokens/s (mean +- sd),\n"
                "  model bytes, bytes read per decoded token, latent-cache bytes per token, resident memory,\n"
                "  and decode speed against the memory-bandwidth roofline (bandwidth measured around each decode);\n"
                "  models with an MTP layer are also decoded with speculative decoding\n");
    if (!cmd || !strcmp(cmd, "logits"))
        fprintf(stderr,
                "usage: dseek logits -m DIR --tokens 0,5,7,... -o out.npy [--decode | --chunk N] [--mtp] [--routing-out FILE]\n"
                "                    [-c CTX] [-t THREADS] [--check-tensors] [--quant q8_0|q4_0|q4_k]\n"
                "  writes the [T, vocab] float32 logits of every position as a NumPy .npy file\n"
                "  default: one prefill of all tokens; --decode: one token at a time; --chunk N: N at a time\n"
                "  --mtp: the MTP head's logits instead, for the inputs tokens[1:] + [argmax of the last row]\n"
                "  --routing-out FILE: the chosen experts as int32 .npy, [MoE layers, T, k] ([T, k] with --mtp)\n");
    if (!cmd || !strcmp(cmd, "tokenize"))
        fprintf(stderr, "usage: dseek tokenize -m DIR (-p TEXT | -f FILE)\n"
                        "  prints the token ids the model sees (bos first when add_bos_token); needs only\n"
                        "  tokenizer.json and tokenizer_config.json in DIR\n");
    if (!cmd || !strcmp(cmd, "chat"))
        fprintf(stderr, "usage: dseek chat -m DIR [--system TEXT] [-n MAX_REPLY] [--temp T] [--top-k K] [--top-p P]\n"
                        "                  [--min-p P] [--seed S] [-c CTX] [-t THREADS] [--hide-think] [--no-mtp] [--quant q8_0|q4_0|q4_k]\n"
                        "                  [--check-tensors]\n"
                        "  interactive chat with the model's template; each turn computes only its new tokens.\n"
                        "  commands: /reset (forget the conversation), /exit (or Ctrl-D). Reads piped stdin too.\n");
    if (!cmd || !strcmp(cmd, "run"))
        fprintf(stderr,
                "usage: dseek run -m DIR (-p TEXT | -f FILE | --tokens 0,5,7) [--chat] [--system TEXT] [-n N]\n"
                "                 [--temp T] [--top-k K] [--top-p P] [--min-p P]\n"
                "                 [--seed S] [--ids] [-c CTX] [-b BATCH] [-t THREADS] [--no-mtp] [--draft N] [--no-adaptive]\n"
                "                 [--check-tensors] [--quant q8_0|q4_0|q4_k]\n"
                "  streams the completion (or with --ids the token ids) to stdout, stopping at eos or after N\n"
                "  tokens; --chat wraps the prompt in the model's chat template; --hide-think hides R1 thinking\n"
                "  models with an MTP layer draft with it (speculative decoding, same output):\n"
                "  --no-mtp turns that off, --draft N chains N drafts per step (default 1),\n"
                "  --no-adaptive drafts every step instead of only while it is measured faster\n");
    if (!cmd || strcmp(cmd, "tokenize"))
        fprintf(stderr, "  --check-tensors: read every weight at load and refuse NaN or Inf, naming the tensor\n"
                        "  (norms, router and bias are always checked; NaN or Inf logits are always an error)\n");
    if (!cmd || (strcmp(cmd, "tokenize") && strcmp(cmd, "quantize")))
        fprintf(stderr, "  loading: by default the weights are copied into huge-page memory when they fit in the\n"
                        "  memory available with room to spare, else mmapped and read in whole at start;\n"
                        "  --no-mmap always copies, --mmap always maps (read in whole at start), --lazy-mmap\n"
                        "  maps and reads pages on first use (fast start, slow first tokens);\n"
                        "  --mlock keeps them from being swapped out\n"
                        "  --cache-type f32|bf16: the latent cache in float32 (default) or bfloat16 (half the\n"
                        "  memory and half the cache reads of a long context; logits move by under 1e-2)\n");
}

static void parse_args(int argc, char **argv, Args *a, const char *cmd) {
    memset(a, 0, sizeof *a);
    a->n_predict = 16;
    a->samp.top_p = 1.0f;
    a->samp.seed = 1;
    const int runs_model = strcmp(cmd, "tokenize") && strcmp(cmd, "quantize"); /* takes the loading flags */
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
        else if (!strcmp(f, "-d") && !strcmp(cmd, "bench")) { a->depth = (int)parse_long(f, v, 0, 1 << 20); i++; }
        else if (!strcmp(f, "-p") || !strcmp(f, "--prompt")) a->prompt = VAL;
        else if (!strcmp(f, "-f") || !strcmp(f, "--file")) a->file = VAL;
        else if (!strcmp(f, "--system")) a->system = VAL;
        else if (!strcmp(f, "--chat")) a->chat = 1;
        else if (!strcmp(f, "--hide-think")) a->hide_think = 1;
        else if (!strcmp(f, "--ids-log")) a->ids_log = VAL;
        else if (!strcmp(f, "--routing-out")) a->routing_out = VAL;
        else if (!strcmp(f, "-r")) { a->reps = (int)parse_long(f, v, 1, 1000); i++; }
        else if (!strcmp(f, "--json")) a->json = 1;
        else if (!strcmp(f, "-b") || !strcmp(f, "--batch")) { a->batch = (int)parse_long(f, v, 1, 1 << 16); i++; }
        else if (!strcmp(f, "--mtp")) a->mtp = 1;
        else if (!strcmp(f, "--no-mtp")) a->no_mtp = 1;
        else if (!strcmp(f, "--no-adaptive")) a->no_adapt = 1;
        else if (!strcmp(f, "--draft")) { a->n_draft = (int)parse_long(f, v, 1, 8); i++; }
        else if (!strcmp(f, "--check-tensors") && strcmp(cmd, "tokenize")) a->check_tensors = 1;
        else if (!strcmp(f, "--quant") && strcmp(cmd, "quantize")) { a->quant = parse_quant(f, v); i++; }
        else if (!strcmp(f, "--no-mmap") && runs_model) a->load = DSEEK_LOAD_READ;
        else if (!strcmp(f, "--lazy-mmap") && runs_model) a->load = DSEEK_LOAD_LAZY;
        else if (!strcmp(f, "--mmap") && runs_model) a->load = DSEEK_LOAD_POPULATE;
        else if (!strcmp(f, "--mlock") && runs_model) a->mlock = 1;
        else if (!strcmp(f, "--cache-type") && runs_model) { a->cache_type = parse_cache_type(f, v); i++; }
        else if (!strcmp(f, "--type") && !strcmp(cmd, "quantize")) { a->quant = parse_quant(f, v); i++; }
        else die_cmd("dseek %s: unknown option \"%s\" (see dseek %s --help)", cmd, f, cmd);
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

static dseek_model *open_model(const Args *a) {
    dseek_set_threads(a->threads);
    char err[1024];
    dseek_model *m;
    dseek_load_cfg cfg = {.quant = a->quant, .progress = 1, .load = a->load, .mlock = a->mlock};
    if (dseek_model_open_cfg(a->model, &cfg, &m, err, sizeof err) ||
        (a->check_tensors && dseek_model_check_tensors(m, err, sizeof err))) {
        fprintf(stderr, "dseek: %s\n", err);
        exit(2);
    }
    return m;
}

static dseek_session *open_session(const dseek_model *m, int ctx, int batch, int cache_type) {
    char err[1024];
    dseek_session *s;
    if (dseek_session_new_cache(m, ctx, batch, (dseek_cache_type)cache_type, &s, err, sizeof err)) {
        fprintf(stderr, "dseek: %s\n", err);
        exit(2);
    }
    return s;
}

/* Writes a float32 [rows, cols] array as .npy (version 1.0). */
/* Writes an array of little-endian float32 ('<f4') or int32 ('<i4') as .npy version 1.0;
 * shape has nd (1..3) sizes. */
static int write_npy(const char *path, const void *a, const char *descr, const size_t *shape, int nd) {
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    char dims[96] = "";
    size_t count = 1;
    for (int i = 0; i < nd; i++) {
        snprintf(dims + strlen(dims), sizeof dims - strlen(dims), "%zu, ", shape[i]);
        count *= shape[i];
    }
    if (nd > 1) dims[strlen(dims) - 2] = 0; /* (a, b) but (a,) */
    char hdr[192];
    int n = snprintf(hdr, sizeof hdr, "{'descr': '%s', 'fortran_order': False, 'shape': (%s), }", descr, dims);
    int total = 10 + n + 1, pad = (64 - total % 64) % 64;
    unsigned short hl = (unsigned short)(n + pad + 1);
    fwrite("\x93NUMPY\x01\x00", 1, 8, f);
    fputc(hl & 0xff, f);
    fputc(hl >> 8, f);
    fwrite(hdr, 1, (size_t)n, f);
    for (int i = 0; i < pad; i++) fputc(' ', f);
    fputc('\n', f);
    size_t w = fwrite(a, 4, count, f);
    return fclose(f) || w != count ? -1 : 0;
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
    dseek_model *m = open_model(&a);
    int V = dseek_model_info(m)->vocab_size;
    int step = a.decode ? 1 : a.chunk ? a.chunk : T;
    dseek_session *s = open_session(m, a.ctx ? a.ctx : T, step, a.cache_type);
    float *logits = malloc((size_t)T * (size_t)V * sizeof(float));
    float *mtp = a.mtp ? malloc((size_t)T * (size_t)V * sizeof(float)) : NULL;
    int *next = malloc((size_t)T * sizeof(int));
    if (!logits || !next || (a.mtp && !mtp)) die("%s", "out of memory for the logits");
    if (a.mtp && !dseek_model_info(m)->n_mtp) die("%s: --mtp: the model has no MTP layer", a.model);
    int *routes = NULL;
    if (a.routing_out) {
        const dseek_info *in = dseek_model_info(m);
        if (!in->experts_per_tok) die("%s: --routing-out: the model has no MoE layers", a.model);
        routes = calloc((size_t)(in->n_layers + in->n_mtp) * (size_t)T * (size_t)in->experts_per_tok, sizeof(int));
        if (!routes) die("%s", "out of memory");
        dseek_session_log_routing(s, routes, T);
    }
    for (int i = 0; i < T; i += step) {
        int n = T - i < step ? T - i : step;
        check(s, dseek_forward(s, tok + i, n, i, logits + (size_t)i * V, 1));
        if (!a.mtp) continue;
        /* the head at position j reads the token at j+1; after the last one, the main argmax */
        for (int j = i; j < i + n; j++) next[j - i] = j + 1 < T ? tok[j + 1] : argmax(logits + (size_t)j * V, V);
        check(s, dseek_mtp_forward(s, next, n, i, mtp + (size_t)i * V, 1));
    }
    size_t shape[3] = {(size_t)T, (size_t)V, 0};
    if (write_npy(a.out, a.mtp ? mtp : logits, "<f4", shape, 2)) die("%s: cannot write", a.out);
    if (a.routing_out) {
        /* [MoE layers, T, k] for the main model; [T, k] of the MTP layer with --mtp */
        const dseek_info *in = dseek_model_info(m);
        int k = in->experts_per_tok, nl = 0;
        int *sel = malloc((size_t)(in->n_layers + in->n_mtp) * (size_t)T * (size_t)k * sizeof(int));
        for (int l = a.mtp ? in->n_layers : 0; l < (a.mtp ? in->n_layers + 1 : in->n_layers); l++)
            if (dseek_layer_is_moe(m, l))
                memmove(sel + (size_t)nl++ * T * k, routes + (size_t)l * T * k, (size_t)T * k * sizeof(int));
        size_t rs[3] = {(size_t)nl, (size_t)T, (size_t)k};
        if (a.mtp ? write_npy(a.routing_out, sel, "<i4", rs + 1, 2) : write_npy(a.routing_out, sel, "<i4", rs, 3))
            die("%s: cannot write", a.routing_out);
        free(sel);
    }
    free(routes);
    free(logits);
    free(mtp);
    free(next);
    free(tok);
    dseek_session_free(s);
    dseek_model_free(m);
    return 0;
}

/* ---- text output: streamed detokenization, R1 thinking shown apart ---- */

typedef struct {
    dseek_detok_stream *ds;
    dseek_think think;
    int hide_think;
    int tty;                  /* stdout is a terminal: thinking in dim text */
    int in_think_shown;       /* a think block is open on screen */
} Printer;

static void print_part(void *ud, int in_think, const char *txt, size_t n) {
    Printer *p = ud;
    if (in_think && p->hide_think) return;
    if (in_think != p->in_think_shown) {
        if (in_think) fputs(p->tty ? "\x1b[2m" : "[thinking]\n", stdout);
        else fputs(p->tty ? "\x1b[0m\n" : "\n[/thinking]\n", stdout);
        p->in_think_shown = in_think;
    }
    fwrite(txt, 1, n, stdout);
}

static void printer_init(Printer *p, const dseek_tokenizer *tok, int hide_think, int starts_in_think) {
    memset(p, 0, sizeof *p);
    p->ds = dseek_detok_stream_new(tok, DSEEK_DETOK_SKIP_SPECIAL);
    if (!p->ds) die("%s", "out of memory");
    p->hide_think = hide_think;
    p->tty = isatty(1);
    dseek_think_init(&p->think, starts_in_think);
}

static void printer_push(Printer *p, int id) {
    size_t n;
    const char *t = dseek_detok_stream_push(p->ds, id, &n);
    if (n) dseek_think_push(&p->think, t, n, print_part, p);
    fflush(stdout);
}

static void printer_end(Printer *p) {
    size_t n;
    const char *t = dseek_detok_stream_flush(p->ds, &n);
    if (n) dseek_think_push(&p->think, t, n, print_part, p);
    dseek_think_flush(&p->think, print_part, p);
    if (p->in_think_shown) print_part(p, 0, "", 0);
    dseek_detok_stream_free(p->ds);
    fflush(stdout);
}

static dseek_tokenizer *open_tokenizer(const char *dir, const dseek_model *m) {
    char err[1024];
    dseek_tokenizer *tok;
    if (dseek_tokenizer_load(dir, &tok, err, sizeof err)) {
        fprintf(stderr, "dseek: %s\n", err);
        exit(2);
    }
    if (m && dseek_vocab_size(tok) > (size_t)dseek_model_info(m)->vocab_size) {
        fprintf(stderr, "dseek: %s/tokenizer.json: %zu token ids, more than the model's vocab_size %d\n", dir,
                dseek_vocab_size(tok), dseek_model_info(m)->vocab_size);
        exit(2);
    }
    return tok;
}

static char *slurp(const char *path, size_t *len) {
    FILE *f = strcmp(path, "-") ? fopen(path, "rb") : stdin;
    if (!f) die("%s: cannot open", path);
    size_t cap = 1 << 16, n = 0, r;
    char *b = malloc(cap + 1);
    while (b && (r = fread(b + n, 1, cap - n, f)) > 0)
        if ((n += r) == cap) b = realloc(b, (cap *= 2) + 1);
    if (!b) die("%s", "out of memory");
    if (f != stdin) fclose(f);
    b[n] = 0;
    *len = n;
    return b;
}

/* The prompt's ids: --tokens as given, else the text of -p/-f, through the chat template
 * with --chat. */
static int *prompt_ids(const Args *a, const dseek_tokenizer *tok, int *n) {
    if (a->tokens) return parse_tokens(a->tokens, n);
    if (!a->prompt && !a->file) die("%s", "run: give the prompt with -p TEXT, -f FILE or --tokens IDS");
    size_t len;
    char *text = a->file ? slurp(a->file, &len) : strdup(a->prompt);
    if (!a->file || a->chat) len = strlen(text); /* a chat message is a C string */
    if (len == 0) die("run: %s: the prompt is empty", a->file ? a->file : "-p");
    int *ids;
    size_t nid;
    if (a->chat) {
        dseek_chat_msg msgs[2];
        size_t k = 0;
        if (a->system) msgs[k++] = (dseek_chat_msg){"system", a->system};
        msgs[k++] = (dseek_chat_msg){"user", text};
        char *r = dseek_chat_render(tok, msgs, k, 1);
        if (!r) die("%s", "run --chat: the chat template could not be rendered");
        if (dseek_tokenize(tok, r, strlen(r), 0, &ids, &nid)) die("%s", "out of memory");
        free(r);
    } else if (dseek_tokenize(tok, text, len, dseek_add_bos_default(tok), &ids, &nid))
        die("%s", "out of memory");
    free(text);
    if (nid == 0) die("%s", "run: the prompt is empty");
    *n = (int)nid;
    return ids;
}

static void print_stats(const dseek_gen *g, int n, double seconds, int mtp) {
    dseek_gen_stats st;
    dseek_gen_stats_get(g, &st);
    fprintf(stderr, "\n[prompt: %ld tokens, %.2f tok/s; generation: %d tokens, %.2f tok/s", st.prompt_tokens,
            st.prompt_seconds > 0 ? st.prompt_tokens / st.prompt_seconds : 0.0, n,
            n > 1 && seconds > 0 ? (n - 1) / seconds : 0.0);
    if (mtp)
        fprintf(stderr, "; mtp: %ld drafts, %.1f%% accepted, %.2f tokens per forward, verify/forward %.2f in time, "
                        "%.2f in bytes, draft/forward %.2f in time, %.2f in bytes, without MTP %.2f tok/s "
                        "(measured 1-token forwards)%s",
                st.drafted, st.drafted ? 100.0 * st.accepted / st.drafted : 0.0,
                st.main_forwards ? (double)(st.tokens - 1) / st.main_forwards : 0.0,
                st.t_plain > 0 ? st.t_verify / st.t_plain : 0.0, st.b_verify / st.b_plain,
                st.t_plain > 0 ? st.t_draft / st.t_plain : 0.0, st.b_draft / st.b_plain,
                st.t_plain > 0 ? 1.0 / st.t_plain : 0.0, st.drafted && st.main_forwards * 2 > st.drafted * 2 + 8 ? " (drafting paused: not faster here)" : "");
    fprintf(stderr, "]\n");
}

/* Generates after ids[0..n) until eos, max_new tokens or the end of the context; each token
 * goes to emit(). Returns the count, and sets *ctx_full when the context ran out. */
typedef void (*emit_fn)(void *ud, int id);
static int generate(dseek_gen *g, dseek_session *s, const int *ids, int n, int max_new, int eos1, int eos2,
                    emit_fn emit, void *ud, int *ctx_full, double *seconds) {
    int first, out[16], k, got = 0;
    *ctx_full = 0;
    *seconds = 0;
    if (max_new <= 0) return 0;
    check(s, dseek_gen_feed(g, ids, n, &first));
    emit(ud, first);
    got = 1;
    if (first == eos1 || first == eos2) return got;
    double t0 = now_s();
    while (got < max_new) {
        if (dseek_gen_pos(g) >= dseek_session_ctx(s)) { *ctx_full = 1; break; }
        check(s, dseek_gen_step(g, out, &k));
        int stop = 0;
        for (int i = 0; i < k && got < max_new && !stop; i++) {
            emit(ud, out[i]);
            got++;
            stop = out[i] == eos1 || out[i] == eos2;
        }
        if (stop) break;
    }
    *seconds = now_s() - t0;
    return got;
}

typedef struct {
    Printer *pr;              /* text output, or NULL */
    int ids;                  /* print ids */
    int n;
    int *buf, cap, len;       /* the generated ids */
} Emit;

static void emit_token(void *ud, int id) {
    Emit *e = ud;
    if (e->ids) printf(e->n ? " %d" : "%d", id);
    else if (e->pr) printer_push(e->pr, id);
    if (e->ids) fflush(stdout);
    e->n++;
    if (e->buf && e->len < e->cap) e->buf[e->len++] = id;
}

static int cmd_run(int argc, char **argv) {
    Args a;
    parse_args(argc, argv, &a, "run");
    dseek_model *m = open_model(&a);
    const dseek_info *info = dseek_model_info(m);
    dseek_tokenizer *tok = a.tokens && a.ids ? NULL : open_tokenizer(a.model, m);
    if (a.tokens && !a.ids && !tok) die("%s", "run: text output needs tokenizer.json (or use --ids)");
    int T;
    int *ids = prompt_ids(&a, tok, &T);
    int ctx = a.ctx ? a.ctx : T + a.n_predict + 1;
    if (ctx > info->max_position && !a.ctx) ctx = T + a.n_predict + 1; /* the user asked for this much */
    dseek_session *s = open_session(m, ctx, a.batch ? a.batch : T < 512 ? T : 512, a.cache_type);
    dseek_gen_cfg gc = {.mtp = !a.no_mtp, .n_draft = a.n_draft ? a.n_draft : 1, .adaptive = !a.no_adapt};
    dseek_gen *g;
    if (dseek_gen_new(s, &a.samp, &gc, &g)) die("%s", "out of memory");
    Printer pr;
    if (!a.ids) printer_init(&pr, tok, a.hide_think, a.chat && dseek_chat_prompt_opens_think(tok));
    Emit e = {.pr = a.ids ? NULL : &pr, .ids = a.ids};
    int eos1 = info->eos_token_id, eos2 = tok ? dseek_eos_id(tok) : -1, full;
    if (!a.chat && a.tokens) eos1 = eos2 = -1; /* raw ids: exactly n tokens, as the reference does */
    double secs;
    if (T >= ctx) { fprintf(stderr, "dseek: the prompt (%d tokens) does not fit the context of %d (raise -c)\n", T, ctx); exit(2); }
    int n = generate(g, s, ids, T, a.n_predict, eos1, eos2, emit_token, &e, &full, &secs);
    if (!a.ids) printer_end(&pr);
    printf("\n");
    print_stats(g, n, secs, info->n_mtp && !a.no_mtp);
    if (full) {
        fprintf(stderr, "dseek: context full: %d tokens fill the context of %d before %d were generated (raise -c)\n",
                dseek_gen_pos(g), ctx, a.n_predict);
        exit(2);
    }
    dseek_gen_free(g);
    free(ids);
    dseek_tokenizer_free(tok);
    dseek_session_free(s);
    dseek_model_free(m);
    return 0;
}

static int cmd_tokenize(int argc, char **argv) {
    Args a;
    parse_args(argc, argv, &a, "tokenize");
    dseek_tokenizer *tok = open_tokenizer(a.model, NULL);
    if (!a.prompt && !a.file) die("%s", "tokenize: give the text with -p TEXT or -f FILE");
    size_t len;
    char *text = a.file ? slurp(a.file, &len) : strdup(a.prompt);
    if (!a.file) len = strlen(text);
    int *ids;
    size_t n;
    if (dseek_tokenize(tok, text, len, dseek_add_bos_default(tok), &ids, &n)) die("%s", "out of memory");
    for (size_t i = 0; i < n; i++) printf(i ? " %d" : "%d", ids[i]);
    printf("\n");
    free(ids);
    free(text);
    dseek_tokenizer_free(tok);
    return 0;
}

static void log_ids(FILE *f, const char *what, int turn, const int *ids, int n) {
    if (!f) return;
    fprintf(f, "turn %d %s:", turn, what);
    for (int i = 0; i < n; i++) fprintf(f, " %d", ids[i]);
    fprintf(f, "\n");
    fflush(f);
}

static int cmd_chat(int argc, char **argv) {
    Args a;
    parse_args(argc, argv, &a, "chat");
    int explicit_n = 0;
    for (int i = 2; i < argc; i++) explicit_n |= !strcmp(argv[i], "-n");
    int max_reply = explicit_n ? a.n_predict : 1 << 20;
    dseek_model *m = open_model(&a);
    const dseek_info *info = dseek_model_info(m);
    dseek_tokenizer *tok = open_tokenizer(a.model, m);
    if (dseek_chat_family_of(tok) == DSEEK_CHAT_NONE)
        fprintf(stderr, "dseek: %s has no chat template: each line is completed as plain text\n", a.model);
    int ctx = a.ctx ? a.ctx : info->max_position < 4096 ? info->max_position : 4096;
    dseek_session *s = open_session(m, ctx, 512 < ctx ? 512 : ctx, a.cache_type);
    dseek_gen_cfg gc = {.mtp = !a.no_mtp, .n_draft = a.n_draft ? a.n_draft : 1, .adaptive = !a.no_adapt};
    dseek_gen *g;
    if (dseek_gen_new(s, &a.samp, &gc, &g)) die("%s", "out of memory");
    FILE *log = a.ids_log ? fopen(a.ids_log, "w") : NULL;
    if (a.ids_log && !log) die("%s: cannot write", a.ids_log);
    int tty = isatty(0);
    size_t nmsg = 0, capmsg = 16;
    dseek_chat_msg *msgs = malloc(capmsg * sizeof *msgs);
    if (a.system) msgs[nmsg++] = (dseek_chat_msg){"system", strdup(a.system)};
    size_t base = nmsg;
    int *reply = malloc((size_t)ctx * sizeof(int));
    char *line = NULL;
    size_t lcap = 0;
    int turn = 0;
    if (tty) fprintf(stderr, "dseek chat (%s template, context %d). /reset to start over, /exit or Ctrl-D to quit.\n",
                     dseek_chat_family_name(dseek_chat_family_of(tok)), ctx);
    for (;;) {
        if (tty) { fputs("> ", stdout); fflush(stdout); }
        ssize_t len = getline(&line, &lcap, stdin);
        if (len < 0) break;
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r')) line[--len] = 0;
        if (!strcmp(line, "/exit") || !strcmp(line, "/quit")) break;
        if (!strcmp(line, "/reset")) {
            for (size_t i = base; i < nmsg; i++) free((char *)msgs[i].content);
            nmsg = base;
            fprintf(stderr, "[conversation reset]\n");
            continue;
        }
        if (len == 0) continue;
        if (nmsg + 2 > capmsg) msgs = realloc(msgs, (capmsg *= 2) * sizeof *msgs);
        msgs[nmsg++] = (dseek_chat_msg){"user", strdup(line)};
        int *ids;
        size_t nid;
        char *r = dseek_chat_family_of(tok) == DSEEK_CHAT_NONE ? strdup(line) : dseek_chat_render(tok, msgs, nmsg, 1);
        if (!r || dseek_tokenize(tok, r, strlen(r), dseek_chat_family_of(tok) == DSEEK_CHAT_NONE && dseek_add_bos_default(tok), &ids, &nid))
            die("%s", "chat: the template could not be rendered");
        free(r);
        if ((int)nid + 1 >= ctx) {
            fprintf(stderr, "[context full: this conversation needs %zu tokens of %d; /reset to start over]\n", nid, ctx);
            free((char *)msgs[--nmsg].content);
            free(ids);
            continue;
        }
        turn++;
        log_ids(log, "prompt", turn, ids, (int)nid);
        Printer pr;
        printer_init(&pr, tok, a.hide_think, dseek_chat_prompt_opens_think(tok));
        Emit e = {.pr = &pr, .buf = reply, .cap = ctx};
        int full;
        double secs;
        long before = 0;
        dseek_gen_stats st;
        dseek_gen_stats_get(g, &st);
        before = st.prompt_tokens;
        int n = generate(g, s, ids, (int)nid, max_reply, info->eos_token_id, dseek_eos_id(tok), emit_token, &e, &full,
                         &secs);
        printer_end(&pr);
        printf("\n");
        fflush(stdout);
        dseek_gen_stats_get(g, &st);
        if (log) fprintf(log, "turn %d computed: %ld of %zu\n", turn, st.prompt_tokens - before, nid);
        log_ids(log, "reply", turn, reply, e.len);
        if (full) fprintf(stderr, "[context full (%d tokens): /reset to start over]\n", ctx);
        /* the reply joins the conversation without its end-of-sentence token (the template adds it) */
        int keep = e.len;
        if (keep && (reply[keep - 1] == info->eos_token_id || reply[keep - 1] == dseek_eos_id(tok))) keep--;
        size_t tl = dseek_detokenize(tok, reply, (size_t)keep, DSEEK_DETOK_SKIP_SPECIAL, NULL, 0);
        char *text = malloc(tl + 1);
        if (!text) die("%s", "out of memory");
        dseek_detokenize(tok, reply, (size_t)keep, DSEEK_DETOK_SKIP_SPECIAL, text, tl + 1);
        msgs[nmsg++] = (dseek_chat_msg){"assistant", text};
        if (a.samp.seed) (void)n;
        free(ids);
    }
    for (size_t i = 0; i < nmsg; i++) free((char *)msgs[i].content);
    free(msgs);
    free(line);
    free(reply);
    if (log) fclose(log);
    dseek_gen_free(g);
    dseek_tokenizer_free(tok);
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

/* profile b - a */
static dseek_profile prof_delta(dseek_profile a, dseek_profile b) {
    return (dseek_profile){b.attention - a.attention, b.dense_mlp - a.dense_mlp, b.moe - a.moe, b.lm_head - a.lm_head,
                           b.mtp - a.mtp, b.experts_run - a.experts_run, b.mtp_experts_run - a.mtp_experts_run};
}

/* Read bandwidth sampled between the decoded tokens of a bench decode: one probe pass after
 * every step (plain and page-prefetched in turn when the page prefetch is on), so the
 * decode and the bandwidth it is held against are means over the same stretch of time. */
typedef struct {
    dseek_bw_probe *p;
    double t[2]; /* seconds of the plain and the prefetched passes */
    int n[2];
    double best; /* the fastest single pass, bytes/s */
} BwSample;

/* The better kind's mean rate in bytes/s (0 without passes). */
static double bw_rate(const BwSample *b) {
    double r = 0;
    for (int k = 0; k < 2; k++) {
        const double rk = b->t[k] > 0 ? b->n[k] * (double)dseek_bw_probe_bytes(b->p) / b->t[k] : 0;
        r = rk > r ? rk : r;
    }
    return r;
}

/* Decodes n tokens greedily after a context of `depth` tokens (tok[0..depth), untimed; none:
 * the BOS token alone), fills st and prof, and returns the decoded tokens per second over
 * the steps' own time. With bw, a probe pass follows every step (untimed for the decode). */
static double bench_decode(dseek_session *s, const dseek_info *info, const int *tok, int depth, int n, int mtp,
                           dseek_gen_stats *st, dseek_profile *prof, BwSample *bw) {
    dseek_sampler_cfg sc = {.temperature = 0, .top_p = 1};
    dseek_gen_cfg gc = {.mtp = mtp, .n_draft = 1, .adaptive = 1};
    dseek_gen *g;
    if (dseek_gen_new(s, &sc, &gc, &g)) die("%s", "out of memory");
    int bos = info->bos_token_id < info->vocab_size ? info->bos_token_id : 0, first, out[16], k, got = 1;
    check(s, depth > 0 ? dseek_gen_feed(g, tok, depth, &first) : dseek_gen_feed(g, &bos, 1, &first));
    dseek_profile p0;
    dseek_session_profile(s, &p0);
    double t = 0;
    while (got < n) {
        double t0 = now_s();
        check(s, dseek_gen_step(g, out, &k));
        t += now_s() - t0;
        got += k;
        if (bw) {
            const int kind = dseek_page_prefetch() ? (bw->n[0] + bw->n[1]) & 1 : 0;
            const double pt = dseek_bw_probe_pass(bw->p, kind), rate = pt > 0 ? dseek_bw_probe_bytes(bw->p) / pt : 0;
            bw->t[kind] += pt;
            bw->n[kind]++;
            bw->best = rate > bw->best ? rate : bw->best;
        }
    }
    dseek_session_profile(s, prof);
    *prof = prof_delta(p0, *prof);
    dseek_gen_stats_get(g, st);
    dseek_gen_free(g);
    return (got - 1) / t;
}


/* What speculative decoding costs here: one 1-token forward, one 2-token verify forward and
 * one MTP draft at the same position, repeated with fresh random tokens; per-part times give
 * the verify/forward ratio of a full DeepSeek-V3 (3 dense + 58 MoE layers) from the per-layer
 * costs of this model. Prints its findings; the best of `reps` is kept for each. */
static void bench_mtp_cost(dseek_session *s, const dseek_info *info, const dseek_model *m, int reps, int json) {
    const int P0 = 24;
    int nd = 0, nm = 0;
    for (int l = 0; l < info->n_layers; l++) dseek_layer_is_moe(m, l) ? nm++ : nd++;
    double best1 = 1e30, best2 = 1e30, bestd = 1e30;
    dseek_profile p1 = {0}, p2 = {0};
    uint64_t r = 7;
    int ctx[P0 + 2];
    float *lg = malloc(2 * (size_t)info->vocab_size * sizeof(float));
    if (!lg) die("%s", "out of memory");
    for (int rep = 0; rep < reps; rep++) {
        for (int i = 0; i < P0 + 2; i++) {
            r = r * 6364136223846793005ull + 1442695040888963407ull;
            ctx[i] = (int)((r >> 33) % (uint64_t)info->vocab_size);
        }
        check(s, dseek_forward(s, ctx, P0, 0, NULL, 0));
        check(s, dseek_mtp_forward(s, ctx + 1, P0 - 1, 0, NULL, 0)); /* the head's cache up to P0-2 */
        dseek_profile a, b, c;
        dseek_session_profile(s, &a);
        double t0 = now_s();
        check(s, dseek_forward(s, ctx + P0, 1, P0, lg, 0));
        double t1 = now_s();
        dseek_session_profile(s, &b);
        check(s, dseek_mtp_forward(s, ctx + P0, 1, P0 - 1, lg, 0));
        double t2 = now_s();
        dseek_session_profile(s, &c);
        check(s, dseek_forward(s, ctx + P0, 2, P0, lg, 1));
        double t3 = now_s();
        dseek_profile d;
        dseek_session_profile(s, &d);
        if (t1 - t0 < best1) { best1 = t1 - t0; p1 = prof_delta(a, b); }
        if (t2 - t1 < bestd) bestd = t2 - t1;
        if (t3 - t2 < best2) { best2 = t3 - t2; p2 = prof_delta(c, d); }
    }
    free(lg);
    /* per-layer costs, then DeepSeek-V3's 61 layers (3 dense, 58 MoE) */
    int L = info->n_layers;
    double a1 = p1.attention / L, a2 = p2.attention / L;
    double d1 = nd ? p1.dense_mlp / nd : 0, d2 = nd ? p2.dense_mlp / nd : 0;
    double m1 = nm ? p1.moe / nm : 0, m2 = nm ? p2.moe / nm : 0;
    double v3_1 = 61 * a1 + 3 * d1 + 58 * m1 + p1.lm_head, v3_2 = 61 * a2 + 3 * d2 + 58 * m2 + p2.lm_head;
    double u1 = nm ? (double)p1.experts_run / nm : 0, u2 = nm ? (double)p2.experts_run / nm : 0;
    double ratio = best2 / best1, draft = bestd / best1, ratio_v3 = v3_2 / v3_1, draft_v3 = bestd / v3_1;
    if (json) {
        printf("{\"test\": \"mtp_cost\", \"forward_ms\": %.3f, \"verify_ms\": %.3f, \"draft_ms\": %.3f, "
               "\"verify_over_forward\": %.3f, \"draft_over_forward\": %.3f, \"experts_per_moe_layer_1tok\": %.2f, "
               "\"experts_per_moe_layer_verify\": %.2f, \"v3_61_layers_verify_over_forward\": %.3f, "
               "\"v3_61_layers_draft_over_forward\": %.3f, \"v3_speedup_at_85\": %.3f, \"v3_speedup_at_90\": %.3f}\n",
               best1 * 1e3, best2 * 1e3, bestd * 1e3, ratio, draft, u1, u2, ratio_v3, draft_v3,
               1.85 / (ratio_v3 + draft_v3), 1.90 / (ratio_v3 + draft_v3));
        return;
    }
    printf("mtp cost (best of %d): 1-token forward %.2f ms, 2-token verify %.2f ms (x%.2f), one draft %.2f ms (x%.2f)\n",
           reps, best1 * 1e3, best2 * 1e3, ratio, bestd * 1e3, draft);
    printf("  per layer, 1 token -> 2 tokens: attention %.3f -> %.3f ms, dense MLP %.3f -> %.3f ms, MoE %.3f -> %.3f ms"
           " (%.1f -> %.1f experts run); lm_head %.2f -> %.2f ms\n",
           a1 * 1e3, a2 * 1e3, d1 * 1e3, d2 * 1e3, m1 * 1e3, m2 * 1e3, u1, u2, p1.lm_head * 1e3, p2.lm_head * 1e3);
    printf("  as a 61-layer DeepSeek-V3 (3 dense + 58 MoE): verify = %.2f x forward, draft = %.3f x forward;\n"
           "  speedup at 85%% / 90%% acceptance: x%.2f / x%.2f\n",
           ratio_v3, draft_v3, 1.85 / (ratio_v3 + draft_v3), 1.90 / (ratio_v3 + draft_v3));
}

static int cmd_bench(int argc, char **argv) {
    Args a;
    parse_args(argc, argv, &a, "bench");
    int P = a.n_prompt, N = a.n_predict, R = a.reps ? a.reps : 3, D = a.depth;
    int explicit_p = 0, explicit_n = 0;
    for (int i = 2; i < argc; i++) {
        explicit_p |= !strcmp(argv[i], "-p");
        explicit_n |= !strcmp(argv[i], "-n");
    }
    if (!explicit_p) P = 512;
    if (!explicit_n) N = 128;
    dseek_model *m = open_model(&a);
    const dseek_info *info = dseek_model_info(m);
    int need = P > D + N + 2 ? P : D + N + 2, nt = P > D ? P : D;
    dseek_session *s = open_session(m, a.ctx ? a.ctx : (need > 32 ? need : 32) + 16, nt > 512 ? 512 : nt > 24 ? nt : 24, a.cache_type);
    int *tok = malloc((size_t)(nt > 0 ? nt : 1) * sizeof(int));
    uint64_t r = 42;
    for (int i = 0; i < nt; i++) {
        r = r * 6364136223846793005ull + 1442695040888963407ull;
        tok[i] = i == 0 ? info->bos_token_id % info->vocab_size : (int)((r >> 33) % (uint64_t)info->vocab_size);
    }
    /* The roofline: this machine's read bandwidth, sampled between the tokens of every
     * timed decode and paired with it. A shared machine's bandwidth drifts over minutes (one
     * probe at the start put the same decode speed anywhere from 56% to 85% of it) and
     * swings from pass to pass (Zen 4 VM: the fastest of 100 passes of 576 MB 57% above
     * their mean), so a decode's mean speed is held against the mean of passes taken
     * during it, not against the fastest pass (reported beside it). Without a decode: the
     * best of six passes. */
    const size_t probe = (size_t)512 << 20;
    dseek_bw_probe *bp = N > 1 ? dseek_bw_probe_new(probe) : NULL;
    if (N > 1 && !bp)
        fprintf(stderr, "dseek: bench: no memory for the 512 MB bandwidth probe: decode speeds without a roofline\n");
    double bw = N > 1 ? 0 : dseek_memory_bandwidth(probe), bw_sum = 0, bw_best = 0;
    double bw_lo = N > 1 ? 1e300 : bw, bw_hi = N > 1 ? 0 : bw; /* the range of the decodes' bandwidths */
    double pp[1000] = {0}, tg[1000] = {0}, tgm[1000] = {0}, pct[1000] = {0};
    dseek_gen_stats st = {0}, stm = {0};
    dseek_profile dprof = {0}, pprof = {0}; /* where the fastest plain decode / prefill spent its time */
    double best_t = 0, best_pt = 0;
    int mtp = info->n_mtp && !a.no_mtp;
    /* one untimed round first (as llama-bench does): fresh session buffers fault in, caches warm */
    if (P > 0) check(s, dseek_forward(s, tok, P, 0, NULL, 0));
    if (N > 1) {
        dseek_profile p;
        bench_decode(s, info, tok, D, N < 8 ? N : 8, 0, &st, &p, NULL);
    }
    for (int rep = 0; rep < R; rep++) {
        if (P > 0) {
            dseek_profile p0, p1;
            dseek_session_profile(s, &p0);
            double t0 = now_s();
            check(s, dseek_forward(s, tok, P, 0, NULL, 0));
            double tt = now_s() - t0;
            pp[rep] = P / tt;
            dseek_session_profile(s, &p1);
            if (rep == 0 || tt < best_pt) { best_pt = tt; pprof = prof_delta(p0, p1); }
        }
        if (N > 1) {
            dseek_profile p;
            BwSample b1 = {bp, {0, 0}, {0, 0}, 0};
            tg[rep] = bench_decode(s, info, tok, D, N, 0, &st, &p, bp ? &b1 : NULL);
            const double b = bw_rate(&b1);
            bw_best = b1.best > bw_best ? b1.best : bw_best;
            bw_sum += b;
            bw_lo = b < bw_lo ? b : bw_lo;
            bw_hi = b > bw_hi ? b : bw_hi;
            pct[rep] = b > 0 ? 100 * tg[rep] * (double)info->decode_bytes_per_token / b : 0;
            double tt = (N - 1) / tg[rep]; /* seconds of this decode */
            if (rep == 0 || tt < best_t) { best_t = tt; dprof = p; }
            if (mtp) tgm[rep] = bench_decode(s, info, tok, D, N, 1, &stm, &p, NULL);
        }
    }
    double ppm, pps, tgmn, tgs, tmm, tms;
    mean_sd(pp, R, &ppm, &pps);
    mean_sd(tg, R, &tgmn, &tgs);
    mean_sd(tgm, R, &tmm, &tms);
    double pctm = 0, pcts = 0;
    if (N > 1) {
        bw = bw_sum / R; /* the mean of the decodes' bandwidths */
        mean_sd(pct, R, &pctm, &pcts);
    }
    double roof = bw > 0 ? bw / (double)info->decode_bytes_per_token : 0;
    /* the mean decode against the fastest single pass: a burst bound, for reference */
    double pct_best = bw_best > 0 ? 100 * tgmn * (double)info->decode_bytes_per_token / bw_best : 0;
    dseek_bw_probe_free(bp);
    int n_moe = 0;
    for (int l = 0; l < info->n_layers; l++) n_moe += dseek_layer_is_moe(m, l);
    long rss = rss_kib("VmHWM:");
    if (a.json) {
        printf("{\"model\": \"%s\", \"params\": %zu, \"model_bytes\": %zu, \"decode_bytes_per_token\": %zu, "
               "\"cache_bytes_per_token\": %zu, \"bandwidth_gbs\": %.3f, \"bandwidth_min_gbs\": %.3f, "
               "\"bandwidth_max_gbs\": %.3f, \"bandwidth_best_pass_gbs\": %.3f, \"peak_rss_mib\": %.1f, "
               "\"weights_in\": \"%s\", \"kernel\": \"%s\", \"page_prefetch\": %d}\n",
               a.model, info->n_params, info->weight_bytes, info->decode_bytes_per_token, dseek_session_cache_bytes_per_token(s),
               bw / 1e9, bw_lo / 1e9, bw_hi / 1e9, (N > 1 ? bw_best : bw) / 1e9, rss / 1024.0, info->weights_in, dseek_kernel_name(), dseek_page_prefetch());
        if (P > 0) printf("{\"test\": \"pp%d\", \"tokens_per_s\": %.3f, \"sd\": %.3f, \"reps\": %d}\n", P, ppm, pps, R);
        if (N > 1) printf("{\"test\": \"tg%d\", \"tokens_per_s\": %.3f, \"sd\": %.3f, \"reps\": %d, \"depth\": %d, \"roofline_tokens_per_s\": %.3f, \"roofline_pct\": %.1f, \"roofline_pct_sd\": %.1f, \"roofline_pct_best_pass\": %.1f}\n",
                          N, tgmn, tgs, R, D, roof, pctm, pcts, pct_best);
        if (P > 0)
            printf("{\"test\": \"pp%d_parts\", \"ms\": %.3f, \"attention_ms\": %.3f, \"dense_mlp_ms\": %.3f, "
                   "\"moe_ms\": %.3f, \"experts_per_moe_layer\": %.2f}\n",
                   P, 1e3 * best_pt, 1e3 * pprof.attention, 1e3 * pprof.dense_mlp, 1e3 * pprof.moe,
                   n_moe ? (double)pprof.experts_run / n_moe : 0);
        if (N > 1)
            printf("{\"test\": \"tg%d_parts\", \"ms_per_token\": %.3f, \"attention_ms\": %.3f, \"dense_mlp_ms\": %.3f, "
                   "\"moe_ms\": %.3f, \"lm_head_ms\": %.3f, \"experts_per_moe_layer\": %.2f}\n",
                   N, 1e3 * best_t / (N - 1), 1e3 * dprof.attention / (N - 1), 1e3 * dprof.dense_mlp / (N - 1),
                   1e3 * dprof.moe / (N - 1), 1e3 * dprof.lm_head / (N - 1),
                   n_moe ? (double)dprof.experts_run / (N - 1) / n_moe : 0);
        if (N > 1 && mtp)
            printf("{\"test\": \"tg%d_mtp\", \"tokens_per_s\": %.3f, \"sd\": %.3f, \"reps\": %d, \"speedup\": %.3f, "
                   "\"acceptance\": %.4f, \"tokens_per_forward\": %.3f, \"verify_over_forward\": %.3f, \"draft_over_forward\": %.3f}\n",
                   N, tmm, tms, R, tmm / tgmn, stm.drafted ? (double)stm.accepted / stm.drafted : 0,
                   stm.main_forwards ? (double)(stm.tokens - 1) / stm.main_forwards : 0,
                   stm.t_plain > 0 ? stm.t_verify / stm.t_plain : 0, stm.t_plain > 0 ? stm.t_draft / stm.t_plain : 0);
    } else {
        printf("model: %s\n  %.3f B params, %.2f GiB of weights, decode reads %.3f GiB/token, latent cache %.1f KiB/token (%s)\n",
               a.model, info->n_params / 1e9, info->weight_bytes / 1073741824.0,
               info->decode_bytes_per_token / 1073741824.0, dseek_session_cache_bytes_per_token(s) / 1024.0,
               a.cache_type == DSEEK_CACHE_BF16 ? "bf16" : "f32");
        if (N > 1)
            printf("  weights in %s; memory read bandwidth between the decoded tokens: %.1f GB/s (%.1f-%.1f; fastest "
                   "pass %.1f); peak resident memory %.1f MiB\n",
                   info->weights_in, bw / 1e9, bw_lo / 1e9, bw_hi / 1e9, bw_best / 1e9, rss / 1024.0);
        else
            printf("  weights in %s; memory read bandwidth (measured now): %.1f GB/s; peak resident memory %.1f MiB\n",
                   info->weights_in, bw / 1e9, rss / 1024.0);
        printf("  kernels %s, page prefetch %s\n", dseek_kernel_name(), dseek_page_prefetch() ? "on" : "off");
        if (P > 0) printf("pp%-5d %9.2f +- %.2f tok/s   (%d reps)\n", P, ppm, pps, R);
        if (N > 1) {
            char label[48]; /* tg128, or tg128 @ d4096 after a context of 4096 tokens */
            snprintf(label, sizeof label, D > 0 ? "tg%d @ d%d" : "tg%d", N, D);
            printf("%-7s %9.2f +- %.2f tok/s   (%.0f%% +- %.0f of the bandwidth roofline, %.2f tok/s on average; "
                   "%.0f%% of the fastest pass)\n",
                   label, tgmn, tgs, pctm, pcts, roof, pct_best);
        }
        if (P > 0)
            printf("          %.1f ms per prefill: attention %.1f, dense MLP %.1f, MoE %.1f (%.1f experts per layer)\n",
                   1e3 * best_pt, 1e3 * pprof.attention, 1e3 * pprof.dense_mlp, 1e3 * pprof.moe,
                   n_moe ? (double)pprof.experts_run / n_moe : 0);
        if (N > 1)
            printf("          per token %.2f ms: attention %.2f, dense MLP %.2f, MoE %.2f (%.1f experts per layer), "
                   "lm_head %.2f, rest %.2f\n",
                   1e3 * best_t / (N - 1), 1e3 * dprof.attention / (N - 1), 1e3 * dprof.dense_mlp / (N - 1),
                   1e3 * dprof.moe / (N - 1), n_moe ? (double)dprof.experts_run / (N - 1) / n_moe : 0,
                   1e3 * dprof.lm_head / (N - 1),
                   1e3 * (best_t - dprof.attention - dprof.dense_mlp - dprof.moe - dprof.lm_head) / (N - 1));
        if (N > 1 && mtp)
            printf("tg%-5d %9.2f +- %.2f tok/s with MTP (x%.2f): acceptance %.1f%%, %.2f tokens per main forward,\n"
                   "          verify forward = %.2f x a 1-token forward, one draft = %.2f x a forward\n",
                   N, tmm, tms, tmm / tgmn, stm.drafted ? 100.0 * stm.accepted / stm.drafted : 0,
                   stm.main_forwards ? (double)(stm.tokens - 1) / stm.main_forwards : 0,
                   stm.t_plain > 0 ? stm.t_verify / stm.t_plain : 0, stm.t_plain > 0 ? stm.t_draft / stm.t_plain : 0);
    }
    if (mtp && N > 1) bench_mtp_cost(s, info, m, R > 3 ? R : 3, a.json);
    free(tok);
    dseek_session_free(s);
    dseek_model_free(m);
    return 0;
}

static int cmd_quantize(int argc, char **argv) {
    Args a;
    parse_args(argc, argv, &a, "quantize");
    if (!a.out) die("%s", "quantize: -o OUT (the output folder) is required");
    if (!a.quant) die("%s", "quantize: --type q8_0|q4_0|q4_k is required");
    dseek_set_threads(a.threads);
    char err[1024];
    double t0 = now_s();
    if (dseek_quantize(a.model, a.out, a.quant, 1, err, sizeof err)) {
        fprintf(stderr, "dseek: %s\n", err);
        return 2;
    }
    fprintf(stderr, "dseek: wrote %s (%.1f s)\n", a.out, now_s() - t0);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")) {
        fprintf(stderr, "usage: dseek COMMAND [options]   (dseek COMMAND --help for each)\n"
                        "commands:\n"
                        "  logits   write the logits of a token sequence as .npy\n"
                        "  run      complete a prompt (streamed text, or ids)\n"
                        "  chat     interactive chat\n"
                        "  tokenize print the token ids of a text\n"
                        "  bench    measure prefill and decode speed\n"
                        "  quantize write a model with Q8_0 / Q4_0 / Q4_K matrices\n");
        return argc < 2 ? 2 : 0;
    }
    if (!strcmp(argv[1], "logits")) return cmd_logits(argc, argv);
    if (!strcmp(argv[1], "run")) return cmd_run(argc, argv);
    if (!strcmp(argv[1], "bench")) return cmd_bench(argc, argv);
    if (!strcmp(argv[1], "chat")) return cmd_chat(argc, argv);
    if (!strcmp(argv[1], "tokenize")) return cmd_tokenize(argc, argv);
    if (!strcmp(argv[1], "quantize")) return cmd_quantize(argc, argv);
    fprintf(stderr, "dseek: unknown command \"%s\" (see dseek --help)\n", argv[1]);
    return 2;
}
