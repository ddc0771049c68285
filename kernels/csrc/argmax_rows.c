/* Greedy sampling's argmax over the rows of a float32 matrix [rows, cols], with torch.argmax's result:
 * the first index of the row's maximum, or of its first NaN where it has one (torch ranks NaN above
 * every number). One pass per row keeps, per vector lane, the lane's maximum and its first index;
 * the lanes are then merged, lowest index first among equal maxima. NaN is found by integer tests
 * on the bits, which -ffast-math cannot fold away. Parallel over rows with OpenMP.
 * Reference: kernels.argmax.argmax_rows_ref (torch.argmax). */
#include <stdint.h>
#include <string.h>

static inline int is_nan_bits(float v) {
    uint32_t u;
    memcpy(&u, &v, 4);
    return (u & 0x7fffffffu) > 0x7f800000u;
}

static int64_t argmax_row(const float *x, int64_t n) {
    enum { L = 16 };
    float best[L];
    int64_t at[L];
    int64_t nan_seen = 0;
    int64_t i = 0;
    if (n >= L) {
        for (int j = 0; j < L; j++) { best[j] = x[j]; at[j] = j; }
        for (i = L; i + L <= n; i += L) {
            uint32_t nanbits = 0;
#pragma omp simd reduction(| : nanbits)
            for (int j = 0; j < L; j++) {
                const float v = x[i + j];
                uint32_t u;
                memcpy(&u, &v, 4);
                nanbits |= (u & 0x7fffffffu) > 0x7f800000u;
                const int gt = v > best[j];
                best[j] = gt ? v : best[j];
                at[j] = gt ? i + j : at[j];
            }
            nan_seen |= nanbits;
        }
    } else {
        best[0] = x[0]; at[0] = 0; i = 1;
        for (int j = 1; j < L; j++) { best[j] = x[0]; at[j] = 0; }
    }
    float m = best[0];
    int64_t a = at[0];
    for (int j = 1; j < L; j++)
        if (best[j] > m || (best[j] == m && at[j] < a)) { m = best[j]; a = at[j]; }
    for (; i < n; i++) {
        nan_seen |= is_nan_bits(x[i]);
        if (x[i] > m) { m = x[i]; a = i; }
    }
    for (int j = 0; j < L && j < n; j++) nan_seen |= is_nan_bits(x[j]);
    if (nan_seen)
        for (int64_t k = 0; k < n; k++)
            if (is_nan_bits(x[k])) return k;
    return a;
}

void argmax_rows_f32(const float *x, int64_t rows, int64_t cols, int64_t stride, int64_t *out) {
#pragma omp parallel for schedule(static) if (rows > 1)
    for (int64_t r = 0; r < rows; r++) out[r] = argmax_row(x + r * stride, cols);
}
