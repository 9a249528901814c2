/* How far apart this machine's first two CPUs are: the round trip of one cache line between a
 * thread pinned to CPU 0 and one pinned to CPU 1, in ns. On the 2-vCPU VM these benchmarks run
 * on it is ~60 ns at some times (the vCPUs share a core complex and its L3) and ~350 ns at
 * others (they do not), and a fork-join forward pass runs at two speeds accordingly
 * (BENCHMARKS.md); benches/sporadic.sh records it before each load.
 * Build: cc -O2 -pthread benches/pingpong.c -o pingpong */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <time.h>

#define ROUNDS 200000

static _Atomic long flag __attribute__((aligned(64)));

static void pin(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    sched_setaffinity(0, sizeof set, &set);
}

static void *answer(void *unused) {
    (void)unused;
    pin(1);
    for (long i = 0; i < ROUNDS; i++) {
        while (atomic_load_explicit(&flag, memory_order_acquire) != 2 * i + 1) {
        }
        atomic_store_explicit(&flag, 2 * i + 2, memory_order_release);
    }
    return NULL;
}

int main(void) {
    struct timespec t0, t1;
    pthread_t other;
    pin(0);
    if (pthread_create(&other, NULL, answer, NULL) != 0) return 1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (long i = 0; i < ROUNDS; i++) {
        atomic_store_explicit(&flag, 2 * i + 1, memory_order_release);
        while (atomic_load_explicit(&flag, memory_order_acquire) != 2 * i + 2) {
        }
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    pthread_join(other, NULL);
    printf("%.0f\n", ((t1.tv_sec - t0.tv_sec) * 1e9 + (t1.tv_nsec - t0.tv_nsec)) / ROUNDS);
    return 0;
}
