/* The CPU's float32 peak: independent AVX-512 (or AVX2) fused multiply-adds, one OpenMP thread per core.
 *
 *   cc -O3 -march=native -fopenmp fma_peak.c -o fma_peak && OMP_NUM_THREADS=2 ./fma_peak
 *
 * Prints "GFLOPS <number>": the best of 5 runs, 2 flops per lane per FMA. 12 accumulators per thread hide
 * the FMA latency (4 cycles x 2 pipes needs 8). benchmarks/run.py compiles and runs it when a C compiler
 * is there, to say what fraction of the hardware the model's convolutions use.
 */
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>

#if defined(__AVX512F__)
typedef __m512 vec;
#define LANES 16
#define SET1 _mm512_set1_ps
#define FMA _mm512_fmadd_ps
#define ADD _mm512_add_ps
static float hsum(vec v) { return _mm512_reduce_add_ps(v); }
#else
typedef __m256 vec;
#define LANES 8
#define SET1 _mm256_set1_ps
#define FMA _mm256_fmadd_ps
#define ADD _mm256_add_ps
static float hsum(vec v) { float f[8]; _mm256_storeu_ps(f, v); return f[0]+f[1]+f[2]+f[3]+f[4]+f[5]+f[6]+f[7]; }
#endif

int main(void) {
    const long iters = 100000000;
    double best = 0.0;
    float sink = 0.0f;
    for (int rep = 0; rep < 5; rep++) {
        double t0 = omp_get_wtime();
        #pragma omp parallel reduction(+ : sink)
        {
            vec b = SET1(1.0000001f), c = SET1(1e-7f);
            vec a0 = SET1(0), a1 = SET1(1), a2 = SET1(2), a3 = SET1(3), a4 = SET1(4), a5 = SET1(5);
            vec a6 = SET1(6), a7 = SET1(7), a8 = SET1(8), a9 = SET1(9), a10 = SET1(10), a11 = SET1(11);
            for (long k = 0; k < iters; k++) {
                a0 = FMA(a0, b, c); a1 = FMA(a1, b, c); a2 = FMA(a2, b, c); a3 = FMA(a3, b, c);
                a4 = FMA(a4, b, c); a5 = FMA(a5, b, c); a6 = FMA(a6, b, c); a7 = FMA(a7, b, c);
                a8 = FMA(a8, b, c); a9 = FMA(a9, b, c); a10 = FMA(a10, b, c); a11 = FMA(a11, b, c);
            }
            vec s = ADD(ADD(ADD(a0, a1), ADD(a2, a3)), ADD(ADD(a4, a5), ADD(a6, a7)));
            sink += hsum(ADD(s, ADD(ADD(a8, a9), ADD(a10, a11))));
        }
        double seconds = omp_get_wtime() - t0;
        double gflops = omp_get_max_threads() * (double)iters * 12 * LANES * 2 / seconds / 1e9;
        if (gflops > best) best = gflops;
    }
    printf("GFLOPS %.1f\nLANES %d\nSINK %g\n", best, LANES, sink);
    return 0;
}
