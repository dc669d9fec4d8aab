/* fuzz_quant_header.c - libFuzzer target: the header of a dseek-quantized safetensors file
 * (its __metadata__ "format": "dseek", "dseek.version", "dseek.q.<tensor>": "<block type>
 * [rows,cols]" entries, and the 1-D U8 tensors holding the blocks), bound to a config.
 *
 * The input is the JSON header. It becomes model.safetensors as dseek quantize lays it out:
 * the 8-byte length, the input padded with spaces so that the data area starts 64-byte
 * aligned, then a fixed data area of 64 KiB whose bytes all lie in 0x20..0x3F (so every
 * F32, BF16, F16 and F8 value, Q8_0 / Q4_0 / Q4_K scale and quant there is finite), next to a
 * fixed config.json (tests/fuzz/data/quant_config.json: a tiny DeepSeek-V3 layout, one
 * dense layer and an MoE MTP layer; DSEEK_FUZZ_DATA names another data folder). Then:
 *   - dseek_model_open: a refused file gives one line naming the folder;
 *   - a model that opens is run (fz_exercise_model), and dseek_model_check_tensors must
 *     find nothing (every tensor lies in the finite data area);
 *   - dseek_quantize writes it again (q8_0, q4_0 or q4_k by the input's length): whatever it
 *     writes must open, with the same parameters, and check clean.
 * Seeds: tests/fuzz/corpus/quant_header/ (headers written by dseek quantize: q8_0, q4_0, q4_k,
 * and one mixing both, off alignment, with extra tensors; see make_seeds.py). */
#include "fuzz_util.h"

enum { DATA_BYTES = 64 << 10 };

static uint8_t *fq_buf;     /* 8 + header + padding + data, grown as needed */
static size_t fq_cap;
static char fq_out[300];    /* the folder dseek_quantize writes into */

static void fq_cleanup(void) {
    if (fq_out[0]) {
        fz_clear_dir(fq_out);
        rmdir(fq_out);
    }
    free(fq_buf);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc; (void)argv;
    dseek_set_threads(1);
    fz_put_data("quant_config.json", "config.json");
    snprintf(fq_out, sizeof fq_out, "%s-q", fz_dir);
    FZ_CHECK(mkdir(fq_out, 0700) == 0, "cannot make %s", fq_out);
    atexit(fq_cleanup);
    return 0;
}

/* "" if the error is one line naming the folder (or memory), else what is wrong */
static const char *bad_error(const char *err, const char *dir) {
    if (!err[0]) return "empty";
    if (strchr(err, '\n')) return "more than one line";
    if (!strstr(err, dir) && !strstr(err, "memory")) return "does not name the folder";
    return "";
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    size_t hlen = size;
    while ((8 + hlen) % 64) hlen++;
    size_t total = 8 + hlen + DATA_BYTES;
    if (total > fq_cap) {
        uint8_t *b = realloc(fq_buf, total);
        FZ_CHECK(b != NULL, "oom");
        fq_buf = b;
        fq_cap = total;
    }
    for (int i = 0; i < 8; i++) fq_buf[i] = (uint8_t)((uint64_t)hlen >> (8 * i));
    memcpy(fq_buf + 8, data, size);
    memset(fq_buf + 8 + size, ' ', hlen - size);
    uint8_t *d = fq_buf + 8 + hlen;
    for (uint32_t i = 0; i < DATA_BYTES; i++) d[i] = (uint8_t)(0x20 + ((i * 2654435761u) >> 27));
    fz_write("model.safetensors", fq_buf, total);

    dseek_model *m = NULL;
    char err[1024] = "";
    int rc = dseek_model_open(fz_tmpdir(), &m, err, sizeof err);
    if (rc) {
        FZ_CHECK(m == NULL, "a failed open returns no model");
        FZ_CHECK(!*bad_error(err, fz_dir), "error %s: \"%s\"", bad_error(err, fz_dir), err);
        return 0;
    }
    const dseek_info info = *dseek_model_info(m);
    fz_exercise_model(m);
    FZ_CHECK(dseek_model_check_tensors(m, err, sizeof err) == 0, "finite data, yet: %s", err);
    dseek_model_free(m);

    /* dseek quantize of what opened: its output must open as the same model */
    const int quant = size % 3 == 0 ? DSEEK_QUANT_Q8_0 : size % 3 == 1 ? DSEEK_QUANT_Q4_0 : DSEEK_QUANT_Q4_K;
    err[0] = 0;
    rc = dseek_quantize(fz_dir, fq_out, quant, 0, err, sizeof err);
    if (rc) FZ_CHECK(!*bad_error(err, fz_dir), "quantize error %s: \"%s\"", bad_error(err, fz_dir), err);
    else {
        rc = dseek_model_open(fq_out, &m, err, sizeof err);
        FZ_CHECK(rc == 0, "dseek quantize wrote a model that does not open: %s", err);
        const dseek_info *qi = dseek_model_info(m);
        FZ_CHECK(qi->n_params == info.n_params && qi->vocab_size == info.vocab_size && qi->n_mtp == info.n_mtp,
                 "the quantized model differs: %zu params, vocab %d, %d MTP; was %zu, %d, %d", qi->n_params,
                 qi->vocab_size, qi->n_mtp, info.n_params, info.vocab_size, info.n_mtp);
        FZ_CHECK(dseek_model_check_tensors(m, err, sizeof err) == 0, "the quantized model: %s", err);
        dseek_model_free(m);
    }
    fz_clear_dir(fq_out);
    return 0;
}
