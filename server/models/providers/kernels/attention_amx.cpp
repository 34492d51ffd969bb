/* Fused attention, out = softmax(scale * q @ k^T) @ v, on Intel AMX (bf16 tiles, fp32 sums).
 *
 * Why: at 4096 tokens an SD 1.5 self-attention layer holds 8 x 4096 x 4096 scores. OpenVINO's
 * fused MHA and torch's SDPA both spend most of such a layer in the softmax (measured on an AMX
 * Xeon: 61-71 ms and 50 ms per layer on 2 cores, while its two matmuls need ~10 ms at the bf16
 * peak). Here each block of 16 query rows keeps its scores in L2 (row maxima taken while they
 * are in L1), the exponential is five vector instructions (a degree-3 fit of 2^frac, error
 * < 7.5e-5, far below the bf16 rounding of the probabilities that the AMX product reads), and
 * nothing of size Lq x Lk ever leaves the core: 20 ms per such layer.
 *
 * Layouts (all float32, contiguous): q [batch, lq, d]; k [batch, lk, d], or [batch, d, lk]
 * when k_dk is 1; v [batch, lk, dv]; out [batch, lq, dv]. d and dv <= 64.
 * Threads: TBB, the runtime OpenVINO ships (headers and libtbb in its wheel), so that inside a
 * graph the work goes to the inference's own idle workers. Build: fused_attention.build() (AMX,
 * AVX-512 flags); call only where the CPU reports amx_bf16 (the Python side checks).
 */
#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <tbb/blocked_range.h>
#include <tbb/parallel_for.h>
#include <tbb/task_arena.h>

#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18
#define TILE_ELEMS 512 /* one 16 x 32 bf16 tile */

typedef struct {
    uint8_t palette_id, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} tile_config;

/* Linux grants AMX state per process on request; 0 when granted. */
extern "C" int attn_amx_init(void) { return syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) ? -1 : 0; }

/* Tiles 0-3: fp32 accumulators; 4: A (query dims 0-31, or probabilities); 5: A, the query's
 * remaining k1 dims; 6: B (32 dims or keys); 7: B, the keys' remaining k1 dims. Tile 5 and 7 hold
 * only what d needs: at d = 40 the second step reads 8 dims, not 32 (a quarter of the bytes). */
static void tiles_on(int k1) {
    tile_config c;
    memset(&c, 0, sizeof c);
    c.palette_id = 1;
    for (int i = 0; i < 8; i++) { c.colsb[i] = 64; c.rows[i] = 16; }
    if (k1) { c.colsb[5] = (uint16_t)(2 * k1); c.rows[7] = (uint8_t)(k1 / 2); }
    _tile_loadconfig(&c);
}

static inline uint16_t bf16(float f) { /* round to nearest even */
    uint32_t u;
    memcpy(&u, &f, 4);
    return (uint16_t)((u + 0x7FFF + ((u >> 16) & 1)) >> 16);
}

typedef struct {
    const float *q, *k, *v;
    float *out;
    int batch, lq, lk, d, dv, k_dk, nks, nnt, lkp, ss, ps, k1;
    float a; /* scale * log2(e) */
    uint16_t *kp, *vp;
} job;

/* Lanes j..j+15 of a run of lk values: which of the 16 exist. */
static inline __mmask16 valid(int j, int lk) {
    if (j + 16 <= lk) return 0xFFFF;
    if (j >= lk) return 0;
    return (__mmask16)((1u << (lk - j)) - 1);
}

/* Two rows of 16 floats (masked: n valid, the rest 0) as 16 interleaved bf16 pairs,
 * a0 b0 a1 b1 ...: one row of a B tile. */
static inline void pair_row(uint16_t *dst, const float *a, const float *b, int n) {
    const __mmask16 m = valid(0, n);
    __m512 va = a ? _mm512_maskz_loadu_ps(m, a) : _mm512_setzero_ps();
    __m512 vb = b ? _mm512_maskz_loadu_ps(m, b) : _mm512_setzero_ps();
    const __m512i mix = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8,
                                         23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    __m512i ab = (__m512i)_mm512_cvtne2ps_pbh(vb, va); /* a0..a15 b0..b15 */
    _mm512_storeu_si512((void *)dst, _mm512_permutexvar_epi16(mix, ab));
}

