/* Paged decode attention on the CPU: one float32 query token per sequence attends over that
 * sequence's KV tiles in place (no gather), the cache in float32 (`_f32`) or bfloat16 (`_bf16`: each
 * element is widened to float32 as it is loaded, a bf16 value being the high half of a float32).
 * Cache layout [num_blocks, kv_heads, block_size, head_dim] for one layer; queries and output
 * [batch, heads, head_dim] float32; GQA by grouping heads over a kv head.
 * Parallel over (sequence, kv head) with OpenMP; two passes (scores, then softmax-weighted V), each
 * tile-wise with AVX2/FMA where the shapes allow (head_dim and block_size multiples of 8).
 * Both element types share one body (DEFINE_KERNEL below), so they compute the same arithmetic.
 * Reference: kernels.cpu_attention.paged_decode_attention_ref (torch). */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

typedef uint16_t bf16_t;

static inline float ld1_f32(const float *p) { return *p; }
static inline float ld1_bf16(const bf16_t *p) {
    union { uint32_t u; float f; } v = {.u = (uint32_t)*p << 16};
    return v.f;
}

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define HAVE_DOT8 1

static inline __m256 ld8_f32(const float *p) { return _mm256_loadu_ps(p); }
static inline __m256 ld8_bf16(const bf16_t *p) {
    const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
}

/* Sum of each of 8 vectors, as one vector: [sum(a[0]), ..., sum(a[7])]. */
static inline __m256 hsum8(const __m256 a[8]) {
    __m256 t0 = _mm256_hadd_ps(a[0], a[1]), t1 = _mm256_hadd_ps(a[2], a[3]);
    __m256 t2 = _mm256_hadd_ps(a[4], a[5]), t3 = _mm256_hadd_ps(a[6], a[7]);
    __m256 u0 = _mm256_hadd_ps(t0, t1), u1 = _mm256_hadd_ps(t2, t3);
    return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}

/* Scores of 8 consecutive key rows (stride head_dim) against one query: out[0..7]. */
#define DEFINE_DOT8(T, SUF)                                                                               \
    static inline void dot8_##SUF(const float *qg, const T *k, int64_t head_dim, float scale, float *out) { \
        __m256 acc[8];                                                                                    \
        for (int j = 0; j < 8; j++) acc[j] = _mm256_setzero_ps();                                         \
        for (int64_t d = 0; d < head_dim; d += 8) {                                                       \
            const __m256 qv = _mm256_loadu_ps(qg + d);                                                    \
            for (int j = 0; j < 8; j++) acc[j] = _mm256_fmadd_ps(qv, ld8_##SUF(k + j * head_dim + d), acc[j]); \
        }                                                                                                 \
        _mm256_storeu_ps(out, _mm256_mul_ps(hsum8(acc), _mm256_set1_ps(scale)));                          \
    }
/* acc[0..w) += sum over rows r of p[r] * v[r][0..w), w <= 64 and a multiple of 8: the
 * accumulators stay in registers for a whole tile and memory is touched once per tile. */
