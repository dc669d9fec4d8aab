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

/* Word byte for added tokens' single_word flag: ASCII letters, digits and
 * '_', and every non-ASCII byte (a cheap stand-in for Unicode
 * alphanumerics). */
static int tk_is_word_byte(unsigned char c) {
    return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') ||
           (c >= 'a' && c <= 'z') || c == '_' || c >= 0x80;
}

/* Hash of a byte string (FNV-1a with a final mix). */
static uint64_t tk_hash(const void *p, size_t n) {
    const unsigned char *s = p;
    uint64_t h = 0xcbf29ce484222325ULL;           /* FNV-1a */
    for (size_t i = 0; i < n; i++) { h ^= s[i]; h *= 0x100000001b3ULL; }
    return h ^ (h >> 29);
}

/* Mixes a 64-bit key (for the pair map). */
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

/* Frees the table's storage. */
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

/* String of id and its length, or NULL if the id has none. */
static const char *tk_strtab_get(const tk_strtab *t, int id, size_t *len) {
    if (id < 0 || (size_t)id >= t->n || t->off[id] == UINT32_MAX) return NULL;
    if (len) *len = t->len[id];
    return t->pool + t->off[id];
}

typedef struct {
    int32_t *slot;          /* ids (keys live in a tk_strtab), -1 = empty */
    size_t   mask;          /* slots - 1 (power of two) */
} tk_strmap;

/* Allocates an empty map for about n_keys keys. Returns 0 or -1. */
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

/* Allocates an empty map for about n_keys pairs. Returns 0 or -1. */
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

/* Frees the map's storage. */
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

/* Makes an empty trie. */
static void tk_trie_init(tk_trie *t) {
    memset(t, 0, sizeof *t);
    for (int i = 0; i < 256; i++) t->root[i] = -1;
}

/* Appends a fresh node for byte. Returns its index or -1 (no memory). */
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
    int32_t     cp_id[0x180];   /* id of the 1-char token per code point */

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

/* Frees the trie's nodes. */
static void tk_trie_free(tk_trie *t) { free(t->node); t->node = NULL; }

/* Frees everything the tokenizer owns (NULL is fine). */
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

/* ----------------------------------------------------------------------------
 * Loading tokenizer.json
 * ------------------------------------------------------------------------- */

typedef struct {
    const char *file;       /* file name for messages */
    char       *err;        /* caller's error buffer */
    size_t      errlen;     /* its size */
} tk_ctx;

/* Reads an optional boolean field (absent or null -> def). Returns 0, or -1
 * with an error if present with another type. */
static int tk_json_bool(tk_ctx *c, const cJSON *o, const char *path,
                        const char *key, int def, int *out) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!v || cJSON_IsNull(v)) { *out = def; return 0; }
    if (!cJSON_IsBool(v))
        return tk_fail(c->err, c->errlen, "%s: %s.%s: not a boolean",
                       c->file, path, key);
    *out = cJSON_IsTrue(v) ? 1 : 0;
    return 0;
}

/* Reads a required string field. */
static int tk_json_str(tk_ctx *c, const cJSON *o, const char *path,
                       const char *key, const char **out) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!v) return tk_fail(c->err, c->errlen, "%s: %s.%s: missing",
                           c->file, path, key);
    if (!cJSON_IsString(v) || !v->valuestring)
        return tk_fail(c->err, c->errlen, "%s: %s.%s: not a string",
                       c->file, path, key);
    *out = v->valuestring;
    return 0;
}

/* Reads a JSON number that must be an integer in [0, TK_MAX_ID). */
static int tk_json_id(const cJSON *v, int *out) {
    if (!cJSON_IsNumber(v)) return -1;
    double d = v->valuedouble;
    if (d < 0 || d >= TK_MAX_ID || d != (double)(int)d) return -1;
    *out = (int)d;
    return 0;
}

/* Compiles an HF pattern object {"Regex": s} or {"String": s}. */
static pcre2_code *tk_load_pattern(tk_ctx *c, const cJSON *o,
                                   const char *path) {
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(o, "pattern");
    const cJSON *v;
    int literal;
    if (!cJSON_IsObject(p)) {
        tk_fail(c->err, c->errlen, "%s: %s.pattern: missing or not an object",
                c->file, path);
        return NULL;
    }
    if ((v = cJSON_GetObjectItemCaseSensitive(p, "Regex")) != NULL) literal = 0;
    else if ((v = cJSON_GetObjectItemCaseSensitive(p, "String")) != NULL)
        literal = 1;
    else {
        tk_fail(c->err, c->errlen, "%s: %s.pattern: neither Regex nor String",
                c->file, path);
        return NULL;
    }
    if (!cJSON_IsString(v) || !v->valuestring) {
        tk_fail(c->err, c->errlen, "%s: %s.pattern.%s: not a string",
                c->file, path, literal ? "String" : "Regex");
        return NULL;
    }
    char msg[200];
    pcre2_code *re = tk_re_compile(v->valuestring, strlen(v->valuestring),
                                   literal, msg, sizeof msg);
    if (!re)
        tk_fail(c->err, c->errlen, "%s: %s.pattern: bad regex: %s",
                c->file, path, msg);
    return re;
}

/* Appends one normalizer step (takes ownership of re and str). */
static int tk_add_norm(dseek_tokenizer *tok, tk_ctx *c, tk_norm st) {
    tk_norm *p = realloc(tok->norm, (tok->n_norm + 1) * sizeof *p);
    if (!p) {
        pcre2_code_free(st.re);
        free(st.str);
        return tk_fail(c->err, c->errlen, "%s: out of memory", c->file);
    }
    tok->norm = p;
    tok->norm[tok->n_norm++] = st;
    return 0;
}

/* Loads a normalizer (recursively for Sequence). */
static int tk_load_normalizer(dseek_tokenizer *tok, tk_ctx *c, const cJSON *n,
                              const char *path, int depth) {
    if (!n || cJSON_IsNull(n)) return 0;
    if (depth > 16)
        return tk_fail(c->err, c->errlen, "%s: %s: nested too deep", c->file,
                       path);
    if (!cJSON_IsObject(n))
        return tk_fail(c->err, c->errlen, "%s: %s: not an object", c->file,
                       path);
    const char *type;
    if (tk_json_str(c, n, path, "type", &type)) return -1;
    if (!strcmp(type, "Sequence")) {
        const cJSON *arr = cJSON_GetObjectItemCaseSensitive(n, "normalizers");
        if (!cJSON_IsArray(arr))
            return tk_fail(c->err, c->errlen,
                           "%s: %s.normalizers: missing or not an array",
                           c->file, path);
        int i = 0;
        const cJSON *it;
        cJSON_ArrayForEach(it, arr) {
            char sub[256];
            snprintf(sub, sizeof sub, "%s.normalizers[%d]", path, i++);
            if (tk_load_normalizer(tok, c, it, sub, depth + 1)) return -1;
        }
        return 0;
    }
    tk_norm st = {0};
    if (!strcmp(type, "Prepend")) {
        const char *s;
        if (tk_json_str(c, n, path, "prepend", &s)) return -1;
        st.kind = TK_NORM_PREPEND;
        st.len = strlen(s);
        if (!(st.str = tk_strndup(s, st.len)))
            return tk_fail(c->err, c->errlen, "%s: out of memory", c->file);
        return tk_add_norm(tok, c, st);
    }
    if (!strcmp(type, "Replace")) {
        const char *s;
        if (tk_json_str(c, n, path, "content", &s)) return -1;
        st.kind = TK_NORM_REPLACE;
        if (!(st.re = tk_load_pattern(c, n, path))) return -1;
        st.len = strlen(s);
        if (!(st.str = tk_strndup(s, st.len))) {
            pcre2_code_free(st.re);
            return tk_fail(c->err, c->errlen, "%s: out of memory", c->file);
        }
        return tk_add_norm(tok, c, st);
    }
    if (!strcmp(type, "Strip")) {
        st.kind = TK_NORM_STRIP;
        if (tk_json_bool(c, n, path, "strip_left", 1, &st.left) ||
            tk_json_bool(c, n, path, "strip_right", 1, &st.right)) return -1;
        return tk_add_norm(tok, c, st);
    }
    return tk_fail(c->err, c->errlen,
                   "%s: %s.type: unsupported normalizer '%s'", c->file, path,
                   type);
}

/* Appends one pre-tokenizer step (takes ownership of st.re). */
static int tk_add_pre(dseek_tokenizer *tok, tk_ctx *c, tk_pre st) {
    tk_pre *p = realloc(tok->pre, (tok->n_pre + 1) * sizeof *p);
    if (!p) {
        pcre2_code_free(st.re);
        return tk_fail(c->err, c->errlen, "%s: out of memory", c->file);
    }
    tok->pre = p;
    tok->pre[tok->n_pre++] = st;
    return 0;
}

