/* dseek.h - public API of the dseek engine (src/dseek.c).
 *
 * Two objects:
 *   dseek_model    the checkpoint: config + mmapped weights; read-only once open.
 *   dseek_session  one conversation over a model: activations and the latent KV cache.
 *
 * Library calls never exit: they return 0 on success and a non-zero DSEEK_E* code on
 * failure, with a one-line message (naming the file and the field where there is one)
 * in the caller's buffer or in dseek_session_error(). */
#ifndef DSEEK_H
#define DSEEK_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum {
    DSEEK_OK = 0,
    DSEEK_EIO = 1,      /* a file cannot be opened or read */
    DSEEK_EFORMAT = 2,  /* a file is malformed or disagrees with the config */
    DSEEK_EUNSUP = 3,   /* a config asks for something dseek does not support */
    DSEEK_ENOMEM = 4,   /* out of memory */
    DSEEK_EARG = 5,     /* bad argument: token id out of range, context full, ... */
};

typedef struct dseek_model dseek_model;
typedef struct dseek_session dseek_session;

/* What a caller may want to know about an open model. */
typedef struct {
    int vocab_size;          /* rows of lm_head */
    int hidden_size;         /* D */
    int n_layers;            /* num_hidden_layers (without the MTP layers) */
    int n_mtp;               /* num_nextn_predict_layers present and loaded */
    int bos_token_id;        /* from config.json */
    int eos_token_id;        /* from config.json */
    int max_position;        /* max_position_embeddings */
    int experts_per_tok;     /* k of the MoE layers, 0 without MoE */
    size_t n_params;         /* parameters of the weights in use */
    size_t weight_bytes;     /* bytes of those weights as stored */
    size_t cache_bytes_per_token; /* latent cache bytes per token, all layers */
    size_t decode_bytes_per_token; /* weight bytes one decoded token reads */
    const char *matrix_dtype; /* dtype holding most matrix bytes: "BF16", "F8_E4M3", "q4_0", ... */
    const char *weights_in;   /* where the weight files went (DSEEK_LOAD_*): "huge-page memory",
                                 "mmap" or "mmap, lazy" */
} dseek_info;

/* ---- model ---- */

/* Opens the Hugging Face checkpoint folder `dir` (config.json plus model.safetensors or
 * shards listed in model.safetensors.index.json). Every tensor is bound and checked
 * against the config before this returns. On failure *out is NULL and err holds the
 * message. */
int dseek_model_open(const char *dir, dseek_model **out, char *err, size_t errlen);
void dseek_model_free(dseek_model *m);

/* Weight quantization (README "Quantized models"): dseek's block formats. */
enum { DSEEK_QUANT_NONE = 0, DSEEK_QUANT_Q8_0 = 1, DSEEK_QUANT_Q4_0 = 2, DSEEK_QUANT_Q4_K = 3 };
/* "q8_0" -> DSEEK_QUANT_Q8_0, ...; -1 for an unknown name. */
int dseek_quant_parse(const char *name);

/* How the weight files get into memory (README "Loading and memory"). */
enum {
    DSEEK_LOAD_AUTO = 0,      /* default: READ when the weight files fit in the memory available
                                 now with room to spare (and no --quant), else POPULATE */
    DSEEK_LOAD_LAZY = 1,      /* mmap, pages read on first use (fast start, slow first tokens) */
    DSEEK_LOAD_READ = 2,      /* no mmap: read into anonymous memory backed by huge pages */
    DSEEK_LOAD_POPULATE = 3   /* mmap, every page read in at load (MAP_POPULATE) */
};

typedef struct {
    int quant;                /* DSEEK_QUANT_*: quantize the matrices in memory while loading */
    int progress;             /* non-zero: a progress bar on stderr while doing so (big models) */
    int load;                 /* DSEEK_LOAD_* */
    int mlock;                /* non-zero: lock the weights in RAM (mlock); an error if refused */
} dseek_load_cfg;
/* dseek_model_open with options (cfg may be NULL: the defaults, as dseek_model_open). */
int dseek_model_open_cfg(const char *dir, const dseek_load_cfg *cfg, dseek_model **out, char *err, size_t errlen);

/* Writes the checkpoint in `dir` with its matrices quantized to `quant` as a dseek model in
 * out_dir (created if missing): model.safetensors plus config.json and the tokenizer files.
 * Streams tensor by tensor; progress on stderr when `progress` is set. */
int dseek_quantize(const char *dir, const char *out_dir, int quant, int progress, char *err, size_t errlen);

