/* KV reuse copy on the CPU, float32: the K/V rows of n reused tokens copied from their source
 * slots to their destination slots in layers [layer_lo, layer_hi) of the paged caches
 * [layers, num_blocks, kv_heads, block_size, head_dim], K re-rotated by delta[i] positions on the
 * way (rotate-half RoPE: for the halves x1, x2 of a head and a_j = delta * inv_freq[j],
 * out1 = x1 cos a - x2 sin a, out2 = x2 cos a + x1 sin a). One pass over the rows, parallel over
 * tokens with OpenMP. Source and destination rows must not overlap.
 * Reference: kernels.kv_copy.copy_reused_kv_ref_ (torch). */
#include <math.h>
#include <stdint.h>
#include <string.h>

void kv_reuse_copy_f32(float *k, float *v, const int64_t *src, const int64_t *dst, const int64_t *delta,
                       const float *inv_freq, int64_t n, int64_t layer_lo, int64_t layer_hi, int64_t num_blocks,
                       int64_t kv_heads, int64_t block_size, int64_t head_dim) {
    const int64_t half = head_dim / 2;
    const int64_t head_stride = block_size * head_dim, block_stride = kv_heads * head_stride;
    const int64_t layer_stride = num_blocks * block_stride;
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++) {
        float c[half], s[half];
        for (int64_t j = 0; j < half; j++) {
            const float a = (float)delta[i] * inv_freq[j]; /* the angle in float32, as the reference */
            c[j] = (float)cos((double)a);
            s[j] = (float)sin((double)a);
        }
        const int64_t so = (src[i] / block_size) * block_stride + (src[i] % block_size) * head_dim;
        const int64_t dof = (dst[i] / block_size) * block_stride + (dst[i] % block_size) * head_dim;
        for (int64_t l = layer_lo; l < layer_hi; l++) {
            for (int64_t h = 0; h < kv_heads; h++) {
                const int64_t a = l * layer_stride + h * head_stride;
                memcpy(v + a + dof, v + a + so, head_dim * sizeof(float));
                const float *x = k + a + so;
                float *y = k + a + dof;
                for (int64_t j = 0; j < half; j++) {
                    const float x1 = x[j], x2 = x[j + half];
                    y[j] = x1 * c[j] - x2 * s[j];
                    y[j + half] = x2 * c[j] + x1 * s[j];
                }
            }
        }
    }
}