/* K as B tiles of q @ k^T: [batch][lkp/16 key blocks][nks][16 dim pairs][16 keys x 2]. */
static void pack_k(const job *j, int b) {
    uint16_t *dst = j->kp + (size_t)b * (j->lkp / 16) * j->nks * TILE_ELEMS;
    const float *k = j->k + (size_t)b * j->lk * j->d;
    for (int kb = 0; kb < j->lkp / 16; kb++)
        for (int ks = 0; ks < j->nks; ks++, dst += TILE_ELEMS)
            for (int r = 0; r < 16; r++) {
                const int d0 = ks * 32 + 2 * r, key = kb * 16;
                if (j->k_dk) { /* [d, lk]: a tile row pairs two dims' runs of 16 keys */
                    pair_row(dst + r * 32, d0 < j->d ? k + (size_t)d0 * j->lk + key : nullptr,
                             d0 + 1 < j->d ? k + (size_t)(d0 + 1) * j->lk + key : nullptr, j->lk - key);
                    continue;
                }
                for (int c = 0; c < 16; c++) /* [lk, d]: a transpose; not what diffusers exports */
                    for (int e = 0; e < 2; e++) {
                        float x = (key + c < j->lk && d0 + e < j->d) ? k[(size_t)(key + c) * j->d + d0 + e] : 0.f;
                        dst[r * 32 + 2 * c + e] = bf16(x);
                    }
            }
}

/* V as B tiles of p @ v: [batch][lkp/32 key chunks][nnt][16 key pairs][16 dims x 2]. */
static void pack_v(const job *j, int b) {
    uint16_t *dst = j->vp + (size_t)b * (j->lkp / 32) * j->nnt * TILE_ELEMS;
    const float *v = j->v + (size_t)b * j->lk * j->dv;
    for (int kc = 0; kc < j->lkp / 32; kc++)
        for (int n = 0; n < j->nnt; n++, dst += TILE_ELEMS)
            for (int r = 0; r < 16; r++) {
                const int key = kc * 32 + 2 * r, dim = n * 16;
                pair_row(dst + r * 32, key < j->lk ? v + (size_t)key * j->dv + dim : nullptr,
                         key + 1 < j->lk ? v + (size_t)(key + 1) * j->dv + dim : nullptr, j->dv - dim);
            }
}

/* 2^t = p(f) * 2^floor(t) with f = t - floor(t) in [0, 1) (vreduceps) and p a degree-3 fit of
 * 2^f (relative error < 7.5e-5, far below the 2e-3 of the bf16 rounding that follows); 0 for t
 * below -149. Five vector instructions per 16 values. */
static inline __m512 exp2_neg(__m512 t) {
    __m512 f = _mm512_reduce_ps(t, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
    __m512 p = _mm512_set1_ps(7.80245168e-2f);
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.26067164e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.95833538e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.99925219e-1f));
    return _mm512_scalef_ps(p, t);
}

/* One block of 16 query rows of one batch item. S: 16 rows of ss fp32, P: 16 rows of ps bf16;
 * both strides are lkp plus one cache line, so that the 16 rows of a tile do not share one L1 set. */
