/* fuzz_config.c - libFuzzer target: the config.json parser.
 *
 * The input becomes config.json next to a fixed, valid model.safetensors (a tiny
 * DeepSeek-V3 layout: tests/fuzz/data/model.safetensors; DSEEK_FUZZ_DATA names another
 * data folder), then dseek_model_open runs. A config that opens (it must agree with the
 * tensors' shapes, but may change routing, RoPE, eps, MTP...) is run through
 * fz_exercise_model. Seeds: tests/fuzz/corpus/config/ (generated configs of every
 * preset). */
#include "fuzz_util.h"

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc; (void)argv;
    dseek_set_threads(1);
    fz_put_data("model.safetensors", "model.safetensors");
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fz_write("config.json", data, size);
    dseek_model *m = NULL;
    char err[1024] = "";
    int rc = dseek_model_open(fz_tmpdir(), &m, err, sizeof err);
    if (rc) {
        FZ_CHECK(m == NULL, "a failed open returns no model");
        FZ_CHECK(err[0] && !strchr(err, '\n'), "one line of error, got \"%s\"", err);
        FZ_CHECK(strstr(err, "config.json") || strstr(err, "model.safetensors") || strstr(err, fz_dir) ||
                     strstr(err, "memory"),
                 "the error names the file: \"%s\"", err);
        return 0;
    }
    fz_exercise_model(m);
    dseek_model_free(m);
    return 0;
}
