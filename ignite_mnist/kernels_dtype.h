/* Included by kernels.c once per dtype (T, RAW, TRANSPOSE, STORE_HEAD, LOAD_HEAD, NAME, LOAD, STORE, ROUND).
 *
 * pool_fwd, pool_bwd: x and gx [N, H, W, C] (channels_last); code and keep_bytes [N, H/2, W/2, C] (the bytes as
 * model.Dropout lays them on a channels_last tensor); y and gy [N, C, H/2, W/2] (plain, as fc1 reads them: each row
 * of W/2 outputs goes through a small tile, transposed there VLEN x VLEN in registers); H and W even, C a multiple of
 * VLEN.
 *
 * Forward, as model.Net computes it eagerly: y = dropout(relu(max_pool2d(x, 2))), where max-pool keeps the first
 * maximum of each window in scan order unless a NaN comes (aten's rule), ReLU passes NaN, and dropout keeps an
 * element whose byte is below keep_below and multiplies it by keep_value (dropout's mask, already in x's dtype).
 * Signed zeros come out as the eager operators make them, NaN where they make NaN (the tests compare bits).
 * code records, per output, the window position of the maximum (bits 0-1), whether dropout kept it (bit 2) and
 * whether ReLU passes its gradient (bit 3: not relu(m) <= 0, as threshold_backward decides). */
void NAME(pool_fwd)(const T *x, const uint8_t *keep_bytes, int keep_below, float keep_value, int64_t N, int64_t H,
               int64_t W, int64_t C, T *y, uint8_t *code, int threads) {
    const int64_t OH = H / 2, OW = W / 2;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t row = 0; row < N * OH; row++) {  /* (n, oh) */
        const int64_t n = row / OH, oh = row % OH;
        T tile[OW * C];  /* the row's outputs [OW, C], then written to y's plain layout */
        for (int64_t ow = 0; ow < OW; ow++) {
            const T *x0 = x + ((n * H + 2 * oh) * W + 2 * ow) * C, *x1 = x0 + W * C;
            const int64_t o = (row * OW + ow) * C;
            for (int64_t c = 0; c < C; c += VLEN) {
                vf v1 = LOAD(x0 + C + c), v2 = LOAD(x1 + c), v3 = LOAD(x1 + C + c);
                vf m = LOAD(x0 + c);
                vi k = (vi){0};
                vi b = (v1 > m) | (v1 != v1); m = SEL(b, v1, m); k = (b & 1) | (k & ~b);
                b = (v2 > m) | (v2 != v2);    m = SEL(b, v2, m); k = (b & 2) | (k & ~b);
                b = (v3 > m) | (v3 != v3);    m = SEL(b, v3, m); k = (b & 3) | (k & ~b);
                vf r = SEL(m < 0.0f, (vf){0}, m);  /* relu: NaN and -0.0 pass, as in aten */
                k |= ~(r <= 0.0f) & 8;
                vb kept; memcpy(&kept, keep_bytes + o + c, sizeof kept);
                vi keep = widen_bytes(kept) < keep_below;
                r = r * SEL(keep, (vf){0} + keep_value, (vf){0});
                k |= keep & 4;
                STORE(tile + ow * C + c, r);
                vb kb = narrow_to_bytes(k);
                memcpy(code + o + c, &kb, sizeof kb);
            }
        }
        for (int64_t ow0 = 0; ow0 < OW; ow0 += VLEN) {  /* VLEN x VLEN blocks of the tile, transposed */
            const int count = OW - ow0 < VLEN ? (int)(OW - ow0) : VLEN;
            for (int64_t c = 0; c < C; c += VLEN) {
                RAW r[VLEN];
                for (int i = 0; i < VLEN; i++)  /* (rows past count: any row of the tile, their values unused) */
                    memcpy(&r[i], tile + (ow0 + (i < count ? i : 0)) * C + c, sizeof r[i]);
                TRANSPOSE(r);
                for (int j = 0; j < VLEN; j++) STORE_HEAD(y + ((n * C + c + j) * OH + oh) * OW + ow0, r[j], count);
            }
        }
    }
}

/* The gradient of x from y's: dropout's (gy * mask, rounded to T), ReLU's, then max-pool's (to the window's
 * maximum; zero elsewhere). */
