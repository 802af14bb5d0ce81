/* Fused CPU kernels for the training step (ignite_mnist/kernels.py builds and loads them).
 *
 * Each computes, bit for bit but where said, what the eager PyTorch operators it replaces compute
 * (tests/test_kernels.py), in one pass over memory instead of several:
 * - pool_fwd_*, pool_bwd_*: max-pool 2x2 (stride 2), ReLU and dropout on a channels_last activation, and their
 *   backward (kernels_dtype.h, for bf16 and float32);
 * - conv1_relu_bwd_*: conv1's weight and bias gradients through its ReLU, in one pass (float sums: not bit for bit
 *   oneDNN's bf16 backward, which rounds them to bf16);
 * - conv2_wgrad_bf16: conv2's weight and bias gradients on AMX (float sums, as conv1's);
 * - linear_fwd_bf16, linear_dgrad_bf16, linear_wgrad_bf16: fc1 on AMX, its forward with the weight's cast (oneDNN's
 *   values but where a sum rounds to the neighbouring bf16: another order of the same float sums), x's gradient,
 *   and the weight and bias gradients (float sums);
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
#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>  /* (every use of an intrinsic below is under one of these) */
#endif

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

/* Lanes widened or narrowed (zero-extended, or truncated). GCC's __builtin_convertvector does it here lane by
 * lane for bytes (two dozen scalar moves a vector) and with a three-uop permute for 16-bit lanes: with AVX-512,
 * one vpmovzx or vpmov each; with AVX2, a vpmovzx, or a byte shuffle and an unpack. */
#if VLEN == 16 && defined(__AVX512F__)
static inline vi widen_bytes(vb b) { __m128i x; memcpy(&x, &b, 16); __m512i w = _mm512_cvtepu8_epi32(x); vi v;
                                     memcpy(&v, &w, 64); return v; }
static inline vb narrow_to_bytes(vi v) { __m512i w; memcpy(&w, &v, 64); __m128i x = _mm512_cvtepi32_epi8(w); vb b;
                                         memcpy(&b, &x, 16); return b; }
static inline vu widen_halves(vh h) { __m256i x; memcpy(&x, &h, 32); __m512i w = _mm512_cvtepu16_epi32(x); vu v;
                                      memcpy(&v, &w, 64); return v; }
static inline vh narrow_to_halves(vu v) { __m512i w; memcpy(&w, &v, 64); __m256i x = _mm512_cvtepi32_epi16(w); vh h;
                                          memcpy(&h, &x, 32); return h; }
#elif VLEN == 8 && defined(__AVX2__)
static inline vi widen_bytes(vb b) { __m128i x = _mm_loadl_epi64((const __m128i *)&b);
                                     __m256i w = _mm256_cvtepu8_epi32(x); vi v; memcpy(&v, &w, 32); return v; }
static inline vb narrow_to_bytes(vi v) {  /* each lane's low byte, then the two 128-bit halves' four together */
    __m256i w; memcpy(&w, &v, 32);
    w = _mm256_shuffle_epi8(w, _mm256_setr_epi8(0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
                                                0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1));
    __m128i x = _mm_unpacklo_epi32(_mm256_castsi256_si128(w), _mm256_extracti128_si256(w, 1));
    vb b; memcpy(&b, &x, 8); return b; }
static inline vu widen_halves(vh h) { __m128i x; memcpy(&x, &h, 16); __m256i w = _mm256_cvtepu16_epi32(x); vu v;
                                      memcpy(&v, &w, 32); return v; }
static inline vh narrow_to_halves(vu v) {
    __m256i w; memcpy(&w, &v, 32);
    w = _mm256_shuffle_epi8(w, _mm256_setr_epi8(0, 1, 4, 5, 8, 9, 12, 13, -1, -1, -1, -1, -1, -1, -1, -1,
                                                0, 1, 4, 5, 8, 9, 12, 13, -1, -1, -1, -1, -1, -1, -1, -1));
    __m128i x = _mm_unpacklo_epi64(_mm256_castsi256_si128(w), _mm256_extracti128_si256(w, 1));
    vh h; memcpy(&h, &x, 16); return h; }
#else
static inline vi widen_bytes(vb b) { return __builtin_convertvector(b, vi); }
static inline vb narrow_to_bytes(vi v) { return __builtin_convertvector(v, vb); }
static inline vu widen_halves(vh h) { return __builtin_convertvector(h, vu); }
static inline vh narrow_to_halves(vu v) { return __builtin_convertvector(v, vh); }
#endif