/* Adds a Split step with a built-in regex. */
static int tk_add_split(dseek_tokenizer *tok, tk_ctx *c, const char *path,
                        const char *re_src, int behavior, int invert) {
    char msg[200];
    tk_pre st = {0};
    st.kind = TK_PRE_SPLIT;
    st.behavior = behavior;
    st.invert = invert;
    st.re = tk_re_compile(re_src, strlen(re_src), 0, msg, sizeof msg);
    if (!st.re)
        return tk_fail(c->err, c->errlen, "%s: %s: internal regex: %s",
                       c->file, path, msg);
    return tk_add_pre(tok, c, st);
}

/* Parses a SplitDelimiterBehavior name. */
static int tk_behavior(tk_ctx *c, const cJSON *o, const char *path, int def,
                       int *out) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, "behavior");
    if (!v || cJSON_IsNull(v)) { *out = def; return 0; }
    static const struct { const char *name; int b; } names[] = {
        {"Removed", TK_REMOVED}, {"Isolated", TK_ISOLATED},
        {"MergedWithPrevious", TK_MERGED_PREV},
        {"MergedWithNext", TK_MERGED_NEXT}, {"Contiguous", TK_CONTIGUOUS},
    };
    if (cJSON_IsString(v) && v->valuestring)
        for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
            if (!strcmp(v->valuestring, names[i].name)) {
                *out = names[i].b;
                return 0;
            }
    return tk_fail(c->err, c->errlen, "%s: %s.behavior: unknown behavior",
                   c->file, path);
}

/* Loads a pre-tokenizer (recursively for Sequence). */
static int tk_load_pretok(dseek_tokenizer *tok, tk_ctx *c, const cJSON *n,
                          const char *path, int depth) {
    if (!n || cJSON_IsNull(n)) return 0;
    if (depth > 16)
        return tk_fail(c->err, c->errlen, "%s: %s: nested too deep", c->file,
                       path);
    if (!cJSON_IsObject(n))
        return tk_fail(c->err, c->errlen, "%s: %s: not an object", c->file,
                       path);
    const char *type;
    if (tk_json_str(c, n, path, "type", &type)) return -1;
    if (!strcmp(type, "Sequence")) {
        const cJSON *arr = cJSON_GetObjectItemCaseSensitive(n, "pretokenizers");
        if (!cJSON_IsArray(arr))
            return tk_fail(c->err, c->errlen,
                           "%s: %s.pretokenizers: missing or not an array",
                           c->file, path);
        int i = 0;
        const cJSON *it;
        cJSON_ArrayForEach(it, arr) {
            char sub[256];
            snprintf(sub, sizeof sub, "%s.pretokenizers[%d]", path, i++);
            if (tk_load_pretok(tok, c, it, sub, depth + 1)) return -1;
        }
        return 0;
    }
    tk_pre st = {0};
    if (!strcmp(type, "Split")) {
        st.kind = TK_PRE_SPLIT;
        if (tk_behavior(c, n, path, -1, &st.behavior)) return -1;
        if (st.behavior < 0)
            return tk_fail(c->err, c->errlen, "%s: %s.behavior: missing",
                           c->file, path);
        if (tk_json_bool(c, n, path, "invert", 0, &st.invert)) return -1;
        if (!(st.re = tk_load_pattern(c, n, path))) return -1;
        return tk_add_pre(tok, c, st);
    }
    if (!strcmp(type, "ByteLevel")) {
        int use_regex;
        st.kind = TK_PRE_BYTELEVEL;
        if (tk_json_bool(c, n, path, "add_prefix_space", 1, &st.prefix) ||
            tk_json_bool(c, n, path, "use_regex", 1, &use_regex)) return -1;
        if (use_regex) {
            char msg[200];
            st.re = tk_re_compile(tk_gpt2_re, strlen(tk_gpt2_re), 0, msg,
                                  sizeof msg);
            if (!st.re)
                return tk_fail(c->err, c->errlen, "%s: %s: internal regex: %s",
                               c->file, path, msg);
        }
        return tk_add_pre(tok, c, st);
    }
    if (!strcmp(type, "Whitespace"))
        return tk_add_split(tok, c, path, "\\w+|[^\\w\\s]+", TK_REMOVED, 1);
    if (!strcmp(type, "WhitespaceSplit"))
        return tk_add_split(tok, c, path, "\\s+", TK_REMOVED, 0);
    if (!strcmp(type, "Digits")) {
        int indiv;
        if (tk_json_bool(c, n, path, "individual_digits", 0, &indiv)) return -1;
        return tk_add_split(tok, c, path, "\\p{N}",
                            indiv ? TK_ISOLATED : TK_CONTIGUOUS, 0);
    }
    if (!strcmp(type, "Punctuation")) {
        int b;
        if (tk_behavior(c, n, path, TK_ISOLATED, &b)) return -1;
        return tk_add_split(tok, c, path, "[\\p{P}!-/:-@\\[-`{-~]", b, 0);
    }
    return tk_fail(c->err, c->errlen,
                   "%s: %s.type: unsupported pre-tokenizer '%s'", c->file, path,
                   type);
}

/* Splits a merge entry ("a b" or ["a", "b"]) into its two halves. */
static int tk_merge_halves(const cJSON *m, const char **a, size_t *na,
                           const char **b, size_t *nb) {
    if (cJSON_IsString(m) && m->valuestring) {
        const char *s = m->valuestring;
        const char *sp = strchr(s, ' ');
        if (!sp || sp == s || !sp[1] || strchr(sp + 1, ' ')) return -1;
        *a = s; *na = (size_t)(sp - s);
        *b = sp + 1; *nb = strlen(sp + 1);
        return 0;
    }
    if (cJSON_IsArray(m) && cJSON_GetArraySize(m) == 2) {
        const cJSON *x = m->child, *y = m->child->next;
        if (!cJSON_IsString(x) || !cJSON_IsString(y) || !x->valuestring ||
            !y->valuestring || !x->valuestring[0] || !y->valuestring[0])
            return -1;
        *a = x->valuestring; *na = strlen(x->valuestring);
        *b = y->valuestring; *nb = strlen(y->valuestring);
        return 0;
    }
    return -1;
}

/* Loads model (BPE): vocab, merges and options. n_vocab must be known. */
static int tk_load_model(dseek_tokenizer *tok, tk_ctx *c, const cJSON *model) {
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    const cJSON *merges = cJSON_GetObjectItemCaseSensitive(model, "merges");
    const cJSON *v;

    /* vocabulary */
    cJSON_ArrayForEach(v, vocab) {
        int id = 0;
        if (tk_json_id(v, &id) || (size_t)id >= tok->vocab.n)
            return tk_fail(c->err, c->errlen,
                           "%s: model.vocab[\"%s\"]: not a valid id", c->file,
                           v->string ? v->string : "?");
        if (tok->vocab.off[id] != UINT32_MAX)
            return tk_fail(c->err, c->errlen,
                           "%s: model.vocab[\"%s\"]: id %d used twice",
                           c->file, v->string, id);
        if (tk_strtab_set(&tok->vocab, (size_t)id, v->string, strlen(v->string)))
            return tk_fail(c->err, c->errlen, "%s: out of memory", c->file);
    }
    if (tk_strmap_init(&tok->vocab_map, (size_t)cJSON_GetArraySize(vocab)))
        return tk_fail(c->err, c->errlen, "%s: out of memory", c->file);
    for (size_t id = 0; id < tok->vocab.n; id++)
        if (tok->vocab.off[id] != UINT32_MAX)
            tk_strmap_put(&tok->vocab_map, &tok->vocab, (int)id);

    /* merges */
    if (!cJSON_IsArray(merges))
        return tk_fail(c->err, c->errlen,
                       "%s: model.merges: missing or not an array", c->file);
    if (tk_pairmap_init(&tok->merges, (size_t)cJSON_GetArraySize(merges)))
        return tk_fail(c->err, c->errlen, "%s: out of memory", c->file);
    uint32_t rank = 0;
    tk_buf joined = {0};
    cJSON_ArrayForEach(v, merges) {
        const char *a, *b;
        size_t na, nb;
        if (tk_merge_halves(v, &a, &na, &b, &nb)) {
            free(joined.p);
            return tk_fail(c->err, c->errlen,
                           "%s: model.merges[%u]: not a string pair", c->file,
                           rank);
        }
        int ia = tk_strmap_get(&tok->vocab_map, &tok->vocab, a, na);
        int ib = tk_strmap_get(&tok->vocab_map, &tok->vocab, b, nb);
        if (ia < 0 || ib < 0) {
            free(joined.p);
            return tk_fail(c->err, c->errlen,
                           "%s: model.merges[%u]: '%.*s' not in vocab",
                           c->file, rank, (int)(ia < 0 ? na : nb),
                           ia < 0 ? a : b);
        }
        joined.n = 0;
        if (tk_buf_put(&joined, a, na) || tk_buf_put(&joined, b, nb)) {
            free(joined.p);
            return tk_fail(c->err, c->errlen, "%s: out of memory", c->file);
        }
        int io = tk_strmap_get(&tok->vocab_map, &tok->vocab, joined.p,
                               joined.n);
        if (io < 0) {
            int bad = tk_fail(c->err, c->errlen,
                              "%s: model.merges[%u]: merged token '%s' not in "
                              "vocab", c->file, rank, joined.p);
            free(joined.p);
            return bad;
        }
        tk_pairmap_put(&tok->merges, ia, ib, rank, io);
        rank++;
    }
    free(joined.p);

    /* options */
    const cJSON *o;
    if (tk_json_bool(c, model, "model", "fuse_unk", 0, &tok->fuse_unk) ||
        tk_json_bool(c, model, "model", "byte_fallback", 0,
                     &tok->byte_fallback) ||
        tk_json_bool(c, model, "model", "ignore_merges", 0,
                     &tok->ignore_merges)) return -1;
    o = cJSON_GetObjectItemCaseSensitive(model, "dropout");
    if (o && !cJSON_IsNull(o) && !(cJSON_IsNumber(o) && o->valuedouble == 0))
        return tk_fail(c->err, c->errlen,
                       "%s: model.dropout: BPE dropout is not supported",
                       c->file);
    static const char *unsup[] = {"continuing_subword_prefix",
                                  "end_of_word_suffix"};
    for (int i = 0; i < 2; i++) {
        o = cJSON_GetObjectItemCaseSensitive(model, unsup[i]);
        if (o && !cJSON_IsNull(o) &&
            !(cJSON_IsString(o) && o->valuestring && !o->valuestring[0]))
            return tk_fail(c->err, c->errlen, "%s: model.%s: not supported",
                           c->file, unsup[i]);
    }
    tok->unk_id = -1;
    o = cJSON_GetObjectItemCaseSensitive(model, "unk_token");
    if (o && !cJSON_IsNull(o)) {
        if (!cJSON_IsString(o) || !o->valuestring)
            return tk_fail(c->err, c->errlen,
                           "%s: model.unk_token: not a string", c->file);
        tok->unk_id = tk_strmap_get(&tok->vocab_map, &tok->vocab,
                                    o->valuestring, strlen(o->valuestring));
        if (tok->unk_id < 0)
            return tk_fail(c->err, c->errlen,
                           "%s: model.unk_token: '%s' not in vocab", c->file,
                           o->valuestring);
    }
    for (int b = 0; b < 256; b++) {
        char name[8];
        snprintf(name, sizeof name, "<0x%02X>", b);
        tok->byte_ids[b] = tok->byte_fallback
            ? tk_strmap_get(&tok->vocab_map, &tok->vocab, name, 6) : -1;
    }
    for (uint32_t cp = 0; cp < 0x180; cp++) {
        char u[4];
        size_t l = tk_utf8_encode(cp, u);
        tok->cp_id[cp] = tk_strmap_get(&tok->vocab_map, &tok->vocab, u, l);
    }
    return 0;
}

