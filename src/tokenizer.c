/* ============================================================================
 * Tokenizer
 *
 * Hugging Face `tokenizer.json` (BPE model, ByteLevel byte mapping, Split
 * pre-tokenizers driven by PCRE2) plus `tokenizer_config.json` (bos/eos,
 * add_bos_token, chat template family). Encoding: added tokens first (longest
 * match), then normalizer, pre-tokenizer, BPE merges by rank. Decoding: whole
 * or streaming, with UTF-8 repair. Also DeepSeek chat templates and an R1
 * <think> splitter.
 *
 * Written to be pasted into src/dseek.c: depends on libc, cJSON and PCRE2;
 * every helper is static and prefixed tk_, public symbols are dseek_.
 * ========================================================================== */

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <cjson/cJSON.h>

#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dseek_tokenizer.h"

/* ----------------------------------------------------------------------------
 * Small utilities: errors, growable buffers, files, UTF-8
 * ------------------------------------------------------------------------- */

#define TK_MAX_ID (1 << 26)     /* sanity bound on token ids */

/* Formats one error line into err (if any); always returns -1. */
static int tk_fail(char *err, size_t errlen, const char *fmt, ...) {
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return -1;
}

/* Ensures *p (elements of size elem, capacity *cap) can hold need elements.
 * Returns 0, or -1 when out of memory (*p left untouched). */
static int tk_grow(void *pp, size_t *cap, size_t need, size_t elem) {
    void **p = (void **)pp;
    if (need <= *cap) return 0;
    size_t nc = *cap ? *cap : 16;
    while (nc < need) {
        if (nc > SIZE_MAX / 2 / elem) return -1;
        nc *= 2;
    }
    void *np = realloc(*p, nc * elem);
    if (!np) return -1;
    *p = np;
    *cap = nc;
    return 0;
}

typedef struct {
    char   *p;              /* bytes, always NUL terminated when non-NULL */
    size_t  n;              /* bytes used (without the NUL) */
    size_t  cap;            /* bytes allocated */
} tk_buf;

/* Appends n bytes to b. Returns 0, or -1 when out of memory. */
static int tk_buf_put(tk_buf *b, const void *s, size_t n) {
    if (tk_grow(&b->p, &b->cap, b->n + n + 1, 1)) return -1;
    if (n) memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
    return 0;
}

static int tk_buf_puts(tk_buf *b, const char *s) {
    return tk_buf_put(b, s, strlen(s));
}

/* Copies n bytes of s into a new NUL-terminated string (NULL if no memory). */
static char *tk_strndup(const char *s, size_t n) {
    char *d = malloc(n + 1);
    if (!d) return NULL;
    memcpy(d, s, n);
    d[n] = 0;
    return d;
}

/* Reads a whole file. Returns a malloc'ed NUL-terminated buffer and its
 * length, or NULL (errno set). */
static char *tk_read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    tk_buf b = {0};
    char chunk[65536];
    size_t got;
    while ((got = fread(chunk, 1, sizeof chunk, f)) > 0) {
        if (tk_buf_put(&b, chunk, got)) {
            free(b.p);
            fclose(f);
            errno = ENOMEM;
            return NULL;
        }
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        free(b.p);
        errno = EIO;
        return NULL;
    }
    if (!b.p && tk_buf_put(&b, "", 0)) {
        errno = ENOMEM;
        return NULL;
    }
    *len = b.n;
    return b.p;
}

/* The last path component (for error messages). */
static const char *tk_basename(const char *path) {
    const char *s = strrchr(path, '/');
    return s ? s + 1 : path;
}

/* Decodes one well-formed UTF-8 character at s (n bytes available).
 * Returns its length (1..4) and stores the code point, or 0 if the bytes
 * there are not a complete well-formed character. */