/* The matrix-product kernels in use: "avx512-vnni", "avx2" or "portable" (the best this CPU
 * runs, or what the environment variable DSEEK_KERNEL names, for tests). */
const char *dseek_kernel_name(void);
/* 1 if the weight-streaming loops prefetch each page ahead (on by default but on AMD family
 * 19h, where it reads slower; DSEEK_PAGE_PREFETCH=0|1 decides instead), else 0. */
int dseek_page_prefetch(void);
const dseek_info *dseek_model_info(const dseek_model *m);
/* 1 if decoder layer li (MTP layers follow the main ones) is a MoE layer. */
int dseek_layer_is_moe(const dseek_model *m, int li);
/* Reads every weight of the checkpoint (every tensor of its safetensors files) looking for
 * NaN and Inf: 0 if there is none, else DSEEK_EFORMAT and a message naming the file, the
 * tensor and the element. Opt-in (it reads all the weights once); the small tensors copied
 * to float32 at open (norms, router, bias) are always checked, and a forward pass whose
 * logits hold NaN or Inf fails with DSEEK_EFORMAT. */
int dseek_model_check_tensors(const dseek_model *m, char *err, size_t errlen);

/* ---- session ---- */

/* A session with a latent cache for n_ctx positions and room for up to n_batch tokens per
 * internal forward step (longer inputs are split into steps). Everything a forward call
 * needs is allocated here. */
int dseek_session_new(const dseek_model *m, int n_ctx, int n_batch, dseek_session **out,
                      char *err, size_t errlen);

/* What the latent cache holds: float32 (the default), or bfloat16, half the memory and half
 * the cache bytes a decode step reads at long contexts, for latents rounded to 8 significant
 * bits (logits move by under 1e-2 on the reference cases). */
typedef enum { DSEEK_CACHE_F32 = 0, DSEEK_CACHE_BF16 = 1 } dseek_cache_type;
/* dseek_session_new with the cache's element type. */
int dseek_session_new_cache(const dseek_model *m, int n_ctx, int n_batch, dseek_cache_type cache_type,
                            dseek_session **out, char *err, size_t errlen);
/* Bytes of latent cache per position (every layer, MTP included). */
size_t dseek_session_cache_bytes_per_token(const dseek_session *s);
void dseek_session_free(dseek_session *s);
const char *dseek_session_error(const dseek_session *s);
int dseek_session_ctx(const dseek_session *s);

/* Seconds spent so far in each part of the model (for bench), and routed expert MLPs run
 * (each counted once per forward step however many tokens chose it). */
typedef struct {
    double attention, dense_mlp, moe, lm_head; /* main model */
    double mtp;                                 /* the MTP head, all of it */
    long experts_run, mtp_experts_run;
} dseek_profile;
void dseek_session_profile(const dseek_session *s, dseek_profile *p);

/* Diagnostics: from now on, every MoE layer li records the experts chosen for positions
 * below n_pos in buf[(li * n_pos + pos) * k + i] (k = num_experts_per_tok; buf holds
 * (n_layers + n_mtp) * n_pos * k ints; rows of dense layers are left alone). NULL stops. */
void dseek_session_log_routing(dseek_session *s, int *buf, int n_pos);

/* Runs tokens[0..n) at positions pos..pos+n-1 through the model, writing their latent
 * cache entries (entries at positions >= pos are overwritten: rewinding is just calling
 * with a smaller pos). logits receives the [n, vocab] rows when all_rows is non-zero,
 * else only the row of the last token (vocab floats); it may be NULL. */
int dseek_forward(dseek_session *s, const int *tokens, int n, int pos, float *logits, int all_rows);

/* The MTP (next-n) head over positions pos..pos+n-1, which must lie inside the last main
 * forward step (its final-normed hidden states are kept): next_tokens[i] is the token at
 * position pos+i+1, and logits row i predicts the token at pos+i+2. The head has its own
 * latent cache. Needs a model with num_nextn_predict_layers >= 1. */
int dseek_mtp_forward(dseek_session *s, const int *next_tokens, int n, int pos, float *logits, int all_rows);

/* ---- sampling ---- */

typedef struct {
    float temperature;  /* 0 = greedy */
    int top_k;          /* 0 = off */
    float top_p;        /* 1 = off */
    float min_p;        /* 0 = off */
    uint64_t seed;
} dseek_sampler_cfg;

typedef struct dseek_sampler dseek_sampler;
dseek_sampler *dseek_sampler_new(const dseek_sampler_cfg *cfg, int vocab_size);
void dseek_sampler_free(dseek_sampler *sp);
/* Picks the next token from one row of logits (the row is not modified). */
int dseek_sample(dseek_sampler *sp, const float *logits);

