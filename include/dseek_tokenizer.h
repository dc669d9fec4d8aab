/* dseek_tokenizer.h - public API of dseek's tokenizer section.
 *
 * Loads a Hugging Face `tokenizer.json` (BPE model, ByteLevel) plus
 * `tokenizer_config.json`, encodes text to ids, decodes ids to text (whole or
 * streaming), renders DeepSeek chat templates and splits R1-style <think>
 * blocks out of streamed output. Depends on libc, cJSON and PCRE2 only.
 *
 * Conventions: functions that can fail return 0 on success and non-zero on
 * error; those that take `char *err, size_t errlen` write one line naming the
 * file and field there. A loaded tokenizer is read-only: it can be shared by
 * threads, every call keeps its scratch state on its own.
 *
 * (To be merged into include/dseek.h.) */
#ifndef DSEEK_TOKENIZER_H
#define DSEEK_TOKENIZER_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

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

#ifdef __cplusplus
}
#endif
#endif /* DSEEK_TOKENIZER_H */