static size_t tk_utf8_decode(const unsigned char *s, size_t n, uint32_t *cp) {
    if (n == 0) return 0;
    unsigned c = s[0];
    if (c < 0x80) { *cp = c; return 1; }
    size_t len;
    uint32_t v;
    unsigned lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF)      { len = 2; v = c & 0x1F; }
    else if (c >= 0xE0 && c <= 0xEF) { len = 3; v = c & 0x0F;
                                       if (c == 0xE0) lo = 0xA0;
                                       if (c == 0xED) hi = 0x9F; }
    else if (c >= 0xF0 && c <= 0xF4) { len = 4; v = c & 0x07;
                                       if (c == 0xF0) lo = 0x90;
                                       if (c == 0xF4) hi = 0x8F; }
    else return 0;
    for (size_t i = 1; i < len; i++) {
        if (i >= n) return 0;
        unsigned d = s[i];
        if (d < lo || d > hi) return 0;
        lo = 0x80; hi = 0xBF;
        v = (v << 6) | (d & 0x3F);
    }
    *cp = v;
    return len;
}

/* Classifies the sequence at s (n > 0 bytes available):
 *  > 0  a complete well-formed character of that length;
 *  0    with *bad > 0: an ill-formed sequence whose maximal subpart is *bad
 *       bytes (to be replaced by one U+FFFD);
 *  0    with *bad == 0: a well-formed prefix cut by the end of the input. */
static size_t tk_utf8_check(const unsigned char *s, size_t n, size_t *bad) {
    unsigned c = s[0];
    *bad = 1;
    if (c < 0x80) return 1;
    size_t len;
    unsigned lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF)      len = 2;
    else if (c >= 0xE0 && c <= 0xEF) { len = 3; if (c == 0xE0) lo = 0xA0;
                                       if (c == 0xED) hi = 0x9F; }
    else if (c >= 0xF0 && c <= 0xF4) { len = 4; if (c == 0xF0) lo = 0x90;
                                       if (c == 0xF4) hi = 0x8F; }
    else return 0;
    for (size_t i = 1; i < len; i++) {
        if (i >= n) { *bad = 0; return 0; }
        unsigned d = s[i];
        if (d < lo || d > hi) { *bad = i; return 0; }
        lo = 0x80; hi = 0xBF;
    }
    return len;
}

/* Length of the character at s for splitting purposes: the well-formed
 * length, or 1 for a byte that does not start a well-formed character. */
static size_t tk_char_len(const unsigned char *s, size_t n) {
    uint32_t cp;
    size_t l = tk_utf8_decode(s, n, &cp);
    return l ? l : 1;
}

