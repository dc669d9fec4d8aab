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
    size_t n_params;         /* parameters of the weights in use */
    size_t weight_bytes;     /* bytes of those weights as stored */
    size_t cache_bytes_per_token; /* latent cache bytes per token, all layers */
} dseek_info;

/* ---- model ---- */

/* Opens the Hugging Face checkpoint folder `dir` (config.json plus model.safetensors or
 * shards listed in model.safetensors.index.json). Every tensor is bound and checked
 * against the config before this returns. On failure *out is NULL and err holds the
 * message. */
int dseek_model_open(const char *dir, dseek_model **out, char *err, size_t errlen);
void dseek_model_free(dseek_model *m);
const dseek_info *dseek_model_info(const dseek_model *m);

/* ---- session ---- */

/* A session with a latent cache for n_ctx positions and room for up to n_batch tokens per
 * internal forward step (longer inputs are split into steps). Everything a forward call
 * needs is allocated here. */
int dseek_session_new(const dseek_model *m, int n_ctx, int n_batch, dseek_session **out,
                      char *err, size_t errlen);
void dseek_session_free(dseek_session *s);
const char *dseek_session_error(const dseek_session *s);
int dseek_session_ctx(const dseek_session *s);

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

/* ---- threads ---- */

/* Sets the number of threads the engine (OpenMP and OpenBLAS) uses; <= 0 means all cores. */
void dseek_set_threads(int n);

#ifdef __cplusplus
}
#endif
#endif