/* Loads added_tokens (optional array). */
static int tk_load_added(dseek_tokenizer *tok, tk_ctx *c, const cJSON *arr) {
    if (!arr || cJSON_IsNull(arr)) return 0;
    if (!cJSON_IsArray(arr))
        return tk_fail(c->err, c->errlen, "%s: added_tokens: not an array",
                       c->file);
    size_t n = (size_t)cJSON_GetArraySize(arr);
    tok->added = calloc(n ? n : 1, sizeof *tok->added);
    if (!tok->added) return tk_fail(c->err, c->errlen, "%s: out of memory",
                                    c->file);
    const cJSON *t;
    cJSON_ArrayForEach(t, arr) {
        char path[64];
        snprintf(path, sizeof path, "added_tokens[%zu]", tok->n_added);
        if (!cJSON_IsObject(t))
            return tk_fail(c->err, c->errlen, "%s: %s: not an object", c->file,
                           path);
        tk_added *a = &tok->added[tok->n_added];
        const char *content;
        if (tk_json_id(cJSON_GetObjectItemCaseSensitive(t, "id"), &a->id))
            return tk_fail(c->err, c->errlen,
                           "%s: %s.id: missing or not a valid id", c->file,
                           path);
        if (tk_json_str(c, t, path, "content", &content)) return -1;
        if (!content[0])
            return tk_fail(c->err, c->errlen, "%s: %s.content: empty",
                           c->file, path);
        if (tk_json_bool(c, t, path, "special", 0, &a->special) ||
            tk_json_bool(c, t, path, "lstrip", 0, &a->lstrip) ||
            tk_json_bool(c, t, path, "rstrip", 0, &a->rstrip) ||
            tk_json_bool(c, t, path, "single_word", 0, &a->single_word) ||
            tk_json_bool(c, t, path, "normalized", !a->special,
                         &a->normalized)) return -1;
        a->len = strlen(content);
        if (!(a->content = tk_strndup(content, a->len)))
            return tk_fail(c->err, c->errlen, "%s: out of memory", c->file);
        tok->n_added++;
    }
    return 0;
}

/* Applies the normalizer steps to s[0..n), result in out. Returns 0 or -1. */
static int tk_normalize(const dseek_tokenizer *tok, const char *s, size_t n,
                        tk_buf *out, pcre2_match_data *md, tk_piece **pc,
                        size_t *cap_pc) {
    tk_buf cur = {0};
    out->n = 0;
    if (tk_buf_put(out, s, n)) return -1;
    for (size_t k = 0; k < tok->n_norm; k++) {
        const tk_norm *st = &tok->norm[k];
        cur.n = 0;
        if (st->kind == TK_NORM_PREPEND) {
            if (out->n == 0) continue;
            if (tk_buf_put(&cur, st->str, st->len) ||
                tk_buf_put(&cur, out->p, out->n)) goto oom;
        } else if (st->kind == TK_NORM_STRIP) {
            size_t a = st->left ? tk_space_prefix(out->p, out->n) : 0;
            size_t b = st->right ? tk_space_suffix(out->p + a, out->n - a) : 0;
            if (tk_buf_put(&cur, out->p + a, out->n - a - b)) goto oom;
        } else {
            size_t n_pc = 0;
            if (tk_re_pieces(st->re, out->p, out->n, md, pc, &n_pc, cap_pc))
                goto oom;
            for (size_t i = 0; i < n_pc; i++) {
                const tk_piece *p = &(*pc)[i];
                if (p->m ? tk_buf_put(&cur, st->str, st->len)
                         : tk_buf_put(&cur, out->p + p->s, p->e - p->s))
                    goto oom;
            }
        }
        tk_buf t = *out; *out = cur; cur = t;   /* swap */
    }
    free(cur.p);
    return 0;
oom:
    free(cur.p);
    return -1;
}

/* Builds the per-id decoded bytes (ByteLevel decoding when byte_level). */
static int tk_build_decoder(dseek_tokenizer *tok, int byte_level) {
    if (tk_strtab_init(&tok->dec, tok->n_vocab)) return -1;
    tk_buf tmp = {0};
    const char **piece = calloc(tok->n_vocab, sizeof *piece);
    size_t *plen = calloc(tok->n_vocab, sizeof *plen);
    if (!piece || !plen) goto oom;
    for (size_t id = 0; id < tok->n_vocab; id++)
        piece[id] = tk_strtab_get(&tok->vocab, (int)id, &plen[id]);
    for (size_t i = 0; i < tok->n_added; i++) {
        piece[tok->added[i].id] = tok->added[i].content;
        plen[tok->added[i].id] = tok->added[i].len;
    }
    for (size_t id = 0; id < tok->n_vocab; id++) {
        const char *s = piece[id];
        size_t n = plen[id];
        if (!s) continue;
        tmp.n = 0;
        int ok = byte_level;
        for (size_t i = 0; ok && i < n;) {
            uint32_t cp;
            size_t l = tk_utf8_decode((const unsigned char *)s + i, n - i, &cp);
            int b = l ? tk_u2b(tok, cp) : -1;
            if (b < 0) { ok = 0; break; }
            unsigned char byte = (unsigned char)b;
            if (tk_buf_put(&tmp, &byte, 1)) goto oom;
            i += l;
        }
        if (ok ? tk_strtab_set(&tok->dec, id, tmp.p ? tmp.p : "", tmp.n)
               : tk_strtab_set(&tok->dec, id, s, n)) goto oom;
    }
    free(tmp.p); free(piece); free(plen);
    return 0;
oom:
    free(tmp.p); free(piece); free(plen);
    return -1;
}

