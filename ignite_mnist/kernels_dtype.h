/* Included by kernels.c once per dtype (T, NAME, LOAD, STORE, ROUND). All tensors channels_last but keep_bytes:
 * x and gx [N, H, W, C]; y, gy and code [N, H/2, W/2, C]; keep_bytes [N, C, H/2, W/2] (plain, as the eager
 * dropout draws them); H and W even, C a multiple of VLEN.
 *
 * Forward, as model.Net computes it eagerly: y = dropout(relu(max_pool2d(x, 2))), where max-pool keeps the first
 * maximum of each window in scan order unless a NaN comes (aten's rule), ReLU passes NaN, and dropout keeps an
 * element whose byte is below keep_below and multiplies it by keep_value (dropout's mask, already in x's dtype).
 * Signed zeros come out as the eager operators make them, NaN where they make NaN (the tests compare bits).
 * code records, per output, the window position of the maximum (bits 0-1), whether dropout kept it (bit 2) and
 * whether ReLU passes its gradient (bit 3: not relu(m) <= 0, as threshold_backward decides).
 * keep_bytes NULL: no dropout (code bit 2 set). */
void NAME(pool_fwd)(const T *x, const uint8_t *keep_bytes, int keep_below, float keep_value, int64_t N, int64_t H,
               int64_t W, int64_t C, T *y, uint8_t *code, int threads) {
    const int64_t OH = H / 2, OW = W / 2;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t row = 0; row < N * OH; row++) {  /* (n, oh) */
        const int64_t n = row / OH, oh = row % OH;
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
                if (keep_bytes) {
                    const uint8_t *b = keep_bytes + ((n * C + c) * OH + oh) * OW + ow;  /* plain: a channel apart */
                    vi keep;
                    for (int j = 0; j < VLEN; j++) keep[j] = b[j * OH * OW];
                    keep = keep < keep_below;
                    r = r * SEL(keep, (vf){0} + keep_value, (vf){0});
                    k |= keep & 4;
                } else {
                    k |= 4;
                }
                STORE(y + o + c, r);
                vb kb = __builtin_convertvector(k, vb);
                memcpy(code + o + c, &kb, sizeof kb);
            }
        }
    }
}

/* The gradient of x from y's: dropout's (gy * mask, rounded to T), ReLU's, then max-pool's (to the window's
 * maximum; zero elsewhere). */
void NAME(pool_bwd)(const T *gy, const uint8_t *code, int dropout, float keep_value, int64_t N, int64_t H, int64_t W,
               int64_t C, T *gx, int threads) {
    const int64_t OH = H / 2, OW = W / 2;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t row = 0; row < N * OH; row++) {
        const int64_t n = row / OH, oh = row % OH;
        for (int64_t ow = 0; ow < OW; ow++) {
            T *g0 = gx + ((n * H + 2 * oh) * W + 2 * ow) * C, *g1 = g0 + W * C;
            const int64_t o = (row * OW + ow) * C;
            for (int64_t c = 0; c < C; c += VLEN) {
                vb kb; memcpy(&kb, code + o + c, sizeof kb);
                vi k = __builtin_convertvector(kb, vi);
                vf g = LOAD(gy + o + c);
                if (dropout) g = ROUND(g * SEL((k & 4) != 0, (vf){0} + keep_value, (vf){0}));
                g = SEL((k & 8) != 0, g, (vf){0}) + 0.0f;  /* + 0: max-pool's backward adds into zeros (-0 to +0) */
                vi at = k & 3;
                STORE(g0 + c, SEL(at == 0, g, (vf){0}));
                STORE(g0 + C + c, SEL(at == 1, g, (vf){0}));
                STORE(g1 + c, SEL(at == 2, g, (vf){0}));
                STORE(g1 + C + c, SEL(at == 3, g, (vf){0}));
            }
        }
    }
}

/* ReLU's backward from its output: gx = out <= 0 ? 0 : g (threshold_backward's rule: NaN passes the gradient).
 * g, out and gx in the same layout, n elements. */
void NAME(relu_bwd)(const T *g, const T *out, int64_t n, T *gx, int threads) {
    const int64_t vectors = n / VLEN;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t v = 0; v < vectors; v++) {
        const int64_t i = v * VLEN;
        STORE(gx + i, SEL(out_passes(LOAD(out + i)), LOAD(g + i), (vf){0}));
    }
    for (int64_t i = vectors * VLEN; i < n; i++) gx[i] = LOAD1(out[i]) <= 0.0f ? (T)0 : g[i];
}