#define DEFINE_AXPY(T, SUF)                                                                               \
    static inline void axpy_rows_##SUF(const float *p, const T *v, int64_t rows, int64_t head_dim, int64_t w, \
                                       float *acc) {                                                      \
        __m256 a[8];                                                                                      \
        const int nv = (int)(w / 8);                                                                      \
        for (int j = 0; j < nv; j++) a[j] = _mm256_setzero_ps();                                          \
        for (int64_t r = 0; r < rows; r++) {                                                              \
            const __m256 pv = _mm256_set1_ps(p[r]);                                                       \
            const T *vr = v + r * head_dim;                                                               \
            for (int j = 0; j < nv; j++) a[j] = _mm256_fmadd_ps(pv, ld8_##SUF(vr + 8 * j), a[j]);         \
        }                                                                                                 \
        for (int j = 0; j < nv; j++) _mm256_storeu_ps(acc + 8 * j, _mm256_add_ps(_mm256_loadu_ps(acc + 8 * j), a[j])); \
    }
DEFINE_DOT8(float, f32)
DEFINE_DOT8(bf16_t, bf16)
DEFINE_AXPY(float, f32)
DEFINE_AXPY(bf16_t, bf16)
#define DOT8(SUF, ...) dot8_##SUF(__VA_ARGS__)
#define AXPY(SUF, ...) axpy_rows_##SUF(__VA_ARGS__)
#else
#define HAVE_DOT8 0
#define DOT8(SUF, ...) ((void)0)
#define AXPY(SUF, ...) ((void)0)
#endif

/* Asks for the next tile while this one is computed: tiles are scattered 2-16 KB chunks that the
 * hardware prefetcher does not predict. */
static inline void prefetch_tile(const void *tile_start, int64_t bytes) {
    const char *p = (const char *)tile_start;
    for (int64_t off = 0; off < bytes; off += 64) __builtin_prefetch(p + off, 0, 3);
}

#define DEFINE_KERNEL(T, SUF)                                                                             \
    /* The tile of the sequence's block holding token `start` for kv head `kh`; the next tile, if the   \
     * sequence has one, is prefetched meanwhile. */                                                     \
    static inline const T *tile_at_##SUF(const T *cache, const int64_t *table, int64_t start, int64_t n, \
                                         int64_t block_size, int64_t kv_heads, int64_t kh, int64_t tile) { \
        const int64_t i = start / block_size;                                                            \
        if (start + block_size < n)                                                                       \
            prefetch_tile(cache + (table[i + 1] * kv_heads + kh) * tile, tile * (int64_t)sizeof(T));     \
        return cache + (table[i] * kv_heads + kh) * tile;                                                \
    }                                                                                                     \
    static inline float dot1_##SUF(const float *qg, const T *k, int64_t head_dim) {                      \
        float s = 0.0f;                                                                                   \
        for (int64_t d = 0; d < head_dim; d++) s += qg[d] * ld1_##SUF(k + d);                             \
        return s;                                                                                         \
    }                                                                                                     \
    void paged_decode_attention_##SUF(const float *q, const T *k_cache, const T *v_cache,                \
                                      const int64_t *block_tables, const int64_t *ctx_lens, float *out,  \
                                      int64_t batch, int64_t heads, int64_t kv_heads, int64_t head_dim,  \
                                      int64_t block_size, int64_t max_blocks, int64_t max_ctx, float scale) { \
        const int64_t group = heads / kv_heads;                                                          \
        const int64_t tile = block_size * head_dim;                                                      \
        _Pragma("omp parallel") {                                                                        \
            float *scores = (float *)malloc(sizeof(float) * (size_t)(group * (max_ctx > 0 ? max_ctx : 1))); \
            float *acc = (float *)malloc(sizeof(float) * (size_t)(group * head_dim));                    \
            _Pragma("omp for collapse(2) schedule(dynamic, 1)")                                          \
            for (int64_t b = 0; b < batch; b++) {                                                        \
                for (int64_t kh = 0; kh < kv_heads; kh++) {                                              \
                    const int64_t n = ctx_lens[b];                                                       \
                    const int64_t *table = block_tables + b * max_blocks;                                \
                    const float *qb = q + (b * heads + kh * group) * head_dim;                           \
                    const int wide = HAVE_DOT8 && head_dim % 8 == 0 && block_size % 8 == 0;              \
                    for (int64_t start = 0; start < n; start += block_size) {                            \
                        const T *kb = tile_at_##SUF(k_cache, table, start, n, block_size, kv_heads, kh, tile); \
                        const int64_t rows = n - start < block_size ? n - start : block_size;            \
                        for (int64_t g = 0; g < group; g++) {                                            \
                            const float *qg = qb + g * head_dim;                                         \
                            float *sg = scores + g * n + start;                                          \
                            int64_t r = 0;                                                               \
                            if (wide)                                                                    \
                                for (; r + 8 <= rows; r += 8) DOT8(SUF, qg, kb + r * head_dim, head_dim, scale, sg + r); \
                            for (; r < rows; r++) sg[r] = dot1_##SUF(qg, kb + r * head_dim, head_dim) * scale; \
                        }                                                                                \
                    }                                                                                    \
                    for (int64_t g = 0; g < group; g++) {                                                \
                        float *sg = scores + g * n;                                                      \
                        float m = sg[0];                                                                 \
                        for (int64_t t = 1; t < n; t++) m = sg[t] > m ? sg[t] : m;                       \
                        float l = 0.0f;                                                                  \
                        for (int64_t t = 0; t < n; t++) { sg[t] = expf(sg[t] - m); l += sg[t]; }         \
                        const float inv = 1.0f / l;                                                      \
                        for (int64_t t = 0; t < n; t++) sg[t] *= inv;                                    \
                    }                                                                                    \
                    for (int64_t i = 0; i < group * head_dim; i++) acc[i] = 0.0f;                        \
                    for (int64_t start = 0; start < n; start += block_size) {                            \
                        const T *vb = tile_at_##SUF(v_cache, table, start, n, block_size, kv_heads, kh, tile); \
                        const int64_t rows = n - start < block_size ? n - start : block_size;            \
                        for (int64_t g = 0; g < group; g++) {                                            \
                            const float *pg = scores + g * n + start;                                    \
                            float *ag = acc + g * head_dim;                                              \
                            if (wide) {                                                                  \
                                for (int64_t d = 0; d < head_dim; d += 64)                               \
                                    AXPY(SUF, pg, vb + d, rows, head_dim, head_dim - d < 64 ? head_dim - d : 64, ag + d); \
                                continue;                                                                \
                            }                                                                            \
                            for (int64_t r = 0; r < rows; r++) {                                         \
                                const float p = pg[r];                                                   \
                                const T *vt = vb + r * head_dim;                                         \
                                for (int64_t d = 0; d < head_dim; d++) ag[d] += p * ld1_##SUF(vt + d);   \
                            }                                                                            \
                        }                                                                                \
                    }                                                                                    \
                    float *ob = out + (b * heads + kh * group) * head_dim;                               \
                    for (int64_t i = 0; i < group * head_dim; i++) ob[i] = acc[i];                       \
                }                                                                                        \
            }                                                                                            \
            free(scores);                                                                                \
            free(acc);                                                                                   \
        }                                                                                                \
    }

DEFINE_KERNEL(float, f32)
DEFINE_KERNEL(bf16_t, bf16)
