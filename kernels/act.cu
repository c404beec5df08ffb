/* act.cu: activations (relu, leaky relu, tanh) forward and backward, and the conv epilogue
 * y = act(conv + bias) that runs right after a cuDNN convolution, in place on its output or
 * from a packed temporary into a channel view (the decoders' concat-free skips).
 * Forward math follows the ref backend (tanh from the fp32 value, rounded once on store);
 * backward uses the forward output y as the contract says. Stateless launchers.
 * Tested by tests/unit/test_ops.c (act_fwd/act_bwd and every conv case with bias/act). */
#include "cu_common.cuh"

static __global__ void k_bias_act(const void *x, int xdt, int xs, int xo, const void *bias, int bdt, int act,
                                  float alpha, void *y, int ydt, int ys, int yo, size_t count, int c) {
    CUK_FOR(i, count) {
        size_t pix = i / (size_t)c;
        int ch = (int)(i % (size_t)c);
        float v = cuk_ld(x, xdt, pix * (size_t)xs + (size_t)(xo + ch));
        if (bias) v += cuk_ld(bias, bdt, (size_t)ch);
        cuk_st(y, ydt, pix * (size_t)ys + (size_t)(yo + ch), cuk_act_f(act, alpha, v));
    }
}

static __global__ void k_act_bwd(int act, float alpha, const void *y, int ydt, const void *dy, int dydt, void *dx,
                                 int dxdt, size_t count) {
    CUK_FOR(i, count) {
        float yv = cuk_ld(y, ydt, i), g = cuk_ld(dy, dydt, i), d = g;
        if (act == 1)
            d = yv > 0.f ? g : 0.f;
        else if (act == 2)
            d = yv > 0.f ? g : alpha * g;
        else if (act == 3)
            d = g * (1.f - yv * yv);
        cuk_st(dx, dxdt, i, d);
    }
}

extern "C" int cuk_bias_act(const void *x, int xdt, int xs, int xo, const void *bias, int bdt, int act, float alpha,
                            void *y, int ydt, int ys, int yo, size_t rows, int c, cuk_stream s) {
    size_t count = rows * (size_t)c;
    CUK_LAUNCH(k_bias_act, cuk_blocks(count), CUK_THREADS, 0, s)(x, xdt, xs, xo, bias, bdt, act, alpha, y, ydt, ys, yo,
                                                                count, c);
    return cuk_last();
}

extern "C" int cuk_act_bwd(int act, float alpha, const void *y, int ydt, const void *dy, int dydt, void *dx,
                           int dxdt, size_t count, cuk_stream s) {
    CUK_LAUNCH(k_act_bwd, cuk_blocks(count), CUK_THREADS, 0, s)(act, alpha, y, ydt, dy, dydt, dx, dxdt, count);
    return cuk_last();
}