static void q_block(const job *j, int b, int qb, uint16_t *qt, float *S, uint16_t *P, float *O) {
    const int lkp = j->lkp, nks = j->nks, nnt = j->nnt, ss = j->ss, ps = j->ps;
    const float *q = j->q + ((size_t)b * j->lq + (size_t)qb * 16) * j->d;
    int rows = j->lq - qb * 16 < 16 ? j->lq - qb * 16 : 16;
    for (int r = 0; r < 16; r++)
        for (int c = 0; c < 64; c += 32) {
            __m512 lo = _mm512_setzero_ps(), hi = _mm512_setzero_ps();
            if (r < rows) {
                lo = _mm512_maskz_loadu_ps(valid(c, j->d), q + (size_t)r * j->d + c);
                hi = _mm512_maskz_loadu_ps(valid(c + 16, j->d), q + (size_t)r * j->d + c + 16);
            }
            _mm512_storeu_si512((void *)(qt + r * 64 + c), (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
        }

    /* 1. scores: 16 x 64 keys per step, four accumulator tiles */
    _tile_loadd(4, qt, 128);
    if (nks > 1) _tile_loadd(5, qt + 32, 128);
    const uint16_t *kp = j->kp + (size_t)b * (lkp / 16) * nks * TILE_ELEMS;
    const __m512 vneg = _mm512_set1_ps(-3.0e38f);
    __m512 rmax[16];
    for (int r = 0; r < 16; r++) rmax[r] = vneg;
    const size_t kstride = (size_t)nks * TILE_ELEMS;
    for (int kb = 0; kb < lkp / 16; kb += 4) {
        const uint16_t *t = kp + kb * kstride;
        _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
        /* per accumulator: dims 0-31 through tile 6, the rest through tile 7, so that each
         * B load waits on the product two steps back, not on the one just issued */
        if (nks > 1) {
            _tile_loadd(6, t, 64); _tile_dpbf16ps(0, 4, 6);
            _tile_loadd(7, t + TILE_ELEMS, 64); _tile_dpbf16ps(0, 5, 7);
            _tile_loadd(6, t + kstride, 64); _tile_dpbf16ps(1, 4, 6);
            _tile_loadd(7, t + kstride + TILE_ELEMS, 64); _tile_dpbf16ps(1, 5, 7);
            _tile_loadd(6, t + 2 * kstride, 64); _tile_dpbf16ps(2, 4, 6);
            _tile_loadd(7, t + 2 * kstride + TILE_ELEMS, 64); _tile_dpbf16ps(2, 5, 7);
            _tile_loadd(6, t + 3 * kstride, 64); _tile_dpbf16ps(3, 4, 6);
            _tile_loadd(7, t + 3 * kstride + TILE_ELEMS, 64); _tile_dpbf16ps(3, 5, 7);
        } else { /* tile 7 is full-size when k1 is 0 */
            _tile_loadd(6, t, 64); _tile_dpbf16ps(0, 4, 6);
            _tile_loadd(7, t + kstride, 64); _tile_dpbf16ps(1, 4, 7);
            _tile_loadd(6, t + 2 * kstride, 64); _tile_dpbf16ps(2, 4, 6);
            _tile_loadd(7, t + 3 * kstride, 64); _tile_dpbf16ps(3, 4, 7);
        }
        float *s = S + kb * 16;
        _tile_stored(0, s, ss * 4); _tile_stored(1, s + 16, ss * 4);
        _tile_stored(2, s + 32, ss * 4); _tile_stored(3, s + 48, ss * 4);
        /* row maxima while the 16 x 64 scores are in L1 (a pass over L2 later otherwise) */
        const int c0 = kb * 16;
        for (int r = 0; r < 16; r++) {
            const float *x = s + (size_t)r * ss;
            __m512 m = _mm512_max_ps(_mm512_mask_blend_ps(valid(c0, j->lk), vneg, _mm512_loadu_ps(x)),
                                     _mm512_mask_blend_ps(valid(c0 + 16, j->lk), vneg, _mm512_loadu_ps(x + 16)));
            m = _mm512_max_ps(m, _mm512_max_ps(_mm512_mask_blend_ps(valid(c0 + 32, j->lk), vneg, _mm512_loadu_ps(x + 32)),
                                               _mm512_mask_blend_ps(valid(c0 + 48, j->lk), vneg, _mm512_loadu_ps(x + 48))));
            rmax[r] = _mm512_max_ps(rmax[r], m);
        }
    }

    /* 2. softmax numerators in bf16; padded keys get 0 */
    float inv[16];
    for (int r = 0; r < 16; r++) {
        const float *s = S + (size_t)r * ss;
        float m = _mm512_reduce_max_ps(rmax[r]);
        __m512 va = _mm512_set1_ps(j->a), vb = _mm512_set1_ps(-m * j->a), sum = _mm512_setzero_ps();
        uint16_t *p = P + (size_t)r * ps;
        int c = 0;
        for (; c + 32 <= j->lk; c += 32) {
            __m512 e0 = exp2_neg(_mm512_fmadd_ps(_mm512_loadu_ps(s + c), va, vb));
            __m512 e1 = exp2_neg(_mm512_fmadd_ps(_mm512_loadu_ps(s + c + 16), va, vb));
            sum = _mm512_add_ps(sum, _mm512_add_ps(e0, e1));
            _mm512_storeu_si512((void *)(p + c), (__m512i)_mm512_cvtne2ps_pbh(e1, e0));
        }
        for (; c < lkp; c += 32) {
            __m512 e0 = _mm512_maskz_mov_ps(valid(c, j->lk), exp2_neg(_mm512_fmadd_ps(_mm512_loadu_ps(s + c), va, vb)));
            __m512 e1 = _mm512_maskz_mov_ps(valid(c + 16, j->lk),
                                            exp2_neg(_mm512_fmadd_ps(_mm512_loadu_ps(s + c + 16), va, vb)));
            sum = _mm512_add_ps(sum, _mm512_add_ps(e0, e1));
            _mm512_storeu_si512((void *)(p + c), (__m512i)_mm512_cvtne2ps_pbh(e1, e0));
        }
        inv[r] = 1.f / _mm512_reduce_add_ps(sum);
    }

    /* 3. p @ v: 32 keys per step, one accumulator tile per 16 output dims */
    const uint16_t *vp = j->vp + (size_t)b * (lkp / 32) * nnt * TILE_ELEMS;
    _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
    for (int kc = 0; kc < lkp / 32; kc++) {
        const uint16_t *t = vp + (size_t)kc * nnt * TILE_ELEMS;
        _tile_loadd(4, P + kc * 32, ps * 2);
        /* B alternates between tiles 6 and 3 (an accumulator only when nnt is 4) */
        _tile_loadd(6, t, 64); _tile_dpbf16ps(0, 4, 6);
        if (nnt == 4) {
            _tile_loadd(6, t + TILE_ELEMS, 64); _tile_dpbf16ps(1, 4, 6);
            _tile_loadd(6, t + 2 * TILE_ELEMS, 64); _tile_dpbf16ps(2, 4, 6);
            _tile_loadd(6, t + 3 * TILE_ELEMS, 64); _tile_dpbf16ps(3, 4, 6);
        } else {
            if (nnt > 1) { _tile_loadd(3, t + TILE_ELEMS, 64); _tile_dpbf16ps(1, 4, 3); }
            if (nnt > 2) { _tile_loadd(6, t + 2 * TILE_ELEMS, 64); _tile_dpbf16ps(2, 4, 6); }
        }
    }
    _tile_stored(0, O, 256); _tile_stored(1, O + 16, 256);
    _tile_stored(2, O + 32, 256);
    if (nnt == 4) _tile_stored(3, O + 48, 256);
    float *out = j->out + ((size_t)b * j->lq + (size_t)qb * 16) * j->dv;
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < j->dv; c++) out[(size_t)r * j->dv + c] = O[r * 64 + c] * inv[r];
}

/* The calling thread's own scratch, made once per thread. */
struct scratch {
    uint16_t *qt = static_cast<uint16_t *>(aligned_alloc(64, 16 * 64 * 2));
    float *O = static_cast<float *>(aligned_alloc(64, 16 * 64 * 4));
    float *S = nullptr;
    uint16_t *P = nullptr;
    size_t cap = 0; /* keys S and P hold per row */
    void fit(int lkp) {
        if ((size_t)lkp > cap) {
            free(S); free(P);
            cap = lkp;
            S = static_cast<float *>(aligned_alloc(64, 16 * (cap + 16) * 4));
            P = static_cast<uint16_t *>(aligned_alloc(64, 16 * (cap + 32) * 2));
        }
    }
    ~scratch() { free(qt); free(O); free(S); free(P); }
};
static thread_local scratch tls;

/* Both phases split over the caller's TBB arena: inside OpenVINO that is the arena of the
 * inference (its workers idle while this node runs); ``threads`` > 0 makes one of that size. */
template <typename F> static void split(int n, int threads, const F &body) {
    auto run = [&] {
        tbb::parallel_for(tbb::blocked_range<int>(0, n), [&](const tbb::blocked_range<int> &r) {
            for (int i = r.begin(); i < r.end(); i++) body(i);
        });
    };
    if (threads > 0) {
        tbb::task_arena arena(threads);
        arena.execute(run);
    } else {
        run();
    }
}

/* 0 on success; -1 when d or dv exceed 64 or threads is out of 0..256 (the caller falls back).
 * threads 0: the current TBB arena's workers. */
extern "C" int attn_amx(const float *q, const float *k, const float *v, float *out, int batch, int lq,
                        int lk, int d, int dv, int k_dk, float scale, int threads) {
    if (d < 1 || d > 64 || dv < 1 || dv > 64 || threads < 0 || threads > 256 || lk < 1 || lq < 1) return -1;
    job j = {q, k, v, out, batch, lq, lk, d, dv, k_dk, (d + 31) / 32, (dv + 15) / 16, (lk + 63) / 64 * 64,
             (lk + 63) / 64 * 64 + 16, (lk + 63) / 64 * 64 + 32, d > 32 ? (d - 31) / 2 * 2 : 0,
             scale * 1.4426950408889634f, nullptr, nullptr};
    j.kp = static_cast<uint16_t *>(aligned_alloc(64, (size_t)batch * j.lkp * j.nks * 32 * 2));
    j.vp = static_cast<uint16_t *>(aligned_alloc(64, (size_t)batch * j.lkp * j.nnt * 16 * 2));
    split(batch, threads, [&](int b) { pack_k(&j, b); pack_v(&j, b); });
    const int nqb = (lq + 15) / 16;
    /* 16 query blocks per task: a task's blocks share their head's packed keys and values */
    const int per = 16, tasks = (batch * nqb + per - 1) / per;
    split(tasks, threads, [&](int t) {
        /* the thread's tile configuration belongs to the runtime's kernels (oneDNN's AMX
         * convolutions run on these threads): put it back as it was */
        tile_config theirs;
        _tile_storeconfig(&theirs);
        tls.fit(j.lkp);
        tiles_on(j.k1);
        for (int i = t * per; i < (t + 1) * per && i < batch * nqb; i++)
            q_block(&j, i / nqb, i % nqb, tls.qt, tls.S, tls.P, tls.O);
        if (theirs.palette_id) _tile_loadconfig(&theirs);
        else _tile_release();
    });
    free(j.kp);
    free(j.vp);
    return 0;
}
