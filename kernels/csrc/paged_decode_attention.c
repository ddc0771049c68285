/* Paged decode attention on the CPU, float32: one query token per sequence attends over that
 * sequence's KV tiles in place (no gather). Cache layout [num_blocks, kv_heads, block_size, head_dim]
 * for one layer; queries [batch, heads, head_dim]; GQA by grouping heads over a kv head.
 * Parallel over (sequence, kv head) with OpenMP; two passes (scores, then softmax-weighted V), each
 * tile-wise with AVX2/FMA where the shapes allow (head_dim and block_size multiples of 8).
 * Reference: kernels.cpu_attention.paged_decode_attention_ref (torch). */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>

/* Sum of each of 8 vectors, as one vector: [sum(a[0]), ..., sum(a[7])]. */
static inline __m256 hsum8(const __m256 a[8]) {
    __m256 t0 = _mm256_hadd_ps(a[0], a[1]), t1 = _mm256_hadd_ps(a[2], a[3]);
    __m256 t2 = _mm256_hadd_ps(a[4], a[5]), t3 = _mm256_hadd_ps(a[6], a[7]);
    __m256 u0 = _mm256_hadd_ps(t0, t1), u1 = _mm256_hadd_ps(t2, t3);
    return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}

/* Scores of 8 consecutive key rows (stride head_dim) against one query: out[0..7]. */
static inline void dot8(const float *qg, const float *k, int64_t head_dim, float scale, float *out) {
    __m256 acc[8];
    for (int j = 0; j < 8; j++) acc[j] = _mm256_setzero_ps();
    for (int64_t d = 0; d < head_dim; d += 8) {
        const __m256 qv = _mm256_loadu_ps(qg + d);
        for (int j = 0; j < 8; j++) acc[j] = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k + j * head_dim + d), acc[j]);
    }
    _mm256_storeu_ps(out, _mm256_mul_ps(hsum8(acc), _mm256_set1_ps(scale)));
}
/* acc[0..w) += sum over rows r of p[r] * v[r][0..w), w <= 64 and a multiple of 8: the
 * accumulators stay in registers for a whole tile and memory is touched once per tile. */
static inline void axpy_rows(const float *p, const float *v, int64_t rows, int64_t head_dim, int64_t w, float *acc) {
    __m256 a[8];
    const int nv = (int)(w / 8);
    for (int j = 0; j < nv; j++) a[j] = _mm256_setzero_ps();
    for (int64_t r = 0; r < rows; r++) {
        const __m256 pv = _mm256_set1_ps(p[r]);
        const float *vr = v + r * head_dim;
        for (int j = 0; j < nv; j++) a[j] = _mm256_fmadd_ps(pv, _mm256_loadu_ps(vr + 8 * j), a[j]);
    }
    for (int j = 0; j < nv; j++) _mm256_storeu_ps(acc + 8 * j, _mm256_add_ps(_mm256_loadu_ps(acc + 8 * j), a[j]));
}
#define HAVE_DOT8 1
#else
#define HAVE_DOT8 0
#endif

/* Asks for the next tile while this one is computed: tiles are scattered 4-16 KB chunks that the
 * hardware prefetcher does not predict. */
static inline void prefetch_tile(const float *tile_start, int64_t floats) {
    const char *p = (const char *)tile_start;
    for (int64_t off = 0; off < floats * (int64_t)sizeof(float); off += 64) __builtin_prefetch(p + off, 0, 3);
}

/* The tile of the sequence's block holding token `start` for kv head `kh`; the next tile, if the
 * sequence has one, is prefetched meanwhile. */
static inline const float *tile_at(const float *cache, const int64_t *table, int64_t start, int64_t n,
                                   int64_t block_size, int64_t kv_heads, int64_t kh, int64_t tile) {
    const int64_t i = start / block_size;
    if (start + block_size < n) prefetch_tile(cache + (table[i + 1] * kv_heads + kh) * tile, tile);
    return cache + (table[i] * kv_heads + kh) * tile;
}

