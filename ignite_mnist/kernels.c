/* Fused CPU kernels for the training step (ignite_mnist/kernels.py builds and loads them).
 *
 * Each computes, bit for bit, what the eager PyTorch operators it replaces compute (tests/test_kernels.py), in
 * one pass over memory instead of several:
 * - pool_fwd_*, pool_bwd_*: max-pool 2x2 (stride 2), ReLU and dropout on a channels_last activation, and their
 *   backward (kernels_dtype.h, for bf16 and float32);
 * - relu_bwd_*: ReLU's backward (threshold_backward) in one pass;
 * - adadelta: torch.optim.Adadelta's update of one float32 parameter (no weight decay), torch's order of
 *   operations, each rounded to float as torch rounds it.
 * Compiled with -ffp-contract=off (fused multiply-adds only where torch has them: fmaf), -fno-trapping-math and
 * -fno-math-errno (so that comparisons and sqrtf vectorize; results unchanged). Threads: OpenMP, torch's own
 * runtime (libgomp.so.1 is loaded once per process).
 */
#include <stdint.h>
#include <string.h>
#include <math.h>

#define VLEN 16 /* channels a vector: callers check that C is a multiple of it */
typedef float vf __attribute__((vector_size(64)));
typedef int32_t vi __attribute__((vector_size(64)));
typedef uint32_t vu __attribute__((vector_size(64)));
typedef uint16_t vh __attribute__((vector_size(32)));
typedef uint8_t vb __attribute__((vector_size(16)));

#define SEL(mask, a, b) ((vf)(((vi)(a) & (mask)) | ((vi)(b) & ~(mask))))

/* bfloat16 as torch converts it (c10::BFloat16: round to nearest even, NaN to 0x7FC0) */
static inline vf load_bf16(const uint16_t *p) {
    vh h; memcpy(&h, p, sizeof h);
    return (vf)(__builtin_convertvector(h, vu) << 16);
}
static inline void store_bf16(uint16_t *p, vf f) {
    vu u = (vu)f;
    vu rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
    vu nan = (vu)(f != f);
    vh h = __builtin_convertvector((rounded & ~nan) | (0x7FC0u & nan), vh);
    memcpy(p, &h, sizeof h);
}
static inline vf round_bf16(vf f) { uint16_t h[VLEN]; store_bf16(h, f); return load_bf16(h); }
static inline vf load_f32(const float *p) { vf f; memcpy(&f, p, sizeof f); return f; }
static inline void store_f32(float *p, vf f) { memcpy(p, &f, sizeof f); }
static inline vf round_f32(vf f) { return f; }
static inline vi out_passes(vf out) { return ~(out <= 0.0f); }
static inline float load1_bf16(uint16_t b) { uint32_t u = (uint32_t)b << 16; float f; memcpy(&f, &u, 4); return f; }
static inline float load1_f32(float f) { return f; }

#define T uint16_t
#define NAME(x) x##_bf16
#define LOAD load_bf16
#define STORE store_bf16
#define ROUND round_bf16
#define LOAD1 load1_bf16
#include "kernels_dtype.h"
#undef T
#undef NAME
#undef LOAD
#undef STORE
#undef ROUND
#undef LOAD1
#define T float
#define NAME(x) x##_f32
#define LOAD load_f32
#define STORE store_f32
#define ROUND round_f32
#define LOAD1 load1_f32
#include "kernels_dtype.h"

/* torch.optim.Adadelta's single-tensor step (torch/optim/adadelta.py), weight_decay 0, not maximizing:
 *   square_avg.mul_(rho).addcmul_(grad, grad, value=1 - rho)
 *   std = square_avg.add(eps).sqrt_()
 *   delta = acc_delta.add(eps).sqrt_().div_(std).mul_(grad)
 *   acc_delta.mul_(rho).addcmul_(delta, delta, value=1 - rho)
 *   param.add_(delta, alpha=-lr)
 * rounded as torch's CPU kernels round: addcmul_ and add_ with alpha as one fused multiply-add each (fmaf), the
 * scalars as torch passes them: float(1 - rho) computed in double, float(-lr). */
void adadelta(float *param, const float *grad, float *square_avg, float *acc_delta, int64_t n, float minus_lr,
              float rho, float one_minus_rho, float eps, int threads) {
#pragma omp parallel for simd num_threads(threads) schedule(static)
    for (int64_t i = 0; i < n; i++) {
        float g = grad[i];
        float s = fmaf(one_minus_rho * g, g, square_avg[i] * rho);
        square_avg[i] = s;
        float delta = sqrtf(acc_delta[i] + eps) / sqrtf(s + eps) * g;
        acc_delta[i] = fmaf(one_minus_rho * delta, delta, acc_delta[i] * rho);
        param[i] = fmaf(minus_lr, delta, param[i]);
    }
}
