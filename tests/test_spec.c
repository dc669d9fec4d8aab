/* test_spec.c - speculative sampling keeps the model's distribution.
 * Samples the first two generated tokens (t1 from the prompt's logits, t2 from a step that
 * drafts with the MTP head and verifies) over many seeds, and compares their empirical joint
 * distribution with the exact one computed from the model's logits: a chi-square test at
 * p = 0.001. An acceptance rule that keeps drafts too often (or too rarely) shifts t2
 * towards the draft distribution and fails. Usage: test_spec MODEL_DIR [N] */
#include "dseek.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TOPK 6
#define TEMP 1.0f

/* the sampler's distribution for temperature TEMP and top-k TOPK, as ids and probabilities */
static void topk_dist(const float *logits, int V, int *ids, double *p) {
    for (int k = 0; k < TOPK; k++) {
        int best = -1;
        for (int i = 0; i < V; i++) {
            int used = 0;
            for (int j = 0; j < k; j++) used |= ids[j] == i;
            if (!used && (best < 0 || logits[i] > logits[best])) best = i;
        }
        ids[k] = best;
    }
    double z = 0;
    for (int k = 0; k < TOPK; k++) z += p[k] = exp((logits[ids[k]] - logits[ids[0]]) / TEMP);
    for (int k = 0; k < TOPK; k++) p[k] /= z;
}

static int find(const int *ids, int id) {
    for (int k = 0; k < TOPK; k++)
        if (ids[k] == id) return k;
    return -1;
}

/* chi-square critical value at p = 0.001 (Wilson-Hilferty) */
static double chi2_crit(int df) {
    double z = 3.0902, a = 2.0 / (9.0 * df);
    return df * pow(1 - a + z * sqrt(a), 3);
}

static int run(dseek_model *m, int mtp, int N) {
    const int V = dseek_model_info(m)->vocab_size;
    const int prompt[] = {0, 17, 99, 4, 250, 31};
    const int P = 6;
    char err[256];
    dseek_session *s;
    if (dseek_session_new(m, 64, 16, &s, err, sizeof err)) { fprintf(stderr, "%s\n", err); return 1; }
    float *lg = malloc((size_t)V * sizeof(float));
    int ids1[TOPK], ids2[TOPK][TOPK];
    double p1[TOPK], p2[TOPK][TOPK];
    dseek_forward(s, prompt, P, 0, lg, 0);
    topk_dist(lg, V, ids1, p1);
    for (int a = 0; a < TOPK; a++) {
        dseek_forward(s, &ids1[a], 1, P, lg, 0);
        topk_dist(lg, V, ids2[a], p2[a]);
    }
    long cnt[TOPK][TOPK] = {{0}};
    long drafted = 0, accepted = 0, outside = 0;
    for (int seed = 1; seed <= N; seed++) {
        dseek_sampler_cfg sc = {.temperature = TEMP, .top_k = TOPK, .top_p = 1, .min_p = 0, .seed = (uint64_t)seed * 7919};
        dseek_gen_cfg gc = {.mtp = mtp, .n_draft = 1, .adaptive = 0};
        dseek_gen *g;
        int t1, out[16], n;
        if (dseek_gen_new(s, &sc, &gc, &g) || dseek_gen_feed(g, prompt, P, &t1) || dseek_gen_step(g, out, &n)) {
            fprintf(stderr, "generation failed: %s\n", dseek_session_error(s));
            return 1;
        }
        dseek_gen_stats st;
        dseek_gen_stats_get(g, &st);
        drafted += st.drafted;
        accepted += st.accepted;
        int a = find(ids1, t1), b = a >= 0 ? find(ids2[a], out[0]) : -1;
        if (a < 0 || b < 0) outside++;
        else cnt[a][b]++;
        dseek_gen_free(g);
    }
    double chi2 = 0, tv = 0;
    for (int a = 0; a < TOPK; a++)
        for (int b = 0; b < TOPK; b++) {
            double e = N * p1[a] * p2[a][b];
            chi2 += (cnt[a][b] - e) * (cnt[a][b] - e) / e;
            tv += fabs(cnt[a][b] / (double)N - p1[a] * p2[a][b]) / 2;
        }
    double crit = chi2_crit(TOPK * TOPK - 1);
    int ok = !outside && chi2 < crit && (!mtp || (accepted > drafted / 10 && accepted < drafted * 9 / 10));
    printf("%s %s: %d samples, chi2 %.1f (critical %.1f at p=0.001), total variation %.4f, outside support %ld, "
           "drafts %ld accepted %ld\n", ok ? "ok  " : "FAIL", mtp ? "with MTP" : "plain   ", N, chi2, crit, tv, outside,
           drafted, accepted);
    free(lg);
    dseek_session_free(s);
    return !ok;
}

int main(int argc, char **argv) {
    if (argc < 2) { fprintf(stderr, "usage: test_spec MODEL_DIR [N]\n"); return 2; }
    int N = argc > 2 ? atoi(argv[2]) : 4000;
    char err[512];
    dseek_model *m;
    dseek_set_threads(1);
    if (dseek_model_open(argv[1], &m, err, sizeof err)) { fprintf(stderr, "%s\n", err); return 2; }
    int fails = run(m, 0, N) + run(m, 1, N);
    dseek_model_free(m);
    return fails ? 1 : 0;
}