/* bfloat16 as torch converts it (c10::BFloat16: round to nearest even, NaN to 0x7FC0) */
static inline vf load_bf16(const uint16_t *p) {
    vh h; memcpy(&h, p, sizeof h);
    return (vf)(widen_halves(h) << 16);
}
static inline void store_bf16(uint16_t *p, vf f) {
    vu u = (vu)f;
    vu rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
    vu nan = (vu)(f != f);
    vh h = narrow_to_halves((rounded & ~nan) | (0x7FC0u & nan));
    memcpy(p, &h, sizeof h);
}
static inline vf round_bf16(vf f) { uint16_t h[VLEN]; store_bf16(h, f); return load_bf16(h); }
/* the bits of values that are bf16 values already (rounded by round_bf16): no rounding to do, the top halves */
static inline vh exact_bits_bf16(vf f) { return narrow_to_halves((vu)f >> 16); }
static inline vu exact_bits_f32(vf f) { return (vu)f; }
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
#if VLEN == 16 && defined(__AVX2__)
/* 16 rows of 16 bf16 transposed with one-uop shuffles: pairs of rows interleaved by 16, 32 and 64 bits within each
 * 128-bit half, then the halves exchanged (64 shuffles; GCC makes the generic one above of three-uop vpermt2w:
 * the pooling kernels 6-7% slower). */
static inline void transpose_bf16(vh r[16]) {
    __m256i a[16], b[16], c[16];
    for (int i = 0; i < 16; i++) memcpy(&c[i], &r[i], sizeof c[i]);
    for (int p = 0; p < 8; p++) {  /* rows 2p, 2p + 1: columns 0-3 (8-11), 4-7 (12-15) */
        a[2 * p] = _mm256_unpacklo_epi16(c[2 * p], c[2 * p + 1]);
        a[2 * p + 1] = _mm256_unpackhi_epi16(c[2 * p], c[2 * p + 1]);
    }
    for (int q = 0; q < 4; q++) {  /* rows 4q to 4q + 3: columns 2i, 2i + 1 (and + 8) in b[4q + i] */
        const __m256i *s = a + 4 * q;
        b[4 * q] = _mm256_unpacklo_epi32(s[0], s[2]);
        b[4 * q + 1] = _mm256_unpackhi_epi32(s[0], s[2]);
        b[4 * q + 2] = _mm256_unpacklo_epi32(s[1], s[3]);
        b[4 * q + 3] = _mm256_unpackhi_epi32(s[1], s[3]);
    }
    for (int h = 0; h < 2; h++)  /* rows 8h to 8h + 7: column j (and j + 8) in a[8h + j] */
        for (int i = 0; i < 4; i++) {
            a[8 * h + 2 * i] = _mm256_unpacklo_epi64(b[8 * h + i], b[8 * h + 4 + i]);
            a[8 * h + 2 * i + 1] = _mm256_unpackhi_epi64(b[8 * h + i], b[8 * h + 4 + i]);
        }
    for (int j = 0; j < 8; j++) {
        c[j] = _mm256_permute2x128_si256(a[j], a[8 + j], 0x20);
        c[8 + j] = _mm256_permute2x128_si256(a[j], a[8 + j], 0x31);
    }
    for (int i = 0; i < 16; i++) memcpy(&r[i], &c[i], sizeof r[i]);
}
#else
DEFINE_TRANSPOSE(vh, transpose_bf16)
#endif
DEFINE_TRANSPOSE(vu, transpose_f32)

/* The first count (at most VLEN) values of a vector stored, or loaded into a zeroed vector: masked moves with
 * AVX-512, else one value at a time. */
#if VLEN == 16 && defined(__AVX512BW__) && defined(__AVX512VL__)
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
#define EXACT_BITS exact_bits_bf16
#define SEL_RAW(mask, a, b) (((a) & narrow_to_halves((vu)(mask))) | ((b) & ~narrow_to_halves((vu)(mask))))
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
#undef EXACT_BITS
#undef SEL_RAW
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
#define EXACT_BITS exact_bits_f32
#define SEL_RAW(mask, a, b) (((a) & (vu)(mask)) | ((b) & ~(vu)(mask)))
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
static inline v8q mul_low32(v8q a, uint32_t m) {  /* the 64-bit products of the lanes' low words (vpmuludq) */
    __m512i x, r;
    memcpy(&x, &a, sizeof x);
    r = _mm512_mul_epu32(x, _mm512_set1_epi64(m));
    memcpy(&a, &r, sizeof a);
    return a;
}
#elif defined(__AVX2__)
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

