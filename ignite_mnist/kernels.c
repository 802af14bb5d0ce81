/* Fused CPU kernels for the training step (ignite_mnist/kernels.py builds and loads them).
 *
 * Each computes, bit for bit but where said, what the eager PyTorch operators it replaces compute
 * (tests/test_kernels.py), in one pass over memory instead of several:
 * - pool_fwd_*, pool_bwd_*: max-pool 2x2 (stride 2), ReLU and dropout on a channels_last activation, and their
 *   backward (kernels_dtype.h, for bf16 and float32);
 * - conv1_relu_bwd_*: conv1's weight and bias gradients through its ReLU, in one pass (float sums: not bit for bit
 *   oneDNN's bf16 backward, which rounds them to bf16);
 * - adadelta: torch.optim.Adadelta's update of one float32 parameter (no weight decay), torch's order of
 *   operations, each rounded to float as torch rounds it;
 * - philox_bytes: dropout's random bytes, Philox4x32-10; max_abs_*: whether a convolution's sums stay finite.
 * Compiled with -ffp-contract=off (fused multiply-adds only where torch has them: fmaf), -fno-trapping-math and
 * -fno-math-errno (so that comparisons and sqrtf vectorize; results unchanged). Threads: OpenMP, torch's own
 * runtime (libgomp.so.1 is loaded once per process).
 */
#include <stdint.h>
#include <string.h>
#include <math.h>

/* Channels a vector (callers check that C is a multiple of 16): 16 with AVX-512, else 8, 256-bit vectors; wider
 * vectors than the CPU's own are split by the compiler through memory, 4x slower on AVX2. */
#if defined(__AVX512F__)
#define VLEN 16
#else
#define VLEN 8
#endif
typedef float vf __attribute__((vector_size(VLEN * 4)));
typedef int32_t vi __attribute__((vector_size(VLEN * 4)));
typedef uint32_t vu __attribute__((vector_size(VLEN * 4)));
typedef uint16_t vh __attribute__((vector_size(VLEN * 2)));
typedef uint8_t vb __attribute__((vector_size(VLEN)));

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
/* VLEN rows of VLEN values transposed in registers: at each level b = VLEN/2, ..., 2, 1, bit b of the row and
 * column indexes swapped (the off-diagonal blocks of b x b exchanged), two-source shuffles with these masks
 * (lo: row i's new values, where j has bit b row i + b's j - b; hi: row i + b's). */
#if VLEN == 16
#define LEVELS 4
#define TRANSPOSE_MASKS(RAW) \
    static const RAW lo_##RAW[4] = {{0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23}, \
                                    {0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27}, \
                                    {0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29}, \
                                    {0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30}}; \
    static const RAW hi_##RAW[4] = {{8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31}, \
                                    {4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31}, \
                                    {2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31}, \
                                    {1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31}};
#else
#define LEVELS 3
#define TRANSPOSE_MASKS(RAW) \
    static const RAW lo_##RAW[3] = {{0, 1, 2, 3, 8, 9, 10, 11}, {0, 1, 8, 9, 4, 5, 12, 13}, {0, 8, 2, 10, 4, 12, 6, 14}}; \
    static const RAW hi_##RAW[3] = {{4, 5, 6, 7, 12, 13, 14, 15}, {2, 3, 10, 11, 6, 7, 14, 15}, {1, 9, 3, 11, 5, 13, 7, 15}};
