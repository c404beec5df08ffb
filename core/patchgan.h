/* patchgan.h: the pix2pix PatchGAN discriminator (Isola et al. 2017; the reference
 * implementation's NLayerDiscriminator with BatchNorm), training mode only, written once
 * against the backend op table.
 *
 * Graph for n_layers = 3 (the 70x70 PatchGAN of DESIGN.md "Model"), all convs 4x4 pad 1:
 *   disc.0: conv s2 in_ch -> ndf, bias            -> LeakyReLU(0.2)
 *   disc.1: conv s2 ndf -> 2 ndf, no bias, BN     -> LeakyReLU(0.2)
 *   disc.2: conv s2 2 ndf -> 4 ndf, no bias, BN   -> LeakyReLU(0.2)
 *   disc.3: conv s1 4 ndf -> 8 ndf, no bias, BN   -> LeakyReLU(0.2)
 *   disc.4: conv s1 8 ndf -> 1, bias              (logits, one per 70x70 patch)
 * In general conv k (1 <= k < n_layers) is stride 2 with width ndf * min(2^k, 8), conv n_layers
 * is stride 1 with width ndf * min(2^n_layers, 8), and conv n_layers+1 outputs 1 channel.
 * A 256x256 input gives 30x30 logits; 64x64 gives 6x6.
 * Input: the condition and the color concatenated on channels: lab mode L + ab = 3 channels,
 * rgb mode RGB + RGB = 6.
 *
 * Tensor names (safetensors, our naming, layer order): disc.{k}.weight (out, in, 4, 4) for
 * every conv; disc.0.bias and disc.{n_layers+1}.bias (1-d); disc.{k}.bn.{weight, bias,
 * running_mean, running_var} for 1 <= k <= n_layers. Metadata keys disc_in_ch, disc_ndf,
 * disc_n_layers, disc_bn_eps describe the architecture (they sit beside the generator's keys
 * in a training checkpoint; cz_unet_create ignores the disc.* namespace).
 * Init as pix2pix (`init_type normal`, gain 0.02): conv weights N(0, 0.02), biases 0, BN gamma
 * N(1, 0.02), beta 0, running mean 0 / var 1.
 *
 * Training mode: BatchNorm uses batch statistics (biased variance), updates the running
 * statistics with momentum 0.1 on every forward (as torch does on every D call), and saves mean
 * and 1/std for backward. Backward gives d(input) (optional) and parameter gradients (none,
 * overwrite or accumulate), so the three D evaluations of a pix2pix step can share one model.
 * Activations and gradients are planned once per (max_batch, h, w); forward/backward allocate
 * nothing and accept any batch n <= max_batch.
 *
 * Threading: one thread at a time (the backend's owner). Tested by tests/unit/test_train.c
 * (shapes, parameter count, init) and tests/unit/test_train_golden.c (gradients vs PyTorch). */
#ifndef CZ_PATCHGAN_H
#define CZ_PATCHGAN_H

#include "backend.h"
#include "optim.h"
#include "safetensors.h"
#include "status.h"
#include "unet.h"

#define CZ_PATCHGAN_MAX_LAYERS 5 /* n_layers 1..5 */
#define CZ_PATCHGAN_MAX_CONVS (CZ_PATCHGAN_MAX_LAYERS + 2)
#define CZ_PATCHGAN_MAX_PARAMS (CZ_PATCHGAN_MAX_CONVS * 6)

typedef struct cz_patchgan_arch {
    int in_ch;    /* condition + color channels: 3 (lab) or 6 (rgb) */
    int ndf;      /* width of the first conv (64 in pix2pix) */
    int n_layers; /* 3 = the 70x70 PatchGAN */
    float bn_eps; /* 1e-5 */
} cz_patchgan_arch;

/* 70x70 PatchGAN (n_layers 3, eps 1e-5) for a color mode: in_ch 3 (lab) or 6 (rgb). */
cz_patchgan_arch cz_patchgan_arch_default(cz_color_mode mode, int ndf);
cz_status cz_patchgan_arch_validate(const cz_patchgan_arch *a);
/* Output channels and stride of conv k (0 .. n_layers+1). */
int cz_patchgan_width(const cz_patchgan_arch *a, int k);
int cz_patchgan_stride(const cz_patchgan_arch *a, int k);
/* Logit map size for an input side of `in` pixels (< 1: too small). */
int cz_patchgan_out_size(const cz_patchgan_arch *a, int in);
/* Specs of every tensor in layer order (running statistics included); returns the count. */
int cz_patchgan_param_specs(const cz_patchgan_arch *a, cz_unet_param_spec *out, int cap);
/* Learnable parameter count. */
size_t cz_patchgan_param_count(const cz_patchgan_arch *a);
cz_status cz_patchgan_arch_to_meta(const cz_patchgan_arch *a, cz_st_writer *w);
/* CZ_ERR_NOT_FOUND when the file has no disc_* metadata. */
cz_status cz_patchgan_arch_from_meta(const cz_safetensors *st, cz_patchgan_arch *a);
/* Metadata and freshly initialized tensors (see above) into w. */
cz_status cz_patchgan_init_weights(const cz_patchgan_arch *a, uint64_t seed, cz_st_writer *w);

typedef struct cz_patchgan cz_patchgan;

/* Creates the discriminator on `be` (fp32). Weights come from `st` (disc.* tensors, validated)
 * or, when st is NULL, from cz_patchgan_init_weights(a, seed). */
cz_status cz_patchgan_create(cz_backend *be, const cz_patchgan_arch *a, const cz_safetensors *st,
                             uint64_t seed, cz_patchgan **out);
void cz_patchgan_destroy(cz_patchgan *d);
const cz_patchgan_arch *cz_patchgan_get_arch(const cz_patchgan *d);
/* Plans activations and gradients for up to max_batch inputs of h x w (replaces the plan). */
cz_status cz_patchgan_plan(cz_patchgan *d, int max_batch, int h, int w);
/* Storage type of activations and their gradients (default fp32). Before the first plan. */
cz_status cz_patchgan_set_act_dtype(cz_patchgan *d, cz_dtype dt);
/* The planned input tensor (max_batch, in_ch, h, w): fill a batch view of it (e.g. with
 * concat) before cz_patchgan_forward. */
cz_tensor *cz_patchgan_input(cz_patchgan *d);
/* Training-mode forward of the first n inputs; *logits is a batch view (n, 1, oh, ow) valid
 * until the next forward. */
cz_status cz_patchgan_forward(cz_patchgan *d, int n, const cz_tensor **logits);

/* Backward of the last forward from dlogits (shape of *logits). Parameter gradients per
 * `mode`; when dx is not NULL, *dx receives a view (n, in_ch, h, w) of d(input), valid until
 * the next backward. */
cz_status cz_patchgan_backward(cz_patchgan *d, const cz_tensor *dlogits, cz_grad_mode mode, const cz_tensor **dx);
/* The parameter list in layer order (for the optimizer, export and tests). */
cz_param *cz_patchgan_params(cz_patchgan *d, int *count);
/* Writes metadata and every disc.* tensor (running statistics included). */
cz_status cz_patchgan_export(cz_patchgan *d, cz_st_writer *w);

#endif