/* ---- conv2's weight and bias gradients on AMX ------------------------------------------------------------
 * gw[o][c][kh][kw] = sum over n, oh, ow of go[n][oh][ow][o] * x[n][oh+kh][ow+kw][c] and gb[o] = sum of go[..][o],
 * for model.Net's conv2 only: x bf16 [n][26][26][32], go bf16 [n][24][24][64] (channels_last), sums in float32.
 * AMX's tile multiply (tdpbf16ps: C[16x16] += A[16x32] B[32x16], float32 sums of bf16 products) takes them as
 * GEMMs over the output positions: an image's positions p = oh*26 + ow run over the whole 26-wide row (go is 0 at
 * ow = 24, 25), so that each of the nine taps (kh, kw) is a shift of x by kh*26 + kw. A tiles: go transposed,
 * [o block][32 positions][16 o]; B tiles: x in pairs of positions (AMX's layout), packed twice, from even and
 * from odd positions, so that every shift starts a tile on a pair. Four C tiles (2 o blocks x 2 c blocks) stay
 * in registers over half an image's positions. Sums per chunk of 8 images, then over the chunks in order: the
 * same bits for any number of threads. 0.6 ms against oneDNN's 1.1 ms for a batch of 64 (README, Speed). */
#if defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__AVX512BF16__) && defined(__AVX512BW__) \
    && defined(__linux__)
#include <stdlib.h>
#include <unistd.h>
#include <omp.h>
#include <sys/syscall.h>

#define C2_C 32         /* input channels */
#define C2_X 26         /* input side */
#define C2_XPOS (C2_X * C2_X)
#define C2_O 64         /* output channels */
#define C2_Y 24         /* output side */
#define C2_KT 20        /* tiles of 32 positions: 640 >= 24 * 26 */
#define C2_KB 10        /* of them a C tile sums before it is stored */
#define C2_XR 352       /* pairs of positions in an x pack: 2 * 352 >= 19 * 32 + 31 + 54 + 1 */
#define C2_CHUNK 8      /* images a partial sum */

typedef struct { uint8_t palette, start_row, reserved[14]; uint16_t colsb[16]; uint8_t rows[16]; } tile_config;

/* This thread's tiles configured: all eight 16 rows of 64 bytes */
static void configure_tiles(void) {
    tile_config config;
    memset(&config, 0, sizeof config);
    config.palette = 1;
    for (int i = 0; i < 8; i++) { config.colsb[i] = 64; config.rows[i] = 16; }
    _tile_loadconfig(&config);
}

/* permutex2var's picks that interleave two rows of 32 bf16, (a[c], b[c]) for c from `from` to from + 15: with 0
 * and 16, the pairs of rows that AMX's B tiles take */
static inline __m512i interleave_picks(int from) {
    uint16_t picks[32];
    for (int c = 0; c < 16; c++) { picks[2 * c] = from + c; picks[2 * c + 1] = 32 + from + c; }
    return _mm512_loadu_si512(picks);
}

/* One step of a 32x32 block: C tiles 0-3 (rows of a0 then a1, by columns of b0 then b1) += the A tiles at a0, a1
 * times the B tiles at b0, b1 (row strides in bytes) */
static inline void multiply_32x32(const void *a0, const void *a1, int64_t a_stride, const void *b0, const void *b1,
                                  int64_t b_stride) {
    _tile_loadd(4, a0, a_stride);
    _tile_loadd(6, b0, b_stride);
    _tile_loadd(7, b1, b_stride);
    _tile_loadd(5, a1, a_stride);
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
}

/* C tiles 0-3 stored as a 32x32 block of floats at c, rows `stride` floats apart */
static inline void store_32x32(float *c, int64_t stride) {
    _tile_stored(0, c, stride * 4); _tile_stored(1, c + 16, stride * 4);
    _tile_stored(2, c + 16 * stride, stride * 4); _tile_stored(3, c + 16 * stride + 16, stride * 4);
}

/* 16 vectors of 16 32-bit words transposed in registers */
static inline void transpose16x16(__m512i r[16]) {
    __m512i u[16];
    for (int g = 0; g < 4; g++) {
        __m512i t0 = _mm512_unpacklo_epi32(r[4*g], r[4*g+1]), t1 = _mm512_unpackhi_epi32(r[4*g], r[4*g+1]);
        __m512i t2 = _mm512_unpacklo_epi32(r[4*g+2], r[4*g+3]), t3 = _mm512_unpackhi_epi32(r[4*g+2], r[4*g+3]);
        u[4*g] = _mm512_unpacklo_epi64(t0, t2); u[4*g+1] = _mm512_unpackhi_epi64(t0, t2);
        u[4*g+2] = _mm512_unpacklo_epi64(t1, t3); u[4*g+3] = _mm512_unpackhi_epi64(t1, t3);
    }
    for (int c = 0; c < 4; c++) {
        __m512i v0 = _mm512_shuffle_i32x4(u[c], u[4+c], 0x44), v1 = _mm512_shuffle_i32x4(u[c], u[4+c], 0xEE);
        __m512i v2 = _mm512_shuffle_i32x4(u[8+c], u[12+c], 0x44), v3 = _mm512_shuffle_i32x4(u[8+c], u[12+c], 0xEE);
        r[c] = _mm512_shuffle_i32x4(v0, v2, 0x88); r[4+c] = _mm512_shuffle_i32x4(v0, v2, 0xDD);
        r[8+c] = _mm512_shuffle_i32x4(v1, v3, 0x88); r[12+c] = _mm512_shuffle_i32x4(v1, v3, 0xDD);
    }
}