/* Parses the parsed tokenizer.json root into tok. */
static int tk_load_json(dseek_tokenizer *tok, tk_ctx *c, const cJSON *root) {
    if (!cJSON_IsObject(root))
        return tk_fail(c->err, c->errlen, "%s: not a JSON object", c->file);
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    if (!cJSON_IsObject(model))
        return tk_fail(c->err, c->errlen, "%s: model: missing or not an object",
                       c->file);
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(model, "type");
    if (type && !cJSON_IsNull(type)) {
        if (!cJSON_IsString(type) || !type->valuestring)
            return tk_fail(c->err, c->errlen, "%s: model.type: not a string",
                           c->file);
        if (strcmp(type->valuestring, "BPE"))
            return tk_fail(c->err, c->errlen,
                           "%s: model.type: unsupported model type '%s' "
                           "(only BPE)", c->file, type->valuestring);
    }
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    if (!cJSON_IsObject(vocab))
        return tk_fail(c->err, c->errlen,
                       "%s: model.vocab: missing or not an object", c->file);

    /* sizes: max id over vocab and added tokens */
    int max_id = -1;
    const cJSON *v;
    cJSON_ArrayForEach(v, vocab) {
        int id;
        if (tk_json_id(v, &id))
            return tk_fail(c->err, c->errlen,
                           "%s: model.vocab[\"%s\"]: not a valid id", c->file,
                           v->string ? v->string : "?");
        if (id > max_id) max_id = id;
    }
    if (tk_load_added(tok, c, cJSON_GetObjectItemCaseSensitive(root,
                                                               "added_tokens")))
        return -1;
    for (size_t i = 0; i < tok->n_added; i++)
        if (tok->added[i].id > max_id) max_id = tok->added[i].id;
    if (max_id < 0)
        return tk_fail(c->err, c->errlen, "%s: model.vocab: empty", c->file);
    tok->n_vocab = (size_t)max_id + 1;
    if (tk_strtab_init(&tok->vocab, tok->n_vocab))
        return tk_fail(c->err, c->errlen, "%s: out of memory", c->file);
    if (tk_load_model(tok, c, model)) return -1;

    if (tk_load_normalizer(tok, c,
                           cJSON_GetObjectItemCaseSensitive(root, "normalizer"),
                           "normalizer", 0) ||
        tk_load_pretok(tok, c,
                       cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer"),
                       "pre_tokenizer", 0)) return -1;

    /* decoder: ByteLevel, or none (pieces are output as stored) */
    const cJSON *dec = cJSON_GetObjectItemCaseSensitive(root, "decoder");
    int byte_level = 0;
    if (dec && !cJSON_IsNull(dec)) {
        const char *dt;
        if (!cJSON_IsObject(dec))
            return tk_fail(c->err, c->errlen, "%s: decoder: not an object",
                           c->file);
        if (tk_json_str(c, dec, "decoder", "type", &dt)) return -1;
        if (strcmp(dt, "ByteLevel"))
            return tk_fail(c->err, c->errlen,
                           "%s: decoder.type: unsupported decoder '%s'",
                           c->file, dt);
        byte_level = 1;
    }

    /* added tokens: special flags and tries (normalized content for the
     * normalized ones, as HF matches those on normalized text) */
    tok->is_special = calloc(tok->n_vocab, 1);
    if (!tok->is_special)
        return tk_fail(c->err, c->errlen, "%s: out of memory", c->file);
    for (size_t i = 0; i < tok->n_added; i++) {
        tk_added *a = &tok->added[i];
        if (a->special) tok->is_special[a->id] = 1;
        const char *key = a->content;
        size_t klen = a->len;
        tk_buf nb = {0};
        if (a->normalized && tok->n_norm) {
            size_t cap_pc = 0;
            tk_piece *pc = NULL;
            pcre2_match_data *md = pcre2_match_data_create(8, NULL);
            int bad = !md || tk_normalize(tok, a->content, a->len, &nb, md,
                                          &pc, &cap_pc);
            pcre2_match_data_free(md);
            free(pc);
            if (bad) {
                free(nb.p);
                return tk_fail(c->err, c->errlen, "%s: out of memory",
                               c->file);
            }
            key = nb.p;
            klen = nb.n;
        }
        int bad = klen && tk_trie_put(a->normalized ? &tok->trie_norm
                                                    : &tok->trie_raw,
                                      key, klen, (int)i);
        free(nb.p);
        if (bad) return tk_fail(c->err, c->errlen, "%s: out of memory",
                                c->file);
    }
    if (tk_build_decoder(tok, byte_level))
        return tk_fail(c->err, c->errlen, "%s: out of memory", c->file);
    return 0;
}

/* ----------------------------------------------------------------------------
 * Loading tokenizer_config.json
 * ------------------------------------------------------------------------- */

/* Reads bos_token / eos_token: a string, {"content": string} or null.
 * *out is a malloc'ed copy ("" when absent). */
static int tk_config_token(tk_ctx *c, const cJSON *root, const char *key,
                           char **out) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    const char *s = "";
    if (v && cJSON_IsObject(v))
        v = cJSON_GetObjectItemCaseSensitive(v, "content");
    if (v && cJSON_IsString(v) && v->valuestring) s = v->valuestring;
    else if (v && !cJSON_IsNull(v))
        return tk_fail(c->err, c->errlen,
                       "%s: %s: not a string or {\"content\": string}",
                       c->file, key);
    if (!(*out = tk_strndup(s, strlen(s))))
        return tk_fail(c->err, c->errlen, "%s: out of memory", c->file);
    return 0;
}

/* Finds the id of a token text: added token content, then vocabulary. */
static int tk_lookup(const dseek_tokenizer *tok, const char *s, size_t n) {
    for (size_t i = 0; i < tok->n_added; i++)
        if (tok->added[i].len == n && !memcmp(tok->added[i].content, s, n))
            return tok->added[i].id;
    return tk_strmap_get(&tok->vocab_map, &tok->vocab, s, n);
}

/* Recognises the chat template family from its source text. */
static void tk_detect_family(dseek_tokenizer *tok, const char *tpl) {
    tok->family = DSEEK_CHAT_NONE;
    tok->think_prompt = 0;
    if (!tpl) return;
    if (strstr(tpl, "<\xef\xbd\x9cUser\xef\xbd\x9c>") &&          /* <｜User｜> */
        strstr(tpl, "<\xef\xbd\x9c" "Assistant\xef\xbd\x9c>")) {
        tok->family = strstr(tpl, "</think>") ? DSEEK_CHAT_R1 : DSEEK_CHAT_V3;
        tok->think_prompt =
            strstr(tpl, "<\xef\xbd\x9c" "Assistant\xef\xbd\x9c><think>") != NULL;
    } else if (strstr(tpl, "User: ") && strstr(tpl, "Assistant:")) {
        tok->family = DSEEK_CHAT_V2;
    }
}

/* Reads tokenizer_config.json: add_bos_token, bos/eos and the chat
 * template family. */
static int tk_load_config(dseek_tokenizer *tok, tk_ctx *c, const cJSON *root) {
    if (!cJSON_IsObject(root))
        return tk_fail(c->err, c->errlen, "%s: not a JSON object", c->file);
    if (tk_json_bool(c, root, "(root)", "add_bos_token", 0, &tok->add_bos))
        return -1;
    free(tok->bos_str); tok->bos_str = NULL;
    free(tok->eos_str); tok->eos_str = NULL;
    if (tk_config_token(c, root, "bos_token", &tok->bos_str) ||
        tk_config_token(c, root, "eos_token", &tok->eos_str)) return -1;
    tok->bos_id = tok->eos_id = -1;
    if (tok->bos_str[0] &&
        (tok->bos_id = tk_lookup(tok, tok->bos_str, strlen(tok->bos_str))) < 0)
        return tk_fail(c->err, c->errlen, "%s: bos_token: '%s' is not a token",
                       c->file, tok->bos_str);
    if (tok->eos_str[0] &&
        (tok->eos_id = tk_lookup(tok, tok->eos_str, strlen(tok->eos_str))) < 0)
        return tk_fail(c->err, c->errlen, "%s: eos_token: '%s' is not a token",
                       c->file, tok->eos_str);
    if (tok->add_bos && tok->bos_id < 0)
        return tk_fail(c->err, c->errlen,
                       "%s: add_bos_token: true but no bos_token", c->file);

    const cJSON *t = cJSON_GetObjectItemCaseSensitive(root, "chat_template");
    const char *tpl = NULL;
    if (cJSON_IsString(t)) {
        tpl = t->valuestring;
    } else if (cJSON_IsArray(t)) {             /* [{name, template}, ...] */
        const cJSON *it;
        cJSON_ArrayForEach(it, t) {
            const cJSON *nm = cJSON_GetObjectItemCaseSensitive(it, "name");
            const cJSON *tp = cJSON_GetObjectItemCaseSensitive(it, "template");
            if (!cJSON_IsString(nm) || !cJSON_IsString(tp))
                return tk_fail(c->err, c->errlen,
                               "%s: chat_template: entries need name and "
                               "template strings", c->file);
            if (!strcmp(nm->valuestring, "default")) tpl = tp->valuestring;
        }
    } else if (t && !cJSON_IsNull(t)) {
        return tk_fail(c->err, c->errlen, "%s: chat_template: not a string",
                       c->file);
    }
    tk_detect_family(tok, tpl);
    return 0;
}

/* Reads and parses a JSON file. Returns the root or NULL (error set). */
static cJSON *tk_parse_file(const char *path, tk_ctx *c) {
    size_t len;
    char *text = tk_read_file(path, &len);
    if (!text) {
        tk_fail(c->err, c->errlen, "%s: cannot read: %s", c->file,
                strerror(errno));
        return NULL;
    }
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(text, len, &end, 0);
    if (!root) {
        size_t at = end && end >= text ? (size_t)(end - text) : 0;
        tk_fail(c->err, c->errlen, "%s: invalid JSON near byte %zu", c->file,
                at);
    }
    free(text);
    return root;
}

