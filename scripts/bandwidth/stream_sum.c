/* The machine's read bandwidth: a plain streaming sum over a buffer much larger than the caches,
 * split across T threads, best of R passes. This is the ceiling a memory-bound decode step can
 * reach, measured independently of minfer's own code (minfer bench measures it too) so the
 * comparison in scripts/bench-vs-llamacpp.sh does not grade minfer against itself.
 *
 * Deliberately not a full STREAM suite: no writes, no copies, only the read pattern decode uses.
 *
 * Build: cc -O3 -march=native -pthread stream_sum.c -o stream_sum
 * Usage: stream_sum THREADS [MIB=512] [PASSES=5]   prints one JSON line. */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

typedef struct {
    const uint64_t *p;
    size_t n;
    uint64_t sum;
    pthread_barrier_t *start;
} job_t;

static void *sum_chunk(void *arg) {
    job_t *j = arg;
    pthread_barrier_wait(j->start);
    /* Eight independent accumulators so the compiler vectorises the adds and the loop is
     * limited by memory, not by one add chain. */
    uint64_t acc[8] = {0};
    size_t i = 0;
    for (; i + 8 <= j->n; i += 8)
        for (int k = 0; k < 8; k++) acc[k] += j->p[i + k];
    for (; i < j->n; i++) acc[0] += j->p[i];
    uint64_t s = 0;
    for (int k = 0; k < 8; k++) s += acc[k];
    j->sum = s;
    return NULL;
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
    int threads = argc > 1 ? atoi(argv[1]) : 1;
    size_t mib = argc > 2 ? (size_t)atol(argv[2]) : 512;
    int passes = argc > 3 ? atoi(argv[3]) : 5;
    if (threads < 1 || threads > 1024 || mib < 1 || passes < 1) {
        fprintf(stderr, "usage: stream_sum THREADS [MIB] [PASSES]\n");
        return 2;
    }
    size_t words = mib * (1u << 20) / 8;
    uint64_t *buf = aligned_alloc(64, words * 8);
    if (!buf) {
        fprintf(stderr, "stream_sum: cannot allocate %zu MiB\n", mib);
        return 1;
    }
    for (size_t i = 0; i < words; i++) buf[i] = i; /* touch every page before timing */

    pthread_t tid[1024];
    job_t jobs[1024];
    size_t chunk = (words + threads - 1) / threads;
    double best = 1e30;
    uint64_t check = 0;
    for (int r = 0; r < passes; r++) {
        pthread_barrier_t start;
        pthread_barrier_init(&start, NULL, threads + 1);
        for (int t = 0; t < threads; t++) {
            size_t lo = t * chunk < words ? t * chunk : words;
            size_t hi = lo + chunk < words ? lo + chunk : words;
            jobs[t] = (job_t){buf + lo, hi - lo, 0, &start};
            pthread_create(&tid[t], NULL, sum_chunk, &jobs[t]);
        }
        double t0 = now();
        pthread_barrier_wait(&start);
        for (int t = 0; t < threads; t++) pthread_join(tid[t], NULL);
        double dt = now() - t0;
        pthread_barrier_destroy(&start);
        for (int t = 0; t < threads; t++) check += jobs[t].sum;
        if (dt < best) best = dt;
    }
    printf("{\"threads\": %d, \"mib\": %zu, \"passes\": %d, \"read_gb_s\": %.3f, \"check\": %llu}\n",
           threads, mib, passes, words * 8 / best / 1e9, (unsigned long long)check);
    free(buf);
    return 0;
}