static inline float dot1(const float *qg, const float *k, int64_t head_dim) {
    float s = 0.0f;
#pragma omp simd reduction(+ : s)
    for (int64_t d = 0; d < head_dim; d++) s += qg[d] * k[d];
    return s;
}

void paged_decode_attention_f32(const float *q, const float *k_cache, const float *v_cache,
                                const int64_t *block_tables, const int64_t *ctx_lens, float *out,
                                int64_t batch, int64_t heads, int64_t kv_heads, int64_t head_dim,
                                int64_t block_size, int64_t max_blocks, int64_t max_ctx, float scale) {
    const int64_t group = heads / kv_heads;
    const int64_t tile = block_size * head_dim;
#pragma omp parallel
    {
        float *scores = (float *)malloc(sizeof(float) * (size_t)(group * (max_ctx > 0 ? max_ctx : 1)));
        float *acc = (float *)malloc(sizeof(float) * (size_t)(group * head_dim));
#pragma omp for collapse(2) schedule(dynamic, 1)
        for (int64_t b = 0; b < batch; b++) {
            for (int64_t kh = 0; kh < kv_heads; kh++) {
                const int64_t n = ctx_lens[b];
                const int64_t *table = block_tables + b * max_blocks;
                const float *qb = q + (b * heads + kh * group) * head_dim;
                const int wide = HAVE_DOT8 && head_dim % 8 == 0 && block_size % 8 == 0;
                for (int64_t start = 0; start < n; start += block_size) {
                    const float *kb = tile_at(k_cache, table, start, n, block_size, kv_heads, kh, tile);
                    const int64_t rows = n - start < block_size ? n - start : block_size;
                    for (int64_t g = 0; g < group; g++) {
                        const float *qg = qb + g * head_dim;
                        float *sg = scores + g * n + start;
                        int64_t r = 0;
#if HAVE_DOT8
                        if (wide)
                            for (; r + 8 <= rows; r += 8) dot8(qg, kb + r * head_dim, head_dim, scale, sg + r);
#endif
                        for (; r < rows; r++) sg[r] = dot1(qg, kb + r * head_dim, head_dim) * scale;
                    }
                }
                for (int64_t g = 0; g < group; g++) {
                    float *sg = scores + g * n;
                    float m = sg[0];
                    for (int64_t t = 1; t < n; t++) m = sg[t] > m ? sg[t] : m;
                    float l = 0.0f;
                    for (int64_t t = 0; t < n; t++) { sg[t] = expf(sg[t] - m); l += sg[t]; }
                    const float inv = 1.0f / l;
                    for (int64_t t = 0; t < n; t++) sg[t] *= inv;
                }
                for (int64_t i = 0; i < group * head_dim; i++) acc[i] = 0.0f;
                for (int64_t start = 0; start < n; start += block_size) {
                    const float *vb = tile_at(v_cache, table, start, n, block_size, kv_heads, kh, tile);
                    const int64_t rows = n - start < block_size ? n - start : block_size;
                    for (int64_t g = 0; g < group; g++) {
                        const float *pg = scores + g * n + start;
                        float *ag = acc + g * head_dim;
#if HAVE_DOT8
                        if (wide) {
                            for (int64_t d = 0; d < head_dim; d += 64)
                                axpy_rows(pg, vb + d, rows, head_dim, head_dim - d < 64 ? head_dim - d : 64, ag + d);
                            continue;
                        }
#endif
                        for (int64_t r = 0; r < rows; r++) {
                            const float p = pg[r];
                            const float *vt = vb + r * head_dim;
#pragma omp simd
                            for (int64_t d = 0; d < head_dim; d++) ag[d] += p * vt[d];
                        }
                    }
                }
                float *ob = out + (b * heads + kh * group) * head_dim;
                for (int64_t i = 0; i < group * head_dim; i++) ob[i] = acc[i];
            }
        }
        free(scores);
        free(acc);
    }
}