/* Loads both files; on failure *out is NULL and err names file and field. */
int dseek_tokenizer_load_files(const char *tokenizer_json,
                               const char *config_path, dseek_tokenizer **out,
                               char *err, size_t errlen) {
    *out = NULL;
    if (err && errlen) err[0] = 0;
    dseek_tokenizer *tok = calloc(1, sizeof *tok);
    if (!tok) return tk_fail(err, errlen, "tokenizer: out of memory");
    tok->unk_id = tok->bos_id = tok->eos_id = -1;
    tk_trie_init(&tok->trie_raw);
    tk_trie_init(&tok->trie_norm);
    tk_init_bytelevel(tok);

    tk_ctx c = {tk_basename(tokenizer_json), err, errlen};
    cJSON *root = tk_parse_file(tokenizer_json, &c);
    if (!root || tk_load_json(tok, &c, root)) goto fail;
    cJSON_Delete(root);
    root = NULL;

    if (config_path) {
        c.file = tk_basename(config_path);
        root = tk_parse_file(config_path, &c);
        if (!root || tk_load_config(tok, &c, root)) goto fail;
        cJSON_Delete(root);
    } else {
        tok->bos_str = tk_strndup("", 0);
        tok->eos_str = tk_strndup("", 0);
        if (!tok->bos_str || !tok->eos_str) {
            tk_fail(err, errlen, "tokenizer: out of memory");
            goto fail;
        }
    }
    *out = tok;
    return 0;
fail:
    cJSON_Delete(root);
    dseek_tokenizer_free(tok);
    return -1;
}

/* Loads DIR/tokenizer.json and DIR/tokenizer_config.json. */
int dseek_tokenizer_load(const char *dir, dseek_tokenizer **out, char *err,
                         size_t errlen) {
    size_t n = strlen(dir);
    char *a = malloc(n + 32), *b = malloc(n + 32);
    int rc;
    if (!a || !b) {
        free(a); free(b);
        *out = NULL;
        return tk_fail(err, errlen, "tokenizer: out of memory");
    }
    snprintf(a, n + 32, "%s/tokenizer.json", dir);
    snprintf(b, n + 32, "%s/tokenizer_config.json", dir);
    rc = dseek_tokenizer_load_files(a, b, out, err, errlen);
    free(a); free(b);
    return rc;
}

/* Simple getters (see dseek_tokenizer.h). */
size_t dseek_vocab_size(const dseek_tokenizer *tok) { return tok->n_vocab; }
int dseek_bos_id(const dseek_tokenizer *tok) { return tok->bos_id; }
int dseek_eos_id(const dseek_tokenizer *tok) { return tok->eos_id; }
int dseek_add_bos_default(const dseek_tokenizer *tok) { return tok->add_bos; }

/* Id of a stored piece: added token content first, then the vocabulary. */
int dseek_token_id(const dseek_tokenizer *tok, const char *piece) {
    return tk_lookup(tok, piece, strlen(piece));
}

/* Stored piece of id (added token content or vocabulary string). */
const char *dseek_token_piece(const dseek_tokenizer *tok, int id) {
    if (id < 0 || (size_t)id >= tok->n_vocab) return NULL;
    for (size_t i = 0; i < tok->n_added; i++)
        if (tok->added[i].id == id) return tok->added[i].content;
    return tk_strtab_get(&tok->vocab, id, NULL);
}

/* 1 if id is a special added token. */
int dseek_token_is_special(const dseek_tokenizer *tok, int id) {
    return id >= 0 && (size_t)id < tok->n_vocab && tok->is_special[id];
}

/* ----------------------------------------------------------------------------
 * Encoding
 * ------------------------------------------------------------------------- */

typedef struct {
    int id;                 /* token id, -1 once merged into the left one */
    int prev;               /* previous live symbol, -1 if first */
    int next;               /* next live symbol, -1 if last */
} tk_sym;

typedef struct {
    uint64_t hash;          /* key hash | 1; 0 = empty slot */
    uint32_t key_off;       /* key bytes in tk_enc.ckeys */
    uint32_t key_len;
    uint32_t ids_off;       /* ids in tk_enc.cids */
    uint32_t ids_n;
} tk_centry;

typedef struct {            /* scratch state of one dseek_tokenize call */
    const dseek_tokenizer *tok;
    pcre2_match_data *md;   /* match data sized for our patterns */
    tk_buf     norm;        /* normalized text of the current section */
    tk_buf     bl[2];       /* ByteLevel outputs (alternating) */
    tk_buf     tmp;         /* ByteLevel prefix-space copy */
    tk_piece  *sp[2];       /* spans of the current / next pre-token step */
    size_t     n_sp[2], cap_sp[2];
    tk_piece  *pc;          /* regex pieces */
    size_t     cap_pc;
    tk_sym    *sym;         /* BPE symbols of the current word */
    size_t     cap_sym;
    uint64_t  *heap;        /* BPE merge candidates: (rank << 32) | pos */
    size_t     n_heap, cap_heap;
    tk_centry *cache;       /* word -> ids cache (per call) */
    size_t     cache_mask, cache_n;
    tk_buf     ckeys;       /* cached words' bytes */
    int       *cids;        /* cached words' ids */
    size_t     n_cids, cap_cids;
    int       *ids;         /* output */
    size_t     n_ids, cap_ids;
} tk_enc;

/* Appends one id to the output. Returns 0 or -1 (no memory). */
static int tk_emit(tk_enc *e, int id) {
    if (tk_grow(&e->ids, &e->cap_ids, e->n_ids + 1, sizeof *e->ids)) return -1;
    e->ids[e->n_ids++] = id;
    return 0;
}

/* Pushes k onto the min-heap of merge candidates. */
static void tk_heap_push(tk_enc *e, uint64_t k) {   /* capacity ensured */
    size_t i = e->n_heap++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (e->heap[p] <= k) break;
        e->heap[i] = e->heap[p];
        i = p;
    }
    e->heap[i] = k;
}

/* Pops the smallest key (lowest rank, then leftmost position). */
static uint64_t tk_heap_pop(tk_enc *e) {
    uint64_t top = e->heap[0], k = e->heap[--e->n_heap];
    size_t i = 0, n = e->n_heap;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && e->heap[c + 1] < e->heap[c]) c++;
        if (k <= e->heap[c]) break;
        e->heap[i] = e->heap[c];
        i = c;
    }
    if (n) e->heap[i] = k;
    return top;
}

/* Queues the merge of symbol pos with its right neighbour, if any. */
static void tk_bpe_candidate(tk_enc *e, int pos) {
    int nx = e->sym[pos].next;
    uint32_t rank;
    int out;
    if (nx >= 0 && tk_pairmap_get(&e->tok->merges, e->sym[pos].id,
                                  e->sym[nx].id, &rank, &out))
        tk_heap_push(e, ((uint64_t)rank << 32) | (uint32_t)pos);
}

/* Id of the single character s[0..n) (n is its length), or -1. */
static int tk_char_id(const dseek_tokenizer *tok, const char *s, size_t n) {
    uint32_t cp;
    if (tk_utf8_decode((const unsigned char *)s, n, &cp) == n && cp < 0x180)
        return tok->cp_id[cp];
    return tk_strmap_get(&tok->vocab_map, &tok->vocab, s, n);
}

/* Runs BPE on one word s[0..n) (n > 0), appending its ids to e->ids.
 * Returns 0 or -1 (no memory). */
static int tk_bpe(tk_enc *e, const char *s, size_t n) {
    const dseek_tokenizer *tok = e->tok;
    if (n > (size_t)INT32_MAX / 4) return -1;       /* positions are ints */
    if (tok->ignore_merges) {
        int id = tk_strmap_get(&tok->vocab_map, &tok->vocab, s, n);
        if (id >= 0) return tk_emit(e, id);
    }
    /* symbols: one per character (byte for ill-formed input) */
    if (tk_grow(&e->sym, &e->cap_sym, n, sizeof *e->sym) ||
        tk_grow(&e->heap, &e->cap_heap, 2 * n + 2, sizeof *e->heap))
        return -1;
    int ns = 0;
    int last_unk = 0;
    for (size_t i = 0; i < n;) {
        size_t l = tk_char_len((const unsigned char *)s + i, n - i);
        int id = tk_char_id(tok, s + i, l);
        if (id < 0 && tok->byte_fallback) {
            int all = 1;
            for (size_t k = 0; k < l; k++)
                if (tok->byte_ids[(unsigned char)s[i + k]] < 0) all = 0;
            if (all) {
                for (size_t k = 0; k < l; k++, ns++)
                    e->sym[ns] = (tk_sym){
                        tok->byte_ids[(unsigned char)s[i + k]], ns - 1, ns + 1};
                last_unk = 0;
                i += l;
                continue;
            }
        }
        if (id < 0) {
            if (tok->unk_id >= 0 && !(tok->fuse_unk && last_unk)) {
                e->sym[ns] = (tk_sym){tok->unk_id, ns - 1, ns + 1};
                ns++;
            }
            last_unk = tok->unk_id >= 0;
            i += l;                 /* without unk_token the char is dropped */
            continue;
        }
        e->sym[ns] = (tk_sym){id, ns - 1, ns + 1};
        ns++;
        last_unk = 0;
        i += l;
    }
    if (ns == 0) return 0;
    e->sym[ns - 1].next = -1;

    /* merge the lowest-ranked pair first (leftmost on ties) */
    e->n_heap = 0;
    for (int i = 0; i + 1 < ns; i++) tk_bpe_candidate(e, i);
    while (e->n_heap) {
        uint64_t k = tk_heap_pop(e);
        int pos = (int)(uint32_t)k;
        uint32_t want = (uint32_t)(k >> 32), rank;
        int out, nx;
        if (e->sym[pos].id < 0 || (nx = e->sym[pos].next) < 0) continue;
        if (!tk_pairmap_get(&tok->merges, e->sym[pos].id, e->sym[nx].id, &rank,
                            &out) || rank != want) continue;
        e->sym[pos].id = out;
        e->sym[nx].id = -1;
        e->sym[pos].next = e->sym[nx].next;
        if (e->sym[pos].next >= 0) e->sym[e->sym[pos].next].prev = pos;
        if (e->n_heap + 2 > e->cap_heap &&
            tk_grow(&e->heap, &e->cap_heap, e->n_heap + 2, sizeof *e->heap))
            return -1;
        if (e->sym[pos].prev >= 0) tk_bpe_candidate(e, e->sym[pos].prev);
        tk_bpe_candidate(e, pos);
    }
    for (int i = 0; i >= 0; i = e->sym[i].next)
        if (tk_emit(e, e->sym[i].id)) return -1;
    return 0;
}

