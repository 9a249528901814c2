// The machine's multiply-add peak on all its CPUs, for benches/arch.sh's floor columns: one
// thread per CPU runs 12 independent AVX-512 chains of FMA (f32) or VPDPBUSD (int8, VNNI).
// Prints "f32 G int8 G" in GMAC/s, the best of three tries each (a peak: the clock ramps and
// neighbours come and go); 0 for an instruction set the CPU lacks.
//   cc -O3 -pthread benches/peak.c -o peak
#include <immintrin.h>
#include <pthread.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

#define STEPS 20000000L

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

__attribute__((target("avx512f"))) static void *f32_chains(void *out) {
    __m512 a[12];
    __m512 x = _mm512_set1_ps(1.0000001f), y = _mm512_set1_ps(0.9999999f);
    for (int i = 0; i < 12; i++) a[i] = _mm512_set1_ps((float)i);
    for (long n = 0; n < STEPS; n++)
        for (int i = 0; i < 12; i++) a[i] = _mm512_fmadd_ps(a[i], x, y);
    float s = 0;
    for (int i = 0; i < 12; i++) s += _mm512_reduce_add_ps(a[i]);
    *(float *)out = s; // keeps the chains alive
    return 0;
}

__attribute__((target("avx512f,avx512vnni"))) static void *int8_chains(void *out) {
    __m512i a[12];
    __m512i x = _mm512_set1_epi8(1), y = _mm512_set1_epi8(2);
    for (int i = 0; i < 12; i++) a[i] = _mm512_set1_epi32(i);
    for (long n = 0; n < STEPS; n++)
        for (int i = 0; i < 12; i++) a[i] = _mm512_dpbusd_epi32(a[i], x, y);
    int s = 0;
    for (int i = 0; i < 12; i++) s += _mm512_reduce_add_epi32(a[i]);
    *(int *)out = s;
    return 0;
}

// GMAC/s with one thread per CPU, `per` multiply-adds per instruction, one try.
static double once(void *(*chains)(void *), double per) {
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    if (cpus > 64) cpus = 64;
    pthread_t t[64];
    float sink[64];
    double t0 = now();
    for (long i = 0; i < cpus; i++) pthread_create(&t[i], 0, chains, &sink[i]);
    for (long i = 0; i < cpus; i++) pthread_join(t[i], 0);
    return cpus * (double)STEPS * 12 * per / (now() - t0) / 1e9;
}

static double peak(void *(*chains)(void *), double per) {
    double best = 0;
    for (int i = 0; i < 3; i++) {
        double g = once(chains, per);
        if (g > best) best = g;
    }
    return best;
}

int main(void) {
    __builtin_cpu_init();
    double f32 = __builtin_cpu_supports("avx512f") ? peak(f32_chains, 16) : 0;
    double int8 = __builtin_cpu_supports("avx512vnni") ? peak(int8_chains, 64) : 0;
    printf("%.1f %.1f\n", f32, int8);
    return 0;
}