/* ---- generation (with MTP speculative decoding) ---- */

typedef struct {
    int mtp;                  /* draft with the MTP head when the model has one */
    int n_draft;              /* drafts chained per step, 1..8 */
    int adaptive;             /* draft only while it is measured to be faster */
} dseek_gen_cfg;

typedef struct {
    long tokens;              /* generated tokens (including the one sampled after the prompt) */
    long prompt_tokens;       /* prompt tokens computed (cached ones not counted) */
    double prompt_seconds;
    long main_forwards;       /* decode forwards of the main model */
    long drafted, accepted;   /* MTP drafts made and accepted */
    double acceptance;        /* running acceptance rate */
    double t_plain, t_verify, t_draft; /* running seconds: 1-token forward, verify forward, one draft */
    double b_plain, b_verify, b_draft; /* running weight bytes read by the same (what adaptive drafting
                                          decides on: bandwidth-bound, and the same on every run) */
} dseek_gen_stats;

typedef struct dseek_gen dseek_gen;
int dseek_gen_new(dseek_session *s, const dseek_sampler_cfg *scfg, const dseek_gen_cfg *gcfg, dseek_gen **out);
void dseek_gen_free(dseek_gen *g);
/* Sets the context to tokens[0..n) (reusing the cached common prefix) and samples the next
 * token into *first. */
int dseek_gen_feed(dseek_gen *g, const int *tokens, int n, int *first);
/* Generates the next 1..n_draft+1 tokens into out[] (room for 9), count in *n_out. */
int dseek_gen_step(dseek_gen *g, int *out, int *n_out);
void dseek_gen_stats_get(const dseek_gen *g, dseek_gen_stats *st);
int dseek_gen_pos(const dseek_gen *g);

/* ============================ tokenizer ============================ */

/* ----------------------------------------------------------------------------
 * Loading */

typedef struct dseek_tokenizer dseek_tokenizer;

/* Loads DIR/tokenizer.json and DIR/tokenizer_config.json. */
int  dseek_tokenizer_load(const char *dir, dseek_tokenizer **out,
                          char *err, size_t errlen);

/* Same, from explicit paths; config_path may be NULL (then: no bos/eos, no
 * add_bos_token, no chat template). */
int  dseek_tokenizer_load_files(const char *tokenizer_json,
                                const char *config_path,
                                dseek_tokenizer **out,
                                char *err, size_t errlen);

void dseek_tokenizer_free(dseek_tokenizer *tok);

size_t dseek_vocab_size(const dseek_tokenizer *tok);   /* max id + 1 */
int  dseek_bos_id(const dseek_tokenizer *tok);         /* -1 if none */
int  dseek_eos_id(const dseek_tokenizer *tok);         /* -1 if none */
int  dseek_add_bos_default(const dseek_tokenizer *tok);/* add_bos_token */

/* Id of a piece as stored in the vocabulary (e.g. "Ġthe", "<｜User｜>");
 * added tokens are looked up by content first. -1 if absent. */
int  dseek_token_id(const dseek_tokenizer *tok, const char *piece);

/* The stored piece of an id (vocab form, e.g. "Ġthe"), NULL if invalid. */
const char *dseek_token_piece(const dseek_tokenizer *tok, int id);

/* 1 if id is an added token flagged "special" (bos, eos, pad...). */
int  dseek_token_is_special(const dseek_tokenizer *tok, int id);

/* ----------------------------------------------------------------------------
 * Encoding */

/* Encodes len bytes of text (any bytes: invalid UTF-8 is encoded through its
 * bytes). Prepends the bos id when add_bos is non-zero and a bos exists.
 * On success *ids is malloc'ed (caller frees; NULL when *n_ids is 0).
 * Returns 0, or -1 when out of memory (or on a regex run-time error). */
int  dseek_tokenize(const dseek_tokenizer *tok, const char *text, size_t len,
                    int add_bos, int **ids, size_t *n_ids);

/* ----------------------------------------------------------------------------
 * Decoding */

#define DSEEK_DETOK_RAW          1  /* bytes as decoded, no UTF-8 repair */
#define DSEEK_DETOK_SKIP_SPECIAL 2  /* drop special added tokens */

/* Decodes ids into out (snprintf-like): writes at most cap-1 bytes and a NUL
 * (nothing if cap is 0) and returns the length of the whole text. Without
 * DSEEK_DETOK_RAW, invalid UTF-8 becomes U+FFFD (one per maximal invalid
 * subpart). Invalid ids are skipped. */