/* Grows the word cache to hold at least one more entry. */
static int tk_cache_grow(tk_enc *e) {
    if (e->cache && (e->cache_n + 1) * 2 <= e->cache_mask + 1) return 0;
    size_t cap = e->cache ? (e->cache_mask + 1) * 2 : 1024;
    tk_centry *nc = calloc(cap, sizeof *nc);
    if (!nc) return -1;
    if (e->cache)
        for (size_t i = 0; i <= e->cache_mask; i++) {
            tk_centry *x = &e->cache[i];
            if (!x->hash) continue;
            size_t j = (size_t)x->hash & (cap - 1);
            while (nc[j].hash) j = (j + 1) & (cap - 1);
            nc[j] = *x;
        }
    free(e->cache);
    e->cache = nc;
    e->cache_mask = cap - 1;
    return 0;
}

/* Encodes one pre-token through the cache and BPE. */
static int tk_word(tk_enc *e, const char *s, size_t n) {
    if (n == 0) return 0;
    if (n == 1 || n > 256) {                /* not worth caching */
        if (n == 1) {
            int id = tk_char_id(e->tok, s, 1);
            if (id >= 0) return tk_emit(e, id);
        }
        return tk_bpe(e, s, n);
    }
    if (tk_cache_grow(e)) return -1;
    uint64_t h = tk_hash(s, n) | 1;
    size_t i = (size_t)h & e->cache_mask;
    for (; e->cache[i].hash; i = (i + 1) & e->cache_mask) {
        tk_centry *x = &e->cache[i];
        if (x->hash == h && x->key_len == n &&
            !memcmp(e->ckeys.p + x->key_off, s, n)) {
            if (tk_grow(&e->ids, &e->cap_ids, e->n_ids + x->ids_n,
                        sizeof *e->ids)) return -1;
            memcpy(e->ids + e->n_ids, e->cids + x->ids_off,
                   x->ids_n * sizeof *e->ids);
            e->n_ids += x->ids_n;
            return 0;
        }
    }
    size_t first = e->n_ids;
    if (tk_bpe(e, s, n)) return -1;
    size_t cnt = e->n_ids - first;
    if (e->ckeys.n + n > UINT32_MAX || e->n_cids + cnt > UINT32_MAX) return 0;
    if (tk_grow(&e->cids, &e->cap_cids, e->n_cids + cnt, sizeof *e->cids))
        return -1;
    tk_centry x = {h, (uint32_t)e->ckeys.n, (uint32_t)n, (uint32_t)e->n_cids,
                   (uint32_t)cnt};
    if (tk_buf_put(&e->ckeys, s, n)) return -1;
    memcpy(e->cids + e->n_cids, e->ids + first, cnt * sizeof *e->ids);
    e->n_cids += cnt;
    e->cache[i] = x;
    e->cache_n++;
    return 0;
}

/* Appends span [s, e) to spans list k (empty spans are dropped). */
static int tk_span_push(tk_enc *e, int k, size_t s, size_t en) {
    if (en <= s) return 0;
    if (tk_grow(&e->sp[k], &e->cap_sp[k], e->n_sp[k] + 1, sizeof *e->sp[k]))
        return -1;
    e->sp[k][e->n_sp[k]++] = (tk_piece){s, en, 0};
    return 0;
}

/* Applies one Split step: every span of list `in` on text base is cut by
 * the pattern and the pieces grouped by behavior into list 1 - in. */
static int tk_split_step(tk_enc *e, const tk_pre *st, const char *base,
                         int in) {
    int out = 1 - in;
    e->n_sp[out] = 0;
    for (size_t k = 0; k < e->n_sp[in]; k++) {
        size_t off = e->sp[in][k].s, len = e->sp[in][k].e - off;
        size_t np = 0;
        if (tk_re_pieces(st->re, base + off, len, e->md, &e->pc, &np,
                         &e->cap_pc)) return -1;
        tk_piece *p = e->pc;
        if (st->invert)
            for (size_t i = 0; i < np; i++) p[i].m = !p[i].m;
        size_t start = e->n_sp[out];
        int prev = 0;
        if (st->behavior == TK_MERGED_NEXT) {
            /* right to left: a delimiter joins the piece that follows it */
            for (size_t i = np; i-- > 0;) {
                size_t last = e->n_sp[out];
                if (p[i].m && !prev && last > start)
                    e->sp[out][last - 1].s = p[i].s + off;
                else if (tk_grow(&e->sp[out], &e->cap_sp[out], last + 1,
                                 sizeof *e->sp[out])) return -1;
                else e->sp[out][e->n_sp[out]++] =
                         (tk_piece){p[i].s + off, p[i].e + off, 0};
                prev = p[i].m;
            }
            for (size_t a = start, b = e->n_sp[out]; a + 1 < b; a++, b--) {
                tk_piece t = e->sp[out][a];
                e->sp[out][a] = e->sp[out][b - 1];
                e->sp[out][b - 1] = t;
            }
        } else {
            for (size_t i = 0; i < np; i++) {
                size_t last = e->n_sp[out];
                int join = 0;
                if (st->behavior == TK_REMOVED && p[i].m) { prev = 1; continue; }
                if (st->behavior == TK_MERGED_PREV)
                    join = p[i].m && !prev && last > start;
                else if (st->behavior == TK_CONTIGUOUS)
                    join = p[i].m == prev && last > start;
                if (join) {
                    e->sp[out][last - 1].e = p[i].e + off;
                } else {
                    if (tk_grow(&e->sp[out], &e->cap_sp[out], last + 1,
                                sizeof *e->sp[out])) return -1;
                    e->sp[out][e->n_sp[out]++] =
                        (tk_piece){p[i].s + off, p[i].e + off, 0};
                }
                prev = p[i].m;
            }
        }
        /* drop empty pieces */
        size_t w = start;
        for (size_t i = start; i < e->n_sp[out]; i++)
            if (e->sp[out][i].e > e->sp[out][i].s) e->sp[out][w++] = e->sp[out][i];
        e->n_sp[out] = w;
    }
    return 0;
}

/* Maps s[0..n) through the ByteLevel table into b and records the span. */
static int tk_bytelevel_map(tk_enc *e, tk_buf *b, int out, const char *s,
                            size_t n) {
    size_t start = b->n;
    if (tk_grow(&b->p, &b->cap, b->n + 2 * n + 1, 1)) return -1;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        memcpy(b->p + b->n, e->tok->b2u_utf8[c], e->tok->b2u_len[c]);
        b->n += e->tok->b2u_len[c];
    }
    b->p[b->n] = 0;
    return tk_span_push(e, out, start, b->n);
}

/* Applies a ByteLevel step: optional prefix space, optional GPT-2 split,
 * byte -> unicode mapping into a fresh buffer (*base is updated). */
static int tk_bytelevel_step(tk_enc *e, const tk_pre *st, const char **base,
                             int in, int *which) {
    int out = 1 - in;
    tk_buf *b = &e->bl[*which];
    *which = 1 - *which;
    b->n = 0;
    e->n_sp[out] = 0;
    for (size_t k = 0; k < e->n_sp[in]; k++) {
        const char *s = *base + e->sp[in][k].s;
        size_t n = e->sp[in][k].e - e->sp[in][k].s;
        if (st->prefix && s[0] != ' ') {
            e->tmp.n = 0;
            if (tk_buf_put(&e->tmp, " ", 1) || tk_buf_put(&e->tmp, s, n))
                return -1;
            s = e->tmp.p;
            n = e->tmp.n;
        }
        if (!st->re) {
            if (tk_bytelevel_map(e, b, out, s, n)) return -1;
            continue;
        }
        size_t np = 0;
        if (tk_re_pieces(st->re, s, n, e->md, &e->pc, &np, &e->cap_pc))
            return -1;
        for (size_t i = 0; i < np; i++)
            if (e->pc[i].e > e->pc[i].s &&
                tk_bytelevel_map(e, b, out, s + e->pc[i].s,
                                 e->pc[i].e - e->pc[i].s)) return -1;
    }
    *base = b->p ? b->p : "";
    return 0;
}