/* Writes code point cp as UTF-8 into out (>= 4 bytes); returns the length. */
static size_t tk_utf8_encode(uint32_t cp, char *out) {
    unsigned char *o = (unsigned char *)out;
    if (cp < 0x80) { o[0] = (unsigned char)cp; return 1; }
    if (cp < 0x800) {
        o[0] = (unsigned char)(0xC0 | (cp >> 6));
        o[1] = (unsigned char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (unsigned char)(0xE0 | (cp >> 12));
        o[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (unsigned char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (unsigned char)(0xF0 | (cp >> 18));
    o[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
    o[3] = (unsigned char)(0x80 | (cp & 0x3F));
    return 4;
}

/* Unicode White_Space (what Rust's char::is_whitespace accepts). */
static int tk_is_space_cp(uint32_t c) {
    return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 ||
           c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 ||
           c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

/* Bytes of whitespace at the start of s[0..n). */
static size_t tk_space_prefix(const char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        uint32_t cp;
        size_t l = tk_utf8_decode((const unsigned char *)s + i, n - i, &cp);
        if (!l || !tk_is_space_cp(cp)) break;
        i += l;
    }
    return i;
}

/* Start of the character that ends right before s[i] (i > 0). */
static size_t tk_prev_char(const char *s, size_t i) {
    size_t j = i - 1;
    while (j > 0 && i - j < 4 && ((unsigned char)s[j] & 0xC0) == 0x80) j--;
    uint32_t cp;
    if (tk_utf8_decode((const unsigned char *)s + j, i - j, &cp) == i - j)
        return j;
    return i - 1;
}

/* Bytes of whitespace at the end of s[0..n). */
static size_t tk_space_suffix(const char *s, size_t n) {
    size_t i = n;
    while (i > 0) {
        size_t j = tk_prev_char(s, i);
        uint32_t cp;
        if (tk_utf8_decode((const unsigned char *)s + j, i - j, &cp) != i - j ||
            !tk_is_space_cp(cp)) break;
        i = j;
    }
    return n - i;
}

/* ASCII word character (used for added tokens' single_word flag). */
static int tk_is_word_byte(unsigned char c) {
    return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') ||
           (c >= 'a' && c <= 'z') || c == '_' || c >= 0x80;
}

static uint64_t tk_hash(const void *p, size_t n) {
    const unsigned char *s = p;
    uint64_t h = 0xcbf29ce484222325ULL;           /* FNV-1a */
    for (size_t i = 0; i < n; i++) { h ^= s[i]; h *= 0x100000001b3ULL; }
    return h ^ (h >> 29);
}

static uint64_t tk_mix64(uint64_t x) {
    x ^= x >> 33; x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33; x *= 0xc4ceb9fe1a85ec53ULL;
    return x ^ (x >> 33);
}

/* ----------------------------------------------------------------------------
 * String table and maps: vocabulary (string -> id), merges (pair -> rank)
 * ------------------------------------------------------------------------- */

typedef struct {
    char     *pool;         /* all strings, each NUL terminated */
    size_t    n_pool;       /* bytes used in pool */
    size_t    cap_pool;     /* bytes allocated in pool */
    uint32_t *off;          /* per id: offset into pool, UINT32_MAX if none */
    uint32_t *len;          /* per id: length in bytes */
    size_t    n;            /* number of ids */
} tk_strtab;

/* Allocates a table for n ids, all absent. Returns 0 or -1. */
static int tk_strtab_init(tk_strtab *t, size_t n) {
    memset(t, 0, sizeof *t);
    t->off = malloc((n ? n : 1) * sizeof *t->off);
    t->len = calloc(n ? n : 1, sizeof *t->len);
    if (!t->off || !t->len) return -1;
    for (size_t i = 0; i < n; i++) t->off[i] = UINT32_MAX;
    t->n = n;
    return 0;
}

static void tk_strtab_free(tk_strtab *t) {
    free(t->pool); free(t->off); free(t->len);
    memset(t, 0, sizeof *t);
}

/* Stores s[0..n) as the string of id. Returns 0 or -1 (no memory). */
static int tk_strtab_set(tk_strtab *t, size_t id, const char *s, size_t n) {
    if (t->n_pool + n + 1 > UINT32_MAX) return -1;
    if (tk_grow(&t->pool, &t->cap_pool, t->n_pool + n + 1, 1)) return -1;
    memcpy(t->pool + t->n_pool, s, n);
    t->pool[t->n_pool + n] = 0;
    t->off[id] = (uint32_t)t->n_pool;
    t->len[id] = (uint32_t)n;
    t->n_pool += n + 1;
    return 0;
}

static const char *tk_strtab_get(const tk_strtab *t, int id, size_t *len) {
    if (id < 0 || (size_t)id >= t->n || t->off[id] == UINT32_MAX) return NULL;
    if (len) *len = t->len[id];
    return t->pool + t->off[id];
}

typedef struct {
    int32_t *slot;          /* ids (keys live in a tk_strtab), -1 = empty */
    size_t   mask;          /* slots - 1 (power of two) */
} tk_strmap;

static int tk_strmap_init(tk_strmap *m, size_t n_keys) {
    size_t cap = 16;
    while (cap < n_keys * 2 + 1) cap *= 2;
    m->slot = malloc(cap * sizeof *m->slot);
    if (!m->slot) return -1;
    memset(m->slot, 0xff, cap * sizeof *m->slot);
    m->mask = cap - 1;
    return 0;
}

/* Looks up s[0..n) among the strings of t. Returns the id or -1. */
static int tk_strmap_get(const tk_strmap *m, const tk_strtab *t,
                         const char *s, size_t n) {
    size_t i = (size_t)tk_hash(s, n) & m->mask;
    for (;;) {
        int32_t id = m->slot[i];
        if (id < 0) return -1;
        if (t->len[id] == n && memcmp(t->pool + t->off[id], s, n) == 0)
            return id;
        i = (i + 1) & m->mask;
    }
}

/* Inserts id (its string taken from t); keeps an existing equal key. */
static void tk_strmap_put(tk_strmap *m, const tk_strtab *t, int id) {
    const char *s = t->pool + t->off[id];
    size_t n = t->len[id];
    size_t i = (size_t)tk_hash(s, n) & m->mask;
    while (m->slot[i] >= 0) {
        int32_t o = m->slot[i];
        if (t->len[o] == n && memcmp(t->pool + t->off[o], s, n) == 0) return;
        i = (i + 1) & m->mask;
    }
    m->slot[i] = id;
}

typedef struct {
    uint64_t *key;          /* (left id << 32) | right id; UINT64_MAX empty */
    uint32_t *rank;         /* merge priority: lower merges first */
    int32_t  *out;          /* id of the merged token */
    size_t    mask;         /* slots - 1 (power of two) */
} tk_pairmap;

static int tk_pairmap_init(tk_pairmap *m, size_t n_keys) {
    size_t cap = 16;
    while (cap < n_keys * 2 + 1) cap *= 2;
    m->key = malloc(cap * sizeof *m->key);
    m->rank = malloc(cap * sizeof *m->rank);
    m->out = malloc(cap * sizeof *m->out);
    if (!m->key || !m->rank || !m->out) return -1;
    memset(m->key, 0xff, cap * sizeof *m->key);
    m->mask = cap - 1;
    return 0;
}

static void tk_pairmap_free(tk_pairmap *m) {
    free(m->key); free(m->rank); free(m->out);
    memset(m, 0, sizeof *m);
}

/* Sets the merge of (a, b); a later duplicate overrides (as HF does). */
static void tk_pairmap_put(tk_pairmap *m, int a, int b, uint32_t rank,
                           int out) {
    uint64_t k = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    size_t i = (size_t)tk_mix64(k) & m->mask;
    while (m->key[i] != UINT64_MAX && m->key[i] != k) i = (i + 1) & m->mask;
    m->key[i] = k;
    m->rank[i] = rank;
    m->out[i] = out;
}

/* Finds the merge of (a, b). Returns 1 and fills rank/out, or 0. */
static int tk_pairmap_get(const tk_pairmap *m, int a, int b, uint32_t *rank,
                          int *out) {
    if (!m->key) return 0;
    uint64_t k = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    size_t i = (size_t)tk_mix64(k) & m->mask;
    for (;;) {
        uint64_t x = m->key[i];
        if (x == UINT64_MAX) return 0;
        if (x == k) { *rank = m->rank[i]; *out = m->out[i]; return 1; }
        i = (i + 1) & m->mask;
    }
}

/* ----------------------------------------------------------------------------
 * Added tokens and their byte trie (leftmost-longest matching)
 * ------------------------------------------------------------------------- */

typedef struct {
    char    *content;       /* text to match (normalized if `normalized`) */
    size_t   len;           /* bytes in content */
    int      id;            /* token id */
    int      special;       /* "special": skipped by DSEEK_DETOK_SKIP_SPECIAL */
    int      lstrip;        /* match swallows whitespace on its left */
    int      rstrip;        /* match swallows whitespace on its right */
    int      single_word;   /* only matches outside words */
    int      normalized;    /* matched on normalized text */
} tk_added;

typedef struct {
    int32_t       child;    /* first child node, -1 if none */
    int32_t       sibling;  /* next sibling node, -1 if none */
    int32_t       tok;      /* added token ending here (index), -1 if none */
    unsigned char byte;     /* byte on the edge into this node */
} tk_tnode;

typedef struct {
    tk_tnode *node;         /* nodes below the root */
    size_t    n;            /* nodes used */
    size_t    cap;          /* nodes allocated */
    int32_t   root[256];    /* first-level node per byte, -1 if none */
    int       used;         /* 1 once a token was inserted */
} tk_trie;

static void tk_trie_init(tk_trie *t) {
    memset(t, 0, sizeof *t);
    for (int i = 0; i < 256; i++) t->root[i] = -1;
}

static int32_t tk_trie_node(tk_trie *t, unsigned char byte) {
    if (tk_grow(&t->node, &t->cap, t->n + 1, sizeof *t->node)) return -1;
    tk_tnode *x = &t->node[t->n];
    x->child = x->sibling = x->tok = -1;
    x->byte = byte;
    return (int32_t)t->n++;
}

/* Inserts token index tok with bytes s[0..n) (n > 0); the first token with
 * a given content wins. Returns 0 or -1 (no memory). */
static int tk_trie_put(tk_trie *t, const char *s, size_t n, int tok) {
    const unsigned char *u = (const unsigned char *)s;
    int32_t x = t->root[u[0]];
    if (x < 0) {
        if ((x = tk_trie_node(t, u[0])) < 0) return -1;
        t->root[u[0]] = x;
    }
    for (size_t i = 1; i < n; i++) {
        int32_t c = t->node[x].child;
        while (c >= 0 && t->node[c].byte != u[i]) c = t->node[c].sibling;
        if (c < 0) {
            if ((c = tk_trie_node(t, u[i])) < 0) return -1;
            t->node[c].sibling = t->node[x].child;
            t->node[x].child = c;
        }
        x = c;
    }
    if (t->node[x].tok < 0) t->node[x].tok = tok;
    t->used = 1;
    return 0;
}

/* Longest token that is a prefix of s[0..n). Returns its index and length,
 * or -1. */
static int tk_trie_longest(const tk_trie *t, const char *s, size_t n,
                           size_t *mlen) {
    const unsigned char *u = (const unsigned char *)s;
    int32_t x = t->root[u[0]];
    int best = -1;
    size_t i = 1;
    while (x >= 0) {
        if (t->node[x].tok >= 0) { best = t->node[x].tok; *mlen = i; }
        if (i >= n) break;
        unsigned char c = u[i++];
        x = t->node[x].child;
        while (x >= 0 && t->node[x].byte != c) x = t->node[x].sibling;
    }
    return best;
}

/* ----------------------------------------------------------------------------
 * Regular expressions (PCRE2, UTF + UCP, invalid UTF-8 tolerated)
 * ------------------------------------------------------------------------- */

typedef struct {
    size_t s, e;            /* byte range [s, e) */
    int    m;               /* 1 if the range is a match (delimiter) */
} tk_piece;

/* Compiles an HF pattern: {"Regex": ...} or {"String": ...} (literal).
 * Oniguruma semantics are approximated: ^ and $ match at line ends.
 * Returns the code or NULL with a message in msg. */
static pcre2_code *tk_re_compile(const char *pat, size_t len, int literal,
                                 char *msg, size_t msglen) {
    uint32_t opt = PCRE2_UTF | PCRE2_MATCH_INVALID_UTF;
    if (literal) opt |= PCRE2_LITERAL;
    else opt |= PCRE2_UCP | PCRE2_MULTILINE;
    int ec;
    PCRE2_SIZE eo;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)pat, len, opt, &ec, &eo, NULL);
    if (!re) {
        PCRE2_UCHAR buf[160];
        pcre2_get_error_message(ec, buf, sizeof buf);
        snprintf(msg, msglen, "%s at offset %zu", (char *)buf, (size_t)eo);
        return NULL;
    }
    pcre2_jit_compile(re, PCRE2_JIT_COMPLETE);   /* optional speed-up */
    return re;
}

/* Runs one match; falls back from JIT to the interpreter on stack limits. */
static int tk_re_match(const pcre2_code *re, const char *s, size_t n,
                       size_t pos, uint32_t opt, pcre2_match_data *md) {
    int rc = pcre2_match(re, (PCRE2_SPTR)s, n, pos, opt, md, NULL);
    if (rc == PCRE2_ERROR_JIT_STACKLIMIT)
        rc = pcre2_match(re, (PCRE2_SPTR)s, n, pos, opt | PCRE2_NO_JIT, md,
                         NULL);
    return rc;
}

/* Cuts s[0..n) into pieces covering it: the matches of re (m = 1, empty
 * matches included) and the gaps between them (m = 0), appended to *pc.
 * Returns 0, or -1 (no memory or a regex run-time error). */
static int tk_re_pieces(const pcre2_code *re, const char *s, size_t n,
                        pcre2_match_data *md, tk_piece **pc, size_t *n_pc,
                        size_t *cap_pc) {
    size_t pos = 0, prev = 0;
    uint32_t opt = 0;
    while (pos <= n) {
        int rc = tk_re_match(re, s, n, pos, opt, md);
        if (rc == PCRE2_ERROR_NOMATCH) {
            if (!opt) break;
            /* no non-empty match right after an empty one: step a char */
            if (pos >= n) break;
            pos += tk_char_len((const unsigned char *)s + pos, n - pos);
            opt = 0;
            continue;
        }
        if (rc < 0) return -1;
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
        size_t ms = ov[0], me = ov[1];
        if (me < ms) me = ms;                       /* \K oddities */
        if (tk_grow(pc, cap_pc, *n_pc + 2, sizeof **pc)) return -1;
        if (ms > prev) (*pc)[(*n_pc)++] = (tk_piece){prev, ms, 0};
        (*pc)[(*n_pc)++] = (tk_piece){ms, me, 1};
        prev = me;
        pos = me;
        opt = (ms == me) ? (PCRE2_NOTEMPTY_ATSTART | PCRE2_ANCHORED) : 0;
    }
    if (prev < n) {
        if (tk_grow(pc, cap_pc, *n_pc + 1, sizeof **pc)) return -1;
        (*pc)[(*n_pc)++] = (tk_piece){prev, n, 0};
    }
    return 0;
}

/* ----------------------------------------------------------------------------
 * Normalizers and pre-tokenizers (the subset of the HF format we run)
 * ------------------------------------------------------------------------- */

enum { TK_NORM_PREPEND, TK_NORM_REPLACE, TK_NORM_STRIP };

typedef struct {
    int         kind;       /* TK_NORM_* */
    pcre2_code *re;         /* Replace: pattern */
    char       *str;        /* Prepend: prefix; Replace: replacement */
    size_t      len;        /* bytes in str */
    int         left;       /* Strip: strip the left side */
    int         right;      /* Strip: strip the right side */
} tk_norm;

enum { TK_PRE_SPLIT, TK_PRE_BYTELEVEL };

enum {                      /* HF SplitDelimiterBehavior */
    TK_REMOVED, TK_ISOLATED, TK_MERGED_PREV, TK_MERGED_NEXT, TK_CONTIGUOUS
};

typedef struct {
    int         kind;       /* TK_PRE_* */
    pcre2_code *re;         /* Split pattern / ByteLevel GPT-2 regex */
    int         behavior;   /* Split: TK_REMOVED ... TK_CONTIGUOUS */
    int         invert;     /* Split: the pattern matches what to keep */
    int         prefix;     /* ByteLevel: add_prefix_space */
} tk_pre;

/* GPT-2's pre-tokenization regex, used by ByteLevel when use_regex is set. */
static const char tk_gpt2_re[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+"
    "|\\s+(?!\\S)|\\s+";

/* ----------------------------------------------------------------------------
 * The tokenizer object
 * ------------------------------------------------------------------------- */

struct dseek_tokenizer {
    size_t      n_vocab;        /* max id + 1 (model and added tokens) */
    tk_strtab   vocab;          /* model vocabulary strings by id */
    tk_strmap   vocab_map;      /* model vocabulary string -> id */
    tk_pairmap  merges;         /* (left, right) -> rank, merged id */
    tk_strtab   dec;            /* per id: decoded bytes */
    unsigned char *is_special;  /* per id: 1 if a special added token */

    tk_added   *added;          /* added tokens */
    size_t      n_added;
    tk_trie     trie_raw;       /* added tokens matched on raw text */
    tk_trie     trie_norm;      /* added tokens matched after normalizing */

    tk_norm    *norm;           /* normalizer steps, in order */
    size_t      n_norm;
    tk_pre     *pre;            /* pre-tokenizer steps, in order */
    size_t      n_pre;

    int         unk_id;         /* model.unk_token id, -1 if none */
    int         fuse_unk;       /* merge consecutive unknowns */
    int         byte_fallback;  /* unknown chars as <0xXX> tokens */
    int         byte_ids[256];  /* <0xXX> ids when byte_fallback */
    int         ignore_merges;  /* whole words found in vocab skip BPE */

    uint32_t    b2u[256];       /* ByteLevel byte -> code point */
    char        b2u_utf8[256][2]; /* ... as UTF-8 */
    unsigned char b2u_len[256]; /* ... its length (1 or 2) */
    int16_t     u2b[0x144];     /* inverse: code point -> byte, -1 */

    int         add_bos;        /* tokenizer_config add_bos_token */
    int         bos_id;         /* -1 if none */
    int         eos_id;         /* -1 if none */
    char       *bos_str;        /* bos token text, "" if none */
    char       *eos_str;        /* eos token text, "" if none */
    dseek_chat_family family;   /* chat template family */
    int         think_prompt;   /* R1 generation prompt opens <think> */
};

static void tk_trie_free(tk_trie *t) { free(t->node); t->node = NULL; }

void dseek_tokenizer_free(dseek_tokenizer *tok) {
    if (!tok) return;
    tk_strtab_free(&tok->vocab);
    free(tok->vocab_map.slot);
    tk_pairmap_free(&tok->merges);
    tk_strtab_free(&tok->dec);
    free(tok->is_special);
    for (size_t i = 0; i < tok->n_added; i++) free(tok->added[i].content);
    free(tok->added);
    tk_trie_free(&tok->trie_raw);
    tk_trie_free(&tok->trie_norm);
    for (size_t i = 0; i < tok->n_norm; i++) {
        pcre2_code_free(tok->norm[i].re);
        free(tok->norm[i].str);
    }
    free(tok->norm);
    for (size_t i = 0; i < tok->n_pre; i++) pcre2_code_free(tok->pre[i].re);
    free(tok->pre);
    free(tok->bos_str);
    free(tok->eos_str);
    free(tok);
}

/* Fills the GPT-2 byte <-> unicode tables: printable Latin-1 bytes map to
 * themselves, the rest to 256, 257, ... in byte order. */
static void tk_init_bytelevel(dseek_tokenizer *tok) {
    uint32_t next = 256;
    for (int i = 0; i < 0x144; i++) tok->u2b[i] = -1;
    for (int b = 0; b < 256; b++) {
        int keep = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) ||
                   (b >= 0xAE && b <= 0xFF);
        tok->b2u[b] = keep ? (uint32_t)b : next++;
        tok->u2b[tok->b2u[b]] = (int16_t)b;
        tok->b2u_len[b] =
            (unsigned char)tk_utf8_encode(tok->b2u[b], tok->b2u_utf8[b]);
    }
}

/* Inverse ByteLevel mapping: byte of code point cp, or -1. */
static int tk_u2b(const dseek_tokenizer *tok, uint32_t cp) {
    return cp < 0x144 ? tok->u2b[cp] : -1;
}
