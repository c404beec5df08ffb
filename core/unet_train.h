/* unet_train.h: the pix2pix U-Net generator in TRAINING mode (forward with saved activations,
 * backward to parameter gradients), written once against the backend op table. The inference
 * engine (unet.h) folds BatchNorm and fuses activations; this graph keeps every op separate:
 *
 *   d[0]   = conv(x);                       a[0] = lrelu(d[0])            (in place on d[0])
 *   d[i]   = conv(a[i-1]);  a[i] = lrelu(BN(d[i]))                        i = 1 .. D-2
 *   d[D-1] = conv(a[D-2]);  r    = relu(d[D-1])                           (in place)
 *   u[i]   = deconv(i == D-1 ? r : c[i]);   e[i] = BN(u[i]) [-> dropout]  i = D-1 .. 1
 *   c[i-1] = relu(concat(a[i-1], e[i]))                                   (relu in place)
 *   out    = tanh(deconv(c[0]) + up.0.bias)
 * where BN is batch-statistics BatchNorm (running statistics updated, momentum 0.1) and
 * dropout (p = 0.5, inverted, the backend's counter-based RNG) sits on levels 4 .. D-2, the
 * same placement as tests/golden/torch_unet.py (the three depth-5 levels just outside the
 * innermost at depth 8).
 *
 * The reference applies LeakyReLU(0.2) in place on a level's input, so the tensor a[i] is BOTH
 * the skip half of concat(a[i], e[i+1]) and the input of the next down conv. Its gradient is
 * the sum of the two uses, pushed once through the single LeakyReLU:
 *   d/d(BN out) = lrelu'(.) * (conv_bwd_data(d[i+1]'s grad) + skip half of concat's grad).
 * (Not lrelu applied twice, and the skip does not bypass the lrelu.) The backend has no
 * "add" op, so the sum is made with concat_bwd's accumulate: after conv2d_bwd_data writes the
 * down path's part, concat_bwd(grad of c[i], ga[i], scratch, accumulate = 1) adds the skip part.
 *
 * Dropout seeds: the forward takes one seed per step; level i uses
 * cz_unet_train_level_seed(seed, i) = seed + (i + 1) * 0x9FB21C651E98DF25 (mod 2^64), so masks
 * can be regenerated outside (tests/golden/torch_train.py does, to feed torch the same masks).
 *
 * Parameters: one cz_param per tensor of cz_unet_param_specs (same names, layer order), fp32
 * master values plus gradients (running statistics are buffers). Export writes the unet
 * metadata and every tensor (running statistics included), so the file loads with
 * cz_unet_create for inference; the eval-mode forward here (running statistics, no dropout)
 * matches that engine's output.
 * Memory: activations and gradients are planned once per (max_batch, h, w); forward and
 * backward allocate nothing and accept any batch n <= max_batch (batch views; BatchNorm
 * statistics are those of the n images).
 *
 * Threading: one thread at a time (the backend's owner). Tested by tests/unit/test_train.c
 * (export/import, eval parity with cz_unet, overfitting) and tests/unit/test_train_golden.c
 * (every gradient against PyTorch). */
#ifndef CZ_UNET_TRAIN_H
#define CZ_UNET_TRAIN_H

#include <stdint.h>

#include "backend.h"
#include "optim.h"
#include "safetensors.h"
#include "status.h"
#include "unet.h"

typedef struct cz_unet_train cz_unet_train;

/* Creates the training graph on `be` (fp32). With `st`, the architecture comes from its
 * metadata (`arch` may be NULL) and every tensor is validated and loaded (BatchNorm running
 * statistics included); without, `arch` is initialized by cz_unet_init_weights(arch, seed). */
cz_status cz_unet_train_create(cz_backend *be, const cz_unet_arch *arch, const cz_safetensors *st, uint64_t seed,
                               cz_unet_train **out);
void cz_unet_train_destroy(cz_unet_train *g);
const cz_unet_arch *cz_unet_train_get_arch(const cz_unet_train *g);
/* Dropout probability on the dropout levels (default 0.5; 0 turns dropout off). */
cz_status cz_unet_train_set_dropout(cz_unet_train *g, float p);
/* Storage type of activations and their gradients (default fp32; bf16 = mixed precision: the
 * parameters, their gradients and BatchNorm statistics stay fp32). Before the first plan. */
cz_status cz_unet_train_set_act_dtype(cz_unet_train *g, cz_dtype dt);
uint64_t cz_unet_train_level_seed(uint64_t seed, int level);
/* Plans for up to max_batch images of h x w (multiples of 2^depth); replaces the plan. */
cz_status cz_unet_train_plan(cz_unet_train *g, int max_batch, int h, int w);
/* The planned input tensor (max_batch, in_ch, h, w); fill a batch view before forward. */
cz_tensor *cz_unet_train_input(cz_unet_train *g);
/* Forward of the first n inputs. training != 0: batch-statistics BatchNorm (running stats
 * updated) and dropout with `seed`; 0: running statistics, no dropout (inference semantics).
 * *out is a batch view (n, out_ch, h, w), valid until the next forward. */
cz_status cz_unet_train_forward(cz_unet_train *g, int n, int training, uint64_t seed, const cz_tensor **out);
/* The training forward (training = 1) with its seed read from backend variable seed_var when
 * the dropout runs (backend.h dropout_fwd_var), so that it may be recorded and replayed with
 * each step's seed: the same as cz_unet_train_forward with seed = that variable's value.
 * CZ_ERR_UNSUPPORTED on a backend without step variables. */
cz_status cz_unet_train_forward_var(cz_unet_train *g, int n, int seed_var, const cz_tensor **out);
/* Backward of the last training-mode forward from dout (shape of *out): parameter gradients
 * per `mode` (CZ_GRAD_OVERWRITE needs no zero_grad). */
cz_status cz_unet_train_backward(cz_unet_train *g, const cz_tensor *dout, cz_grad_mode mode);
cz_param *cz_unet_train_params(cz_unet_train *g, int *count);
/* Unet metadata + every tensor in our naming (loads with cz_unet_create). */
cz_status cz_unet_train_export(cz_unet_train *g, cz_st_writer *w);
/* Replaces every value (weights and running statistics) from `st`, whose metadata
 * architecture must equal this one. */
cz_status cz_unet_train_load(cz_unet_train *g, const cz_safetensors *st);

#endif