#endif
#define DEFINE_TRANSPOSE(RAW, NAME) \
    static inline void NAME(RAW r[VLEN]) { \
        TRANSPOSE_MASKS(RAW) \
        _Pragma("GCC unroll 4") for (int level = 0; level < LEVELS; level++) { \
            const int b = (VLEN / 2) >> level; \
            _Pragma("GCC unroll 16") for (int i = 0; i < VLEN; i++) \
                if (!(i & b)) { \
                    RAW a = r[i], c = r[i + b]; \
                    r[i] = __builtin_shuffle(a, c, lo_##RAW[level]); \
                    r[i + b] = __builtin_shuffle(a, c, hi_##RAW[level]); \
                } \
        } \
    }
DEFINE_TRANSPOSE(vh, transpose_bf16)
DEFINE_TRANSPOSE(vu, transpose_f32)

/* The first count (at most VLEN) values of a vector stored, or loaded into a zeroed vector: masked moves with
 * AVX-512, else one value at a time. */
#if VLEN == 16 && defined(__AVX512BW__) && defined(__AVX512VL__)
#include <immintrin.h>
static inline void store_head_bf16(uint16_t *p, vh v, int count) {
    __m256i x; memcpy(&x, &v, sizeof x); _mm256_mask_storeu_epi16(p, (__mmask16)((1u << count) - 1), x); }
static inline vh load_head_bf16(const uint16_t *p, int count) {
    __m256i x = _mm256_maskz_loadu_epi16((__mmask16)((1u << count) - 1), p); vh v; memcpy(&v, &x, sizeof v); return v; }
static inline void store_head_f32(float *p, vu v, int count) {
    __m512i x; memcpy(&x, &v, sizeof x); _mm512_mask_storeu_epi32(p, (__mmask16)((1u << count) - 1), x); }
static inline vu load_head_f32(const float *p, int count) {
    __m512i x = _mm512_maskz_loadu_epi32((__mmask16)((1u << count) - 1), p); vu v; memcpy(&v, &x, sizeof v); return v; }
#else
static inline void store_head_bf16(uint16_t *p, vh v, int count) { for (int k = 0; k < count; k++) p[k] = v[k]; }
static inline vh load_head_bf16(const uint16_t *p, int count) {
    vh v = {0}; for (int k = 0; k < count; k++) v[k] = p[k]; return v; }
static inline void store_head_f32(float *p, vu v, int count) { for (int k = 0; k < count; k++) memcpy(p + k, &v[k], 4); }
static inline vu load_head_f32(const float *p, int count) {
    vu v = {0}; for (int k = 0; k < count; k++) memcpy(&v[k], p + k, 4); return v; }
#endif

static inline float load1_bf16(uint16_t b) { uint32_t u = (uint32_t)b << 16; float f; memcpy(&f, &u, 4); return f; }
static inline float load1_f32(float f) { return f; }

#define T uint16_t
#define RAW vh
#define TRANSPOSE transpose_bf16
#define STORE_HEAD store_head_bf16
#define LOAD_HEAD load_head_bf16
#define NAME(x) x##_bf16
#define LOAD load_bf16
#define STORE store_bf16
#define ROUND round_bf16
#define LOAD1 load1_bf16
#include "kernels_dtype.h"
#undef T
#undef RAW
#undef TRANSPOSE
#undef STORE_HEAD
#undef LOAD_HEAD
#undef NAME
#undef LOAD
#undef STORE
#undef ROUND
#undef LOAD1
#define T float
#define RAW vu
#define TRANSPOSE transpose_f32
#define STORE_HEAD store_head_f32
#define LOAD_HEAD load_head_f32
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

/* n random bytes: Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11), keyed by
 * (key0, key1). Block i is the four 32-bit words Philox makes of the counter (i mod 2^32, i >> 32, 0, 0); its
 * 16 bytes, little-endian, are bytes 16i to 16i+15. Counter-based: the same bytes for any number of threads. */
typedef uint64_t v8q __attribute__((vector_size(64)));
typedef uint32_t v8d __attribute__((vector_size(32)));
#if defined(__AVX512F__)
#include <immintrin.h>
static inline v8q mul_low32(v8q a, uint32_t m) {  /* the 64-bit products of the lanes' low words (vpmuludq) */
    __m512i x, r;
    memcpy(&x, &a, sizeof x);
    r = _mm512_mul_epu32(x, _mm512_set1_epi64(m));
    memcpy(&a, &r, sizeof a);
    return a;
}
#elif defined(__AVX2__)
#include <immintrin.h>
static inline v8q mul_low32(v8q a, uint32_t m) {  /* the same in two halves (a generic multiply: 11x slower) */
    __m256i h[2];
    memcpy(h, &a, sizeof h);
    h[0] = _mm256_mul_epu32(h[0], _mm256_set1_epi64x(m));
    h[1] = _mm256_mul_epu32(h[1], _mm256_set1_epi64x(m));
    memcpy(&a, h, sizeof a);
    return a;
}
#else
static inline v8q mul_low32(v8q a, uint32_t m) { return a * m; }  /* (a's lanes below 2^32) */
#endif
#if defined(__AVX512F__)
#define PHILOX_GROUPS 4 /* groups of eight blocks computed together: four dependency chains in flight */
#else
#define PHILOX_GROUPS 1 /* (sixteen 256-bit registers: more groups would spill to the stack) */
#endif
void philox_bytes(uint8_t *out, int64_t n, uint32_t key0, uint32_t key1, int threads) {
    const uint64_t LOW = 0xFFFFFFFFu;
    const int64_t groups = (n + 127) / 128, steps = (groups + PHILOX_GROUPS - 1) / PHILOX_GROUPS;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t step = 0; step < steps; step++) {
        v8q c0[PHILOX_GROUPS], c1[PHILOX_GROUPS], c2[PHILOX_GROUPS], c3[PHILOX_GROUPS];
        for (int q = 0; q < PHILOX_GROUPS; q++) {
            const uint64_t first = (uint64_t)(step * PHILOX_GROUPS + q) * 8;  /* the lanes: blocks first.. first+7 */
            const v8q block = first + (v8q){0, 1, 2, 3, 4, 5, 6, 7};
            c0[q] = block & LOW;
            c1[q] = block >> 32;
            c2[q] = c3[q] = (v8q){0};
        }
        uint64_t k0 = key0, k1 = key1;
        for (int round = 0; round < 10; round++) {
            if (round) {
                k0 = (k0 + 0x9E3779B9u) & LOW;
                k1 = (k1 + 0xBB67AE85u) & LOW;
            }
            for (int q = 0; q < PHILOX_GROUPS; q++) {
                const v8q p0 = mul_low32(c0[q], 0xD2511F53u), p1 = mul_low32(c2[q], 0xCD9E8D57u);
                c0[q] = (p1 >> 32) ^ c1[q] ^ k0;
                c2[q] = (p0 >> 32) ^ c3[q] ^ k1;
                c1[q] = p1 & LOW;
                c3[q] = p0 & LOW;
            }
        }
        for (int q = 0; q < PHILOX_GROUPS; q++) {
            const int64_t at = (step * PHILOX_GROUPS + q) * 128;
            if (at >= n) break;
            /* the words interleaved block by block: c0 c1 c2 c3 of lane 0, then of lane 1, ... */
            const v8d w0 = __builtin_convertvector(c0[q], v8d), w1 = __builtin_convertvector(c1[q], v8d);
            const v8d w2 = __builtin_convertvector(c2[q], v8d), w3 = __builtin_convertvector(c3[q], v8d);
            const v8d a = __builtin_shuffle(w0, w1, (v8d){0, 8, 1, 9, 2, 10, 3, 11});
            const v8d b = __builtin_shuffle(w0, w1, (v8d){4, 12, 5, 13, 6, 14, 7, 15});
            const v8d c = __builtin_shuffle(w2, w3, (v8d){0, 8, 1, 9, 2, 10, 3, 11});
            const v8d d = __builtin_shuffle(w2, w3, (v8d){4, 12, 5, 13, 6, 14, 7, 15});
            const v8d words[4] = {__builtin_shuffle(a, c, (v8d){0, 1, 8, 9, 2, 3, 10, 11}),
                                  __builtin_shuffle(a, c, (v8d){4, 5, 12, 13, 6, 7, 14, 15}),
                                  __builtin_shuffle(b, d, (v8d){0, 1, 8, 9, 2, 3, 10, 11}),
                                  __builtin_shuffle(b, d, (v8d){4, 5, 12, 13, 6, 7, 14, 15})};
            if (n - at >= 128)
                memcpy(out + at, words, 128);  /* little-endian: x86 and arm64 */
            else
                memcpy(out + at, words, (size_t)(n - at));
        }
    }
}

/* Whether philox_bytes is vectorized in this build (AVX2 or AVX-512); elsewhere torch's generator is faster. */
int philox_vectorized(void) {
#if defined(__AVX2__) || defined(__AVX512F__)
    return 1;
#else
    return 0;
#endif
}