/* One image's go [576][64] into A tiles a[o block][k tile][16 o][32 positions], and its sums per o into bias[4]
 * (lane i of bias[2h + lh]: o = 32h + 8(i / 4) + i % 4 + 4lh, the order unpack leaves them in). */
static void conv2_pack_go(const uint16_t *go, uint16_t *a, __m512 bias[4]) {
    const __m512i zero = _mm512_setzero_si512();
    const __m512bh ones = (__m512bh)_mm512_set1_epi16(0x3f80);
    for (int kt = 0; kt < C2_KT; kt++) {
        const uint16_t *row[32];
        for (int k = 0; k < 32; k++) {
            int p = kt * 32 + k, oh = p / C2_X, ow = p % C2_X;
            row[k] = oh < C2_Y && ow < C2_Y ? go + (oh * C2_Y + ow) * C2_O : 0;
        }
        for (int h = 0; h < 2; h++)
            for (int lh = 0; lh < 2; lh++) {
                __m512i r[16];
                __m512 sum = bias[2 * h + lh];
                for (int j = 0; j < 16; j++) {
                    __m512i r0 = row[2 * j] ? _mm512_loadu_si512(row[2 * j] + 32 * h) : zero;
                    __m512i r1 = row[2 * j + 1] ? _mm512_loadu_si512(row[2 * j + 1] + 32 * h) : zero;
                    r[j] = lh ? _mm512_unpackhi_epi16(r0, r1) : _mm512_unpacklo_epi16(r0, r1);
                    sum = _mm512_dpbf16_ps(sum, (__m512bh)r[j], ones);
                }
                bias[2 * h + lh] = sum;
                transpose16x16(r);
                for (int i = 0; i < 16; i++) {
                    int o = 32 * h + 8 * (i / 4) + i % 4 + 4 * lh;
                    _mm512_store_si512(a + (((o >> 4) * C2_KT + kt) * 16 + (o & 15)) * 32, r[i]);
                }
            }
    }
}

/* One image's x [676][32] into B tiles b[parity][c block][pair][16 c][2]: parity 0 pairs positions (2r, 2r + 1),
 * parity 1 (2r + 1, 2r + 2); c block 0 holds c = 8(j / 4) + j % 4, block 1 those + 4 (unpack's order). */
static void conv2_pack_x(const uint16_t *x, uint16_t *b) {
    const __m512i zero = _mm512_setzero_si512();
    __m512i even = _mm512_loadu_si512(x);
    for (int r = 0; r < C2_XR; r++) {
        int p1 = 2 * r + 1, p2 = 2 * r + 2;
        __m512i odd = p1 < C2_XPOS ? _mm512_loadu_si512(x + p1 * C2_C) : zero;
        __m512i next = p2 < C2_XPOS ? _mm512_loadu_si512(x + p2 * C2_C) : zero;
        _mm512_store_si512(b + (0 * C2_XR + r) * 32, _mm512_unpacklo_epi16(even, odd));
        _mm512_store_si512(b + (1 * C2_XR + r) * 32, _mm512_unpackhi_epi16(even, odd));
        _mm512_store_si512(b + (2 * C2_XR + r) * 32, _mm512_unpacklo_epi16(odd, next));
        _mm512_store_si512(b + (3 * C2_XR + r) * 32, _mm512_unpackhi_epi16(odd, next));
        even = next;
    }
}

static const int C2_SHIFT[9] = {0, 1, 2, 26, 27, 28, 52, 53, 54};  /* tap kh * 3 + kw: x's shift */
static const int C2_ORDER[9] = {0, 2, 3, 5, 6, 8, 7, 4, 1};       /* the taps in the order run (measured) */