size_t dseek_detokenize(const dseek_tokenizer *tok, const int *ids, size_t n,
                        int flags, char *out, size_t cap);

/* Streaming decoder: push one id at a time, get back only complete UTF-8
 * characters (a character split across tokens is held back until complete;
 * bytes that can no longer become valid come out as U+FFFD). */
typedef struct dseek_detok_stream dseek_detok_stream;

dseek_detok_stream *dseek_detok_stream_new(const dseek_tokenizer *tok,
                                           int flags);
/* Returns the text ready for output (valid until the next call on s; NUL
 * terminated) and its length in *len; NULL when out of memory. */
const char *dseek_detok_stream_push(dseek_detok_stream *s, int id,
                                    size_t *len);
/* Emits what is still held back (as U+FFFD) and resets the stream. */
const char *dseek_detok_stream_flush(dseek_detok_stream *s, size_t *len);
void dseek_detok_stream_free(dseek_detok_stream *s);

/* ----------------------------------------------------------------------------
 * Chat templates */

typedef enum {
    DSEEK_CHAT_NONE = 0,   /* no template: plain completion */
    DSEEK_CHAT_V2,         /* DeepSeek-V2(-Lite)-Chat: "User: ...\n\nAssistant:" */
    DSEEK_CHAT_V3,         /* DeepSeek-V3: <｜User｜>...<｜Assistant｜> */
    DSEEK_CHAT_R1          /* DeepSeek-R1: V3 + </think> stripping */
} dseek_chat_family;

typedef struct {
    const char *role;      /* "system", "user" or "assistant" */
    const char *content;   /* UTF-8 text */
} dseek_chat_msg;

dseek_chat_family dseek_chat_family_of(const dseek_tokenizer *tok);
const char *dseek_chat_family_name(dseek_chat_family f);

/* Renders a conversation as the family's Jinja chat_template does (the bos
 * string included: tokenize the result with add_bos = 0). NONE renders the
 * bos string (if add_bos_token) and the contents joined by "\n\n".
 * Returns a malloc'ed string, or NULL on an unknown role or out of memory. */
char *dseek_chat_render(const dseek_tokenizer *tok, const dseek_chat_msg *msgs,
                        size_t n, int add_generation_prompt);

/* 1 if the family's generation prompt already opens a think block (R1
 * templates ending in "<｜Assistant｜><think>\n"): start the think splitter
 * inside. */
int  dseek_chat_prompt_opens_think(const dseek_tokenizer *tok);

/* ----------------------------------------------------------------------------
 * <think> splitter for streamed output */

typedef struct {
    int    in_think;       /* 1 while inside <think> ... </think> */
    size_t matched;        /* bytes of the current tag matched so far */
} dseek_think;

/* Called for each run of text; in_think tells on which side it lies. The
 * tags themselves are never passed. */
typedef void (*dseek_think_cb)(void *ud, int in_think, const char *s,
                               size_t n);

void dseek_think_init(dseek_think *t, int start_inside);
/* Feeds streamed text; tags may be split across calls (partial tags are held
 * back and emitted later). */
void dseek_think_push(dseek_think *t, const char *s, size_t n,
                      dseek_think_cb cb, void *ud);
/* End of stream: emits a held-back partial tag as text. */
void dseek_think_flush(dseek_think *t, dseek_think_cb cb, void *ud);

/* ---- machine ---- */

/* Measured read bandwidth in bytes/s over a buffer of `bytes`: the best of six passes, a
 * burst figure (0 on failure). */
double dseek_memory_bandwidth(size_t bytes);

/* A read-bandwidth probe for sampling bandwidth between other work (the bench interleaves
 * passes with decoded tokens): a buffer of about `bytes` in huge pages (NULL: no memory),
 * read in parallel, one whole pass per call. dseek_bw_probe_pass returns the seconds of one
 * pass; page_prefetch != 0 reads it touching pages ahead as the kernels do (a plain read
 * when the engine's page prefetch is off). */
typedef struct dseek_bw_probe dseek_bw_probe;
dseek_bw_probe *dseek_bw_probe_new(size_t bytes);
size_t dseek_bw_probe_bytes(const dseek_bw_probe *p);
double dseek_bw_probe_pass(dseek_bw_probe *p, int page_prefetch);
void dseek_bw_probe_free(dseek_bw_probe *p);

/* ---- threads ---- */

/* Sets the number of threads the engine (OpenMP and OpenBLAS) uses; <= 0 means all cores. */
void dseek_set_threads(int n);

#ifdef __cplusplus
}
#endif
#endif