void NAME(pool_bwd)(const T *gy, const uint8_t *code, float keep_value, int64_t N, int64_t H, int64_t W,
               int64_t C, T *gx, int threads) {
    const int64_t OH = H / 2, OW = W / 2;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t row = 0; row < N * OH; row++) {
        const int64_t n = row / OH, oh = row % OH;
        T tile[OW * C];  /* the row's output gradients [OW, C], from gy's plain layout */
        for (int64_t ow0 = 0; ow0 < OW; ow0 += VLEN) {  /* VLEN x VLEN blocks of gy, transposed */
            const int count = OW - ow0 < VLEN ? (int)(OW - ow0) : VLEN;
            for (int64_t c = 0; c < C; c += VLEN) {
                RAW r[VLEN];
                for (int j = 0; j < VLEN; j++) r[j] = LOAD_HEAD(gy + ((n * C + c + j) * OH + oh) * OW + ow0, count);
                TRANSPOSE(r);
                for (int64_t i = 0; i < count; i++) memcpy(tile + (ow0 + i) * C + c, &r[i], sizeof r[i]);
            }
        }
        for (int64_t ow = 0; ow < OW; ow++) {
            T *g0 = gx + ((n * H + 2 * oh) * W + 2 * ow) * C, *g1 = g0 + W * C;
            const int64_t o = (row * OW + ow) * C;
            for (int64_t c = 0; c < C; c += VLEN) {
                vb kb; memcpy(&kb, code + o + c, sizeof kb);
                vi k = widen_bytes(kb);
                vf g = LOAD(tile + ow * C + c);
                g = ROUND(g * SEL((k & 4) != 0, (vf){0} + keep_value, (vf){0}));
                g = SEL((k & 8) != 0, g, (vf){0}) + 0.0f;  /* + 0: max-pool's backward adds into zeros (-0 to +0) */
                RAW bits = EXACT_BITS(g), zero = {0};  /* (g is a value of T already: its bits, without rounding) */
                vi at = k & 3;
                RAW b0 = SEL_RAW(at == 0, bits, zero), b1 = SEL_RAW(at == 1, bits, zero);
                RAW b2 = SEL_RAW(at == 2, bits, zero), b3 = SEL_RAW(at == 3, bits, zero);
                memcpy(g0 + c, &b0, sizeof b0);
                memcpy(g0 + C + c, &b1, sizeof b1);
                memcpy(g1 + c, &b2, sizeof b2);
                memcpy(g1 + C + c, &b3, sizeof b3);
            }
        }
    }
}

/* conv1's weight and bias gradients through its ReLU, for a 3x3 convolution of one input channel (stride 1, no
 * padding): x [N, H, W]; out (the ReLU's output) and g (its gradient) [N, H-2, W-2, C] channels_last. The ReLU's
 * backward as threshold_backward decides it (NaN passes), then per sample and VLEN channels the ten sums (nine taps
 * and the bias) in float, positions in order, into partial [N, 10, C]; the samples are then added in order into
 * gw [C, 9] and gb [C]: the same result for any number of threads. */
__attribute__((optimize("fp-contract=fast")))  /* fused multiply-adds: no eager operator to match bit for bit */
void NAME(conv1_relu_bwd)(const T *x, const T *out, const T *g, int64_t N, int64_t H, int64_t W, int64_t C,
                          float *partial, float *gw, float *gb, int threads) {
    const int64_t OH = H - 2, OW = W - 2;
#pragma omp parallel num_threads(threads)
    {
#pragma omp for schedule(static)
        for (int64_t task = 0; task < N * (C / VLEN); task++) {
            const int64_t n = task / (C / VLEN), c = task % (C / VLEN) * VLEN;
            float xn[H * W];  /* the sample as float: each tap a broadcast from memory */
            for (int64_t i = 0; i < H * W; i++) xn[i] = LOAD1(x[n * H * W + i]);
            vf acc[10];
            for (int k = 0; k < 10; k++) acc[k] = (vf){0};
            for (int64_t oh = 0; oh < OH; oh++) {
                for (int64_t ow = 0; ow < OW; ow++) {
                    const int64_t o = ((n * OH + oh) * OW + ow) * C + c;
                    vf gv = SEL(out_passes(LOAD(out + o)), LOAD(g + o), (vf){0});
                    for (int kh = 0; kh < 3; kh++)
                        for (int kw = 0; kw < 3; kw++)
                            acc[kh * 3 + kw] += gv * xn[(oh + kh) * W + ow + kw];
                    acc[9] += gv;
                }
            }
            for (int k = 0; k < 10; k++) memcpy(partial + (n * 10 + k) * C + c, &acc[k], sizeof acc[k]);
        }
#pragma omp for schedule(static)
        for (int64_t c = 0; c < C; c++) {
            for (int k = 0; k < 10; k++) {
                float sum = 0.0f;
                for (int64_t n = 0; n < N; n++) sum += partial[(n * 10 + k) * C + c];
                if (k < 9) gw[c * 9 + k] = sum; else gb[c] = sum;
            }
        }
    }
}

/* The largest magnitude among n values (dense), +inf if one is NaN: whether a convolution's sums stay finite. */
float NAME(max_abs)(const T *p, int64_t n) {
    vf m = {0};
    vi nan = {0};
    int64_t i = 0;
    for (; i + VLEN <= n; i += VLEN) {
        vf v = LOAD(p + i);
        vf a = (vf)((vi)v & 0x7FFFFFFF);
        nan |= v != v;
        m = SEL(a > m, a, m);
    }
    float largest = 0.0f;
    int any_nan = 0;
    for (int j = 0; j < VLEN; j++) {
        largest = m[j] > largest ? m[j] : largest;
        any_nan |= nan[j] != 0;
    }
    for (; i < n; i++) {
        float v = LOAD1(p[i]);
        any_nan |= v != v;
        largest = fabsf(v) > largest ? fabsf(v) : largest;
    }
    return any_nan ? INFINITY : largest;
}