/* One image's products added to acc[tap][o block][c block][16][16] (zeroed first where first) */
static void conv2_image(const uint16_t *a, const uint16_t *b, float *acc, int first) {
    for (int kb = 0; kb < C2_KT; kb += C2_KB) {
        int zero = first && kb == 0;
        for (int half = 0; half < 2; half++) {  /* o blocks 2 half, 2 half + 1 */
            const uint16_t *a0 = a + 2 * half * C2_KT * 512, *a1 = a0 + C2_KT * 512;
            for (int t = 0; t < 9; t++) {
                int tap = C2_ORDER[t], shift = C2_SHIFT[tap];
                float *c = acc + (tap * 8 + half * 4) * 256;
                if (zero) { _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3); }
                else { _tile_loadd(0, c, 64); _tile_loadd(1, c + 256, 64); _tile_loadd(2, c + 512, 64);
                       _tile_loadd(3, c + 768, 64); }
#define C2_B(kt, cb) (b + ((((kt) * 32 + shift) & 1) * 2 + (cb)) * C2_XR * 32 + (((kt) * 32 + shift) >> 1) * 32)
                _tile_loadd(4, a0 + kb * 512, 64);
                _tile_loadd(6, C2_B(kb, 0), 64);
                _tile_loadd(7, C2_B(kb, 1), 64);
                _tile_loadd(5, a1 + kb * 512, 64);
                for (int kt = kb; kt < kb + C2_KB - 1; kt++) {  /* the next tiles loaded while these multiply */
                    _tile_dpbf16ps(0, 4, 6);
                    _tile_dpbf16ps(1, 4, 7);
                    _tile_loadd(4, a0 + (kt + 1) * 512, 64);
                    _tile_dpbf16ps(2, 5, 6);
                    _tile_loadd(6, C2_B(kt + 1, 0), 64);
                    _tile_dpbf16ps(3, 5, 7);
                    _tile_loadd(7, C2_B(kt + 1, 1), 64);
                    _tile_loadd(5, a1 + (kt + 1) * 512, 64);
                }
#undef C2_B
                _tile_dpbf16ps(0, 4, 6);
                _tile_dpbf16ps(1, 4, 7);
                _tile_dpbf16ps(2, 5, 6);
                _tile_dpbf16ps(3, 5, 7);
                _tile_stored(0, c, 64); _tile_stored(1, c + 256, 64);
                _tile_stored(2, c + 512, 64); _tile_stored(3, c + 768, 64);
            }
        }
    }
}

/* Whether this process may use AMX's tiles (conv2's and fc1's kernels): Linux gives them on request (arch_prctl
 * ARCH_REQ_XCOMP_PERM for XTILEDATA); an older kernel, or a VM without them, refuses. */
int amx_permitted(void) {
    return syscall(SYS_arch_prctl, 0x1023, 18) == 0;
}

/* gw [o][c][kh][kw] at strides (so, sc, sh, sw) and gb [64], float32. Returns -1 (nothing written) where AMX is
 * refused or memory short. */