/* Pre-tokenizes one normalized section s[0..n) and runs the model on it. */
static int tk_section(tk_enc *e, const char *s, size_t n) {
    const dseek_tokenizer *tok = e->tok;
    const char *base = s;
    int in = 0, which = 0;
    if (n == 0) return 0;
    e->n_sp[0] = 0;
    if (tk_span_push(e, 0, 0, n)) return -1;
    for (size_t k = 0; k < tok->n_pre; k++) {
        const tk_pre *st = &tok->pre[k];
        if (st->kind == TK_PRE_SPLIT ? tk_split_step(e, st, base, in)
                                     : tk_bytelevel_step(e, st, &base, in,
                                                         &which)) return -1;
        in = 1 - in;
    }
    for (size_t k = 0; k < e->n_sp[in]; k++)
        if (tk_word(e, base + e->sp[in][k].s,
                    e->sp[in][k].e - e->sp[in][k].s)) return -1;
    return 0;
}

typedef int (*tk_text_fn)(tk_enc *e, const char *s, size_t n);

/* Splits s[0..n) on the added tokens of trie t (leftmost, longest match,
 * honouring lstrip / rstrip / single_word); text between matches goes to
 * fn, matched tokens straight to the output. */
static int tk_split_added(tk_enc *e, const tk_trie *t, const char *s, size_t n,
                          tk_text_fn fn) {
    const dseek_tokenizer *tok = e->tok;
    size_t done = 0, i = 0;
    if (!t->used) return fn(e, s, n);
    while (i < n) {
        size_t mlen = 0;
        int a = t->root[(unsigned char)s[i]] < 0
                ? -1 : tk_trie_longest(t, s + i, n - i, &mlen);
        if (a < 0) { i++; continue; }
        const tk_added *at = &tok->added[a];
        size_t ms = i, me = i + mlen;
        if (at->single_word &&
            ((ms > 0 && tk_is_word_byte((unsigned char)s[ms - 1]) &&
              tk_is_word_byte((unsigned char)s[ms])) ||
             (me < n && tk_is_word_byte((unsigned char)s[me]) &&
              tk_is_word_byte((unsigned char)s[me - 1])))) {
            i++;
            continue;
        }
        if (at->lstrip) ms -= tk_space_suffix(s + done, ms - done);
        if (at->rstrip) me += tk_space_prefix(s + me, n - me);
        if (ms > done && fn(e, s + done, ms - done)) return -1;
        if (tk_emit(e, at->id)) return -1;
        done = i = me;
    }
    if (n > done && fn(e, s + done, n - done)) return -1;
    return 0;
}

/* Normalizes a raw-text section, then matches normalized added tokens. */
static int tk_normalized(tk_enc *e, const char *s, size_t n) {
    if (e->tok->n_norm == 0)
        return tk_split_added(e, &e->tok->trie_norm, s, n, tk_section);
    if (tk_normalize(e->tok, s, n, &e->norm, e->md, &e->pc, &e->cap_pc))
        return -1;
    return tk_split_added(e, &e->tok->trie_norm, e->norm.p, e->norm.n,
                          tk_section);
}

/* Encodes text: [bos] + added tokens / normalizer / pre-tokenizer / BPE.
 * All scratch state lives in this call; the tokenizer is only read. */
int dseek_tokenize(const dseek_tokenizer *tok, const char *text, size_t len,
                   int add_bos, int **ids, size_t *n_ids) {
    tk_enc e;
    memset(&e, 0, sizeof e);
    e.tok = tok;
    *ids = NULL;
    *n_ids = 0;
    int rc = -1;
    e.md = pcre2_match_data_create(16, NULL);
    if (!e.md) goto done;
    if (add_bos && tok->bos_id >= 0 && tk_emit(&e, tok->bos_id)) goto done;
    if (tk_split_added(&e, &tok->trie_raw, text ? text : "", text ? len : 0,
                       tk_normalized)) goto done;
    rc = 0;
    if (e.n_ids) {
        *ids = e.ids;
        *n_ids = e.n_ids;
        e.ids = NULL;
    }
done:
    pcre2_match_data_free(e.md);
    free(e.norm.p); free(e.bl[0].p); free(e.bl[1].p); free(e.tmp.p);
    free(e.sp[0]); free(e.sp[1]); free(e.pc);
    free(e.sym); free(e.heap);
    free(e.cache); free(e.ckeys.p); free(e.cids);
    free(e.ids);
    return rc;
}

/* ----------------------------------------------------------------------------
 * Decoding: whole and streaming, with UTF-8 repair
 * ------------------------------------------------------------------------- */

typedef struct {
    char   *p;              /* output buffer */
    size_t  n;              /* bytes of the whole output so far */
    size_t  cap;            /* bytes allocated (growable) or given (fixed) */
    int     fixed;          /* 1: never grow, count what does not fit */
    int     oom;            /* 1 once a growth failed */
} tk_sink;

/* Appends n bytes (a fixed sink keeps room for the final NUL). */
static void tk_sink_put(tk_sink *k, const void *s, size_t n) {
    if (k->fixed) {
        if (n && k->cap && k->n < k->cap - 1) {
            size_t room = k->cap - 1 - k->n;
            memcpy(k->p + k->n, s, n < room ? n : room);
        }
        k->n += n;
        return;
    }
    if (k->oom || tk_grow(&k->p, &k->cap, k->n + n + 1, 1)) {
        k->oom = 1;
        return;
    }
    if (n) memcpy(k->p + k->n, s, n);
    k->n += n;
    k->p[k->n] = 0;
}

/* U+FFFD REPLACEMENT CHARACTER in UTF-8. */
static const char tk_fffd[3] = {(char)0xEF, (char)0xBF, (char)0xBD};

typedef struct {
    unsigned char pend[4];  /* a well-formed prefix awaiting more bytes */
    size_t        n_pend;
} tk_utf8;

/* Feeds bytes to the repairer: well-formed characters pass through, each
 * maximal ill-formed subpart becomes one U+FFFD, an incomplete tail is held
 * in u (or replaced by U+FFFD when final). */
static void tk_utf8_feed(tk_utf8 *u, const unsigned char *s, size_t n,
                         int final, tk_sink *out) {
    size_t bad;
    /* complete a pending prefix first, one byte at a time */
    while (u->n_pend && n) {
        u->pend[u->n_pend++] = *s++;
        n--;
        size_t l = tk_utf8_check(u->pend, u->n_pend, &bad);
        if (l) {
            tk_sink_put(out, u->pend, l);
            u->n_pend = 0;
        } else if (bad) {
            /* the old prefix is the maximal subpart: the new byte restarts */
            tk_sink_put(out, tk_fffd, 3);
            u->n_pend = 0;
            s--;
            n++;
        }
    }
    size_t run = 0, i = 0;
    while (i < n) {                         /* (s may be NULL when n is 0) */
        size_t l = tk_utf8_check(s + i, n - i, &bad);
        if (l) { i += l; continue; }
        tk_sink_put(out, s + run, i - run);
        if (bad) {
            tk_sink_put(out, tk_fffd, 3);
            i += bad;
        } else {                                /* incomplete at the end */
            memcpy(u->pend, s + i, n - i);
            u->n_pend = n - i;
            i = n;
        }
        run = i;
    }
    if (n > run) tk_sink_put(out, s + run, n - run);
    if (final && u->n_pend) {
        tk_sink_put(out, tk_fffd, 3);
        u->n_pend = 0;
    }
}

/* Decoded bytes of id (NULL if invalid or skipped under flags). */
static const char *tk_id_bytes(const dseek_tokenizer *tok, int id, int flags,
                               size_t *len) {
    if (id < 0 || (size_t)id >= tok->n_vocab) return NULL;
    if ((flags & DSEEK_DETOK_SKIP_SPECIAL) && tok->is_special[id]) return NULL;
    return tk_strtab_get(&tok->dec, id, len);
}

/* Whole decode with snprintf-like output (see dseek_tokenizer.h). */
size_t dseek_detokenize(const dseek_tokenizer *tok, const int *ids, size_t n,
                        int flags, char *out, size_t cap) {
    tk_sink k = {out, 0, cap, 1, 0};
    tk_utf8 u = {{0}, 0};
    for (size_t i = 0; i < n; i++) {
        size_t len;
        const char *b = tk_id_bytes(tok, ids[i], flags, &len);
        if (!b) continue;
        if (flags & DSEEK_DETOK_RAW) tk_sink_put(&k, b, len);
        else tk_utf8_feed(&u, (const unsigned char *)b, len, 0, &k);
    }
    if (!(flags & DSEEK_DETOK_RAW)) tk_utf8_feed(&u, NULL, 0, 1, &k);
    if (cap) out[k.n < cap ? k.n : cap - 1] = 0;
    return k.n;
}

