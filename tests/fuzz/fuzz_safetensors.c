/* fuzz_safetensors.c - libFuzzer target: the safetensors header parser and the shard index.
 *
 * The input becomes the weights of a checkpoint folder whose config.json is fixed and valid
 * (tests/fuzz/data/config.json, a tiny DeepSeek-V3 layout; DSEEK_FUZZ_DATA names another
 * data folder), then dseek_model_open runs on it:
 *   - an input without the separator "\n--8<--\n" is model.safetensors;
 *   - with it, the first part is model.safetensors.index.json and the next parts are the
 *     shards model-00001-of-0000N.safetensors, ... (at most 8).
 * A model that opens is run (tests/fuzz/fuzz_util.h: fz_exercise_model).
 * Seeds: tests/fuzz/corpus/safetensors/ (whole generated checkpoints, single and sharded). */
#include "fuzz_util.h"

#define SEP "\n--8<--\n"

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc; (void)argv;
    dseek_set_threads(1);
    fz_put_data("config.json", "config.json");
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const uint8_t *part[9];
    size_t len[9];
    int np = fz_split(data, size, SEP, part, len, 9);
    /* only config.json stays from one input to the next */
    fz_remove("model.safetensors");
    fz_remove("model.safetensors.index.json");
    for (int i = 1; i <= 8; i++) {
        char name[64];
        for (int k = 1; k <= 8; k++) {
            snprintf(name, sizeof name, "model-%05d-of-%05d.safetensors", i, k);
            fz_remove(name);
        }
    }
    if (np == 1) fz_write("model.safetensors", data, size);
    else {
        fz_write("model.safetensors.index.json", part[0], len[0]);
        for (int i = 1; i < np; i++) {
            char name[64];
            snprintf(name, sizeof name, "model-%05d-of-%05d.safetensors", i, np - 1);
            fz_write(name, part[i], len[i]);
        }
    }
    dseek_model *m = NULL;
    char err[1024] = "";
    int rc = dseek_model_open(fz_tmpdir(), &m, err, sizeof err);
    if (rc) {
        FZ_CHECK(m == NULL, "a failed open returns no model");
        FZ_CHECK(err[0] && !strchr(err, '\n'), "one line of error, got \"%s\"", err);
        return 0;
    }
    fz_exercise_model(m);
    dseek_model_free(m);
    return 0;
}