int conv2_wgrad_bf16(const uint16_t *x, const uint16_t *go, int64_t n, float *gw, int64_t so, int64_t sc,
                     int64_t sh, int64_t sw, float *gb, int threads) {
    /* (AMX is granted once, a process's for good: asking again at each call costs a syscall, a microsecond) */
    if (n < 1 || threads < 1 || !amx_permitted())
        return -1;
    int64_t chunks = (n + C2_CHUNK - 1) / C2_CHUNK;
    float *acc = aligned_alloc(64, (size_t)chunks * 72 * 1024), *bias_acc = aligned_alloc(64, (size_t)chunks * 256);
    int failed = acc == 0 || bias_acc == 0;
    if (!failed) {
#pragma omp parallel num_threads(threads)
        {
            uint16_t *a = aligned_alloc(64, 4 * C2_KT * 16 * 32 * 2), *b = aligned_alloc(64, 4 * C2_XR * 64);
            if (a == 0 || b == 0) {
#pragma omp atomic write
                failed = 1;
            }
            configure_tiles();
#pragma omp for schedule(static)
            for (int64_t chunk = 0; chunk < chunks; chunk++) {
                if (a == 0 || b == 0)
                    continue;
                float *chunk_acc = acc + chunk * 72 * 256;
                __m512 bias[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
                int64_t end = chunk * C2_CHUNK + C2_CHUNK < n ? chunk * C2_CHUNK + C2_CHUNK : n;
                for (int64_t i = chunk * C2_CHUNK; i < end; i++) {
                    conv2_pack_go(go + i * C2_Y * C2_Y * C2_O, a, bias);
                    conv2_pack_x(x + i * C2_XPOS * C2_C, b);
                    conv2_image(a, b, chunk_acc, i == chunk * C2_CHUNK);
                }
                float lanes[16];
                for (int v = 0; v < 4; v++) {
                    _mm512_storeu_ps(lanes, bias[v]);
                    for (int i = 0; i < 16; i++)
                        bias_acc[chunk * 64 + 32 * (v >> 1) + 8 * (i / 4) + i % 4 + 4 * (v & 1)] = lanes[i];
                }
            }
            _tile_release();  /* (oneDNN configures its own tiles each time it runs) */
            free(a);
            free(b);
#pragma omp barrier
            if (!failed) {  /* the chunks' sums, in order */
#pragma omp for schedule(static)
                for (int o = 0; o < C2_O; o++) {
                    for (int tap = 0; tap < 9; tap++)
                        for (int cb = 0; cb < 2; cb++) {
                            __m512 sum = _mm512_setzero_ps();
                            for (int64_t chunk = 0; chunk < chunks; chunk++)
                                sum = _mm512_add_ps(sum, _mm512_load_ps(
                                    acc + chunk * 72 * 256 + ((tap * 4 + (o >> 4)) * 2 + cb) * 256 + (o & 15) * 16));
                            float lanes[16];
                            _mm512_storeu_ps(lanes, sum);
                            for (int j = 0; j < 16; j++)
                                gw[o * so + (8 * (j / 4) + 4 * cb + j % 4) * sc + (tap / 3) * sh + (tap % 3) * sw] =
                                    lanes[j];
                        }
                    float sum = 0.f;
                    for (int64_t chunk = 0; chunk < chunks; chunk++)
                        sum += bias_acc[chunk * 64 + o];
                    gb[o] = sum;
                }
            }
        }
    }
    free(acc);
    free(bias_acc);
    return failed ? -1 : 0;
}

/* ---- a linear layer's forward on AMX (model.Net's fc1) ----------------------------------------------------
 * y[i][o] = bf16(sum over c of x[i][c] * bf16(w[o][c]) + b[o]) for x bf16 [n][k], w float32 [m][k] (row-major; k
 * and m multiples of 32), b bf16 [m]: autocast's cast of the weight and the GEMM in one pass over the float32
 * weight (torch casts it to bf16 in a pass of its own, then oneDNN reads that). A tiles: x as it lies, 16 images
 * by 32 columns; B tiles: the weight rounded to bf16 and laid in AMX's pairs of columns (a 16x16 transpose of
 * 32-bit pairs), packed by each thread for its 32 outputs. (Computed transposed instead, the weight as it lies
 * and x packed, it took 1.7x as long.) Where w_pairs is given (64-byte aligned), the weight in bf16 is written
 * there too, in pairs of outputs ([m / 2][k][2]: the B tiles of x's gradient, linear_dgrad_bf16). Each output's
 * sum runs over the whole of k in one tile: the same bits for any number of threads. */
int linear_fwd_bf16(const uint16_t *x, int64_t n, int64_t k, int64_t m, const float *w, const uint16_t *b,
                    uint16_t *y, uint16_t *w_pairs, int threads) {
    if (k % 32 || m % 32 || n < 1 || threads < 1 || (uintptr_t)w_pairs % 64 || !amx_permitted())
        return -1;
    int64_t whole = n / 32 * 32, pairs = (n + 31) / 32, steps = k / 32;  /* images in whole tiles of 32; tiles */
    size_t tail_size = (size_t)(32 * k), bt_size = (size_t)(steps * 2 * 512);  /* (in bf16 values) */
    uint16_t *tail = aligned_alloc(64, (tail_size + (size_t)threads * bt_size) * 2);  /* the last images, padded */
    if (tail == 0)
        return -1;
    if (n > whole) {
        memcpy(tail, x + whole * k, (size_t)((n - whole) * k * 2));
        memset(tail + (n - whole) * k, 0, (size_t)((32 - (n - whole)) * k * 2));
    }
    const __m512i pick_first = interleave_picks(0), pick_second = interleave_picks(16);
#pragma omp parallel num_threads(threads)
    {
        uint16_t *bt = tail + tail_size + omp_get_thread_num() * bt_size;  /* [step][2 o blocks][16 pairs][32] */
        configure_tiles();
#pragma omp for schedule(static)
        for (int64_t op = 0; op < m / 32; op++) {  /* outputs 32op to 32op + 31 */
            for (int64_t step = 0; step < steps; step++)
                for (int ob = 0; ob < 2; ob++) {
                    __m512i r[16];
                    for (int i = 0; i < 16; i++) {
                        const float *row = w + (op * 32 + ob * 16 + i) * k + step * 32;
                        r[i] = (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(row + 16), _mm512_loadu_ps(row));
                    }
                    if (w_pairs)  /* (stored, not streamed: read back soon, from the cache; 2x faster there) */
                        for (int i = 0; i < 16; i += 2) {
                            uint16_t *out = w_pairs + ((op * 32 + ob * 16 + i) / 2 * k + step * 32) * 2;
                            _mm512_store_si512((__m512i *)out, _mm512_permutex2var_epi16(r[i], pick_first, r[i + 1]));
                            _mm512_store_si512((__m512i *)(out + 32),
                                                _mm512_permutex2var_epi16(r[i], pick_second, r[i + 1]));
                        }
                    transpose16x16(r);
                    for (int j = 0; j < 16; j++)
                        _mm512_store_si512(bt + ((step * 2 + ob) * 16 + j) * 32, r[j]);
                }
            for (int64_t ip = 0; ip < pairs; ip++) {  /* images 32ip to 32ip + 31 */
                const uint16_t *a0 = 32 * ip < whole ? x + 32 * ip * k : tail, *a1 = a0 + 16 * k;
                _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
                for (int64_t step = 0; step < steps; step++)
                    multiply_32x32(a0 + step * 32, a1 + step * 32, k * 2, bt + step * 2 * 512,
                                   bt + (step * 2 + 1) * 512, 64);
                float c[32][32];  /* [image][o] */
                store_32x32(&c[0][0], 32);
                __m512 bias0 = load_bf16(b + op * 32), bias1 = load_bf16(b + op * 32 + 16);
                for (int i = 0; i < 32 && 32 * ip + i < n; i++) {
                    __m512 lo = _mm512_add_ps(_mm512_loadu_ps(c[i]), bias0);
                    __m512 hi = _mm512_add_ps(_mm512_loadu_ps(c[i] + 16), bias1);
                    _mm512_storeu_si512(y + (32 * ip + i) * m + op * 32, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
                }
            }
        }
        _tile_release();
    }
    free(tail);
    return 0;
}

/* ---- a linear layer's input gradient on AMX (model.Net's fc1) ---------------------------------------------
 * gx[i][c] = bf16(sum over o of gy[i][o] * w[o][c]) for gy bf16 [n][m] and the weight in bf16 as linear_fwd_bf16
 * wrote it, in pairs of outputs (w_pairs [m / 2][k][2], 64-byte aligned: AMX's B tiles as they lie); k and m
 * multiples of 32. A tiles: gy, copied to be zero-padded to whole tiles of 32 images. The sums over m in one
 * tile: the same bits for any number of threads. */
int linear_dgrad_bf16(const uint16_t *gy, int64_t n, int64_t k, int64_t m, const uint16_t *w_pairs, uint16_t *gx,
                      int threads) {
    if (k % 32 || m % 32 || n < 1 || threads < 1 || (uintptr_t)w_pairs % 64 || !amx_permitted())
        return -1;
    int64_t pairs = (n + 31) / 32;  /* tiles of 32 images */
    uint16_t *a = aligned_alloc(64, (size_t)(pairs * 32 * m * 2));  /* gy, zero-padded to whole tiles */
    if (a == 0)
        return -1;
    memcpy(a, gy, (size_t)(n * m * 2));
    memset(a + n * m, 0, (size_t)((pairs * 32 - n) * m * 2));
#pragma omp parallel num_threads(threads)
    {
        configure_tiles();
#pragma omp for schedule(static)
        for (int64_t cp = 0; cp < k / 32; cp++)  /* columns 32cp to 32cp + 31 */
            for (int64_t ip = 0; ip < pairs; ip++) {  /* images 32ip to 32ip + 31 */
                const uint16_t *a0 = a + 32 * ip * m, *a1 = a0 + 16 * m;
                _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
                for (int64_t step = 0; step < m / 32; step++) {  /* outputs 32step to 32step + 31 */
                    const uint16_t *b0 = w_pairs + (step * 16 * k + cp * 32) * 2;
                    multiply_32x32(a0 + step * 32, a1 + step * 32, m * 2, b0, b0 + 32, k * 4);
                }
                float c[32][32];  /* [image][column] */
                store_32x32(&c[0][0], 32);
                for (int i = 0; i < 32 && 32 * ip + i < n; i++)
                    _mm512_storeu_si512(gx + (32 * ip + i) * k + cp * 32, (__m512i)_mm512_cvtne2ps_pbh(
                                            _mm512_loadu_ps(c[i] + 16), _mm512_loadu_ps(c[i])));
            }
        _tile_release();
    }
    free(a);
    return 0;
}

/* ---- a linear layer's weight and bias gradients on AMX (model.Net's fc1) -----------------------------------
 * gw[m][k] = sum over i of gy[i][m] * x[i][k] and gb[m] = sum of gy[i][m], in float32, for x bf16 [n][k] and gy bf16
 * [n][m] (row-major; k and m multiples of 32): a GEMM over the batch. A tiles: gy transposed, [m block][32 images]
 * (padded with zeros); B tiles: x in pairs of images (AMX's layout), 32 columns of k at a time. Each C tile sums the
 * whole batch and is stored straight into gw: no bf16 gradient and no cast pass after it (torch rounds fc1's weight
 * gradient to bf16, then casts it to float32: 0.4 ms of a 6.2 ms step). The sums are per column of gw, one thread
 * each: the same bits for any number of threads. */
int linear_wgrad_bf16(const uint16_t *x, const uint16_t *gy, int64_t n, int64_t k, int64_t m, float *gw, float *gb,
                      int threads) {
    if (k % 32 || m % 32 || n < 1 || threads < 1 || !amx_permitted())
        return -1;
    int64_t tiles = (n + 31) / 32;  /* of 32 images */
    uint16_t *a = aligned_alloc(64, (size_t)(m * tiles * 32 * 2));  /* [m block][image tile][16 m][32 images] */
    if (a == 0)
        return -1;
    for (int64_t mb = 0; mb < m / 16; mb++)
        for (int64_t t = 0; t < tiles; t++)
            for (int i = 0; i < 16; i++)
                for (int j = 0; j < 32; j++) {
                    int64_t image = t * 32 + j;
                    a[((mb * tiles + t) * 16 + i) * 32 + j] = image < n ? gy[image * m + mb * 16 + i] : 0;
                }
    for (int64_t o = 0; o < m; o++) {
        float sum = 0.f;
        for (int64_t i = 0; i < n; i++)
            sum += load1_bf16(gy[i * m + o]);
        gb[o] = sum;
    }
    const __m512i pick_first = interleave_picks(0), pick_second = interleave_picks(16);
    int failed = 0;
#pragma omp parallel num_threads(threads)
    {
        uint16_t *b = aligned_alloc(64, (size_t)(tiles * 2 * 512 * 2));  /* [image tile][16 columns][16 pairs][32] */
        if (b == 0) {
#pragma omp atomic write
            failed = 1;
        }
        configure_tiles();
#pragma omp for schedule(static)
        for (int64_t kb = 0; kb < k / 32; kb++) {
            if (b == 0)
                continue;
            const __m512i zero = _mm512_setzero_si512();
            for (int64_t r = 0; r < tiles * 16; r++) {  /* images 2r and 2r + 1 */
                __m512i r0 = 2 * r < n ? _mm512_loadu_si512(x + 2 * r * k + kb * 32) : zero;
                __m512i r1 = 2 * r + 1 < n ? _mm512_loadu_si512(x + (2 * r + 1) * k + kb * 32) : zero;
                _mm512_store_si512(b + ((r / 16) * 2 * 16 + r % 16) * 32,
                                   _mm512_permutex2var_epi16(r0, pick_first, r1));
                _mm512_store_si512(b + (((r / 16) * 2 + 1) * 16 + r % 16) * 32,
                                   _mm512_permutex2var_epi16(r0, pick_second, r1));
            }
            for (int64_t mp = 0; mp < m / 32; mp++) {  /* m blocks 2mp and 2mp + 1 */
                const uint16_t *a0 = a + 2 * mp * tiles * 512, *a1 = a0 + tiles * 512;
                _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
                for (int64_t t = 0; t < tiles; t++)
                    multiply_32x32(a0 + t * 512, a1 + t * 512, 64, b + t * 2 * 512, b + (t * 2 + 1) * 512, 64);
                store_32x32(gw + 2 * mp * 16 * k + kb * 32, k);
            }
        }
        _tile_release();
        free(b);
    }
    free(a);
    return failed ? -1 : 0;
}
#else
int amx_permitted(void) { return 0; }
int conv2_wgrad_bf16(const uint16_t *x, const uint16_t *go, int64_t n, float *gw, int64_t so, int64_t sc,
                     int64_t sh, int64_t sw, float *gb, int threads) {
    (void)x; (void)go; (void)n; (void)gw; (void)so; (void)sc; (void)sh; (void)sw; (void)gb; (void)threads;
    return -1;
}
int linear_wgrad_bf16(const uint16_t *x, const uint16_t *gy, int64_t n, int64_t k, int64_t m, float *gw, float *gb,
                      int threads) {
    (void)x; (void)gy; (void)n; (void)k; (void)m; (void)gw; (void)gb; (void)threads;
    return -1;
}
int linear_fwd_bf16(const uint16_t *x, int64_t n, int64_t k, int64_t m, const float *w, const uint16_t *b,
                    uint16_t *y, uint16_t *w_pairs, int threads) {
    (void)x; (void)n; (void)k; (void)m; (void)w; (void)b; (void)y; (void)w_pairs; (void)threads;
    return -1;
}
int linear_dgrad_bf16(const uint16_t *gy, int64_t n, int64_t k, int64_t m, const uint16_t *w_pairs, uint16_t *gx,
                      int threads) {
    (void)gy; (void)n; (void)k; (void)m; (void)w_pairs; (void)gx; (void)threads;
    return -1;
}
#endif