struct dseek_detok_stream {
    const dseek_tokenizer *tok;
    int     flags;          /* DSEEK_DETOK_* */
    tk_utf8 u;              /* held-back partial character */
    tk_sink out;            /* text returned by the last call */
};

/* New streaming decoder (NULL when out of memory). */
dseek_detok_stream *dseek_detok_stream_new(const dseek_tokenizer *tok,
                                           int flags) {
    dseek_detok_stream *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->tok = tok;
    s->flags = flags;
    return s;
}

/* Returns the collected output and resets the sink for the next call. */
static const char *tk_stream_take(dseek_detok_stream *s, size_t *len) {
    if (s->out.oom) { s->out.oom = 0; s->out.n = 0; *len = 0; return NULL; }
    if (!s->out.p) tk_sink_put(&s->out, "", 0);
    if (s->out.oom) { s->out.oom = 0; *len = 0; return NULL; }
    *len = s->out.n;
    s->out.n = 0;
    return s->out.p;
}

/* Decodes one more id; returns the complete characters now available. */
const char *dseek_detok_stream_push(dseek_detok_stream *s, int id,
                                    size_t *len) {
    size_t n;
    const char *b = tk_id_bytes(s->tok, id, s->flags, &n);
    s->out.n = 0;
    if (s->out.p) s->out.p[0] = 0;
    if (b) {
        if (s->flags & DSEEK_DETOK_RAW) tk_sink_put(&s->out, b, n);
        else tk_utf8_feed(&s->u, (const unsigned char *)b, n, 0, &s->out);
    }
    return tk_stream_take(s, len);
}

/* End of stream: held-back bytes come out as U+FFFD. */
const char *dseek_detok_stream_flush(dseek_detok_stream *s, size_t *len) {
    s->out.n = 0;
    if (s->out.p) s->out.p[0] = 0;
    tk_utf8_feed(&s->u, NULL, 0, 1, &s->out);
    return tk_stream_take(s, len);
}

/* Frees the stream (NULL is fine). */
void dseek_detok_stream_free(dseek_detok_stream *s) {
    if (!s) return;
    free(s->out.p);
    free(s);
}

/* ----------------------------------------------------------------------------
 * Chat templates
 *
 * Hand-written equivalents of the Jinja chat_template of each family, for
 * system / user / assistant messages:
 *   V2: bos, then per message: system "{c}\n\n", user "User: {c}\n\n",
 *       assistant "Assistant: {c}{eos}"; generation prompt "Assistant:".
 *   V3: bos, the system messages joined by "\n\n", then per message: user
 *       "<｜User｜>{c}", assistant "<｜Assistant｜>{c}<｜end▁of▁sentence｜>";
 *       generation prompt "<｜Assistant｜>".
 *   R1: as V3, but an assistant reply keeps only what follows its last
 *       "</think>"; the generation prompt adds "<think>\n" when the template
 *       does.
 * ------------------------------------------------------------------------- */

#define TK_USER      "<\xef\xbd\x9cUser\xef\xbd\x9c>"
#define TK_ASSISTANT "<\xef\xbd\x9c" "Assistant\xef\xbd\x9c>"
#define TK_EOS_V3    "<\xef\xbd\x9c" "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>"

/* Chat family recognised from tokenizer_config.json's chat_template. */
dseek_chat_family dseek_chat_family_of(const dseek_tokenizer *tok) {
    return tok->family;
}

/* Short name of a family (for logs). */
const char *dseek_chat_family_name(dseek_chat_family f) {
    switch (f) {
    case DSEEK_CHAT_V2: return "deepseek-v2";
    case DSEEK_CHAT_V3: return "deepseek-v3";
    case DSEEK_CHAT_R1: return "deepseek-r1";
    default:            return "none";
    }
}

/* 1 if the rendered generation prompt already opens <think>. */
int dseek_chat_prompt_opens_think(const dseek_tokenizer *tok) {
    return tok->family == DSEEK_CHAT_R1 && tok->think_prompt;
}

/* Appends a NUL-terminated string. */
static void tk_sink_puts(tk_sink *k, const char *s) { tk_sink_put(k, s, strlen(s)); }

/* Renders msgs the way the family's Jinja template does; malloc'ed. */
char *dseek_chat_render(const dseek_tokenizer *tok, const dseek_chat_msg *msgs,
                        size_t n, int add_generation_prompt) {
    tk_sink k = {0};
    enum { SYS, USER, ASSIST } role;
    tk_sink_put(&k, "", 0);
    for (size_t i = 0; i < n; i++) {                /* validate roles */
        const char *r = msgs[i].role;
        if (!r || !msgs[i].content ||
            (strcmp(r, "system") && strcmp(r, "user") && strcmp(r, "assistant")))
            goto fail;
    }
    if (tok->family == DSEEK_CHAT_NONE) {
        if (tok->add_bos) tk_sink_puts(&k, tok->bos_str);
        for (size_t i = 0; i < n; i++) {
            if (i) tk_sink_puts(&k, "\n\n");
            tk_sink_puts(&k, msgs[i].content);
        }
    } else if (tok->family == DSEEK_CHAT_V2) {
        tk_sink_puts(&k, tok->bos_str);
        for (size_t i = 0; i < n; i++) {
            const char *r = msgs[i].role, *c = msgs[i].content;
            role = !strcmp(r, "user") ? USER : !strcmp(r, "system") ? SYS : ASSIST;
            if (role == USER) {
                tk_sink_puts(&k, "User: "); tk_sink_puts(&k, c);
                tk_sink_puts(&k, "\n\n");
            } else if (role == ASSIST) {
                tk_sink_puts(&k, "Assistant: "); tk_sink_puts(&k, c);
                tk_sink_puts(&k, tok->eos_str);
            } else {
                tk_sink_puts(&k, c); tk_sink_puts(&k, "\n\n");
            }
        }
        if (add_generation_prompt) tk_sink_puts(&k, "Assistant:");
    } else {
        int first_sys = 1;
        tk_sink_puts(&k, tok->bos_str);
        for (size_t i = 0; i < n; i++)
            if (!strcmp(msgs[i].role, "system")) {
                if (!first_sys) tk_sink_puts(&k, "\n\n");
                tk_sink_puts(&k, msgs[i].content);
                first_sys = 0;
            }
        for (size_t i = 0; i < n; i++) {
            const char *r = msgs[i].role, *c = msgs[i].content;
            if (!strcmp(r, "user")) {
                tk_sink_puts(&k, TK_USER); tk_sink_puts(&k, c);
            } else if (!strcmp(r, "assistant")) {
                if (tok->family == DSEEK_CHAT_R1) {
                    const char *t;
                    while ((t = strstr(c, "</think>")) != NULL) c = t + 8;
                }
                tk_sink_puts(&k, TK_ASSISTANT); tk_sink_puts(&k, c);
                tk_sink_puts(&k, TK_EOS_V3);
            }
        }
        if (add_generation_prompt) {
            tk_sink_puts(&k, TK_ASSISTANT);
            if (dseek_chat_prompt_opens_think(tok)) tk_sink_puts(&k, "<think>\n");
        }
    }
    if (k.oom) goto fail;
    return k.p;
fail:
    free(k.p);
    return NULL;
}

/* ----------------------------------------------------------------------------
 * <think> splitter
 * ------------------------------------------------------------------------- */

static const char *tk_think_tag(const dseek_think *t) {
    return t->in_think ? "</think>" : "<think>";
}

/* Starts a splitter outside (or inside) a think block. */
void dseek_think_init(dseek_think *t, int start_inside) {
    t->in_think = start_inside ? 1 : 0;
    t->matched = 0;
}

/* Feeds text; runs of text go to cb tagged in/out of the think block,
 * the tags themselves are dropped, a partial tag at the end is held. */
void dseek_think_push(dseek_think *t, const char *s, size_t n,
                      dseek_think_cb cb, void *ud) {
    size_t run = 0;                 /* start of text not yet passed to cb */
    size_t i = 0;
    while (i < n) {
        const char *tag = tk_think_tag(t);
        size_t tl = strlen(tag);
        if (s[i] == tag[t->matched]) {
            if (t->matched == 0 && i > run) cb(ud, t->in_think, s + run, i - run);
            t->matched++;
            i++;
            if (t->matched == tl) {
                t->in_think = !t->in_think;
                t->matched = 0;
            }
            run = i;
        } else if (t->matched) {
            /* the held bytes were text after all; re-examine this byte */
            cb(ud, t->in_think, tag, t->matched);
            t->matched = 0;
            run = i;
        } else {
            i++;
        }
    }
    if (!t->matched && n > run) cb(ud, t->in_think, s + run, n - run);
}

/* End of stream: a held partial tag is emitted as text. */
void dseek_think_flush(dseek_think *t, dseek_think_cb cb, void *ud) {
    if (t->matched) cb(ud, t->in_think, tk_think_tag(t), t->matched);
    t->matched = 0;
}
