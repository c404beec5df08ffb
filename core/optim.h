/* optim.h: trainable parameter lists and the Adam optimizer, written against the backend op
 * table (every update runs through be->ops->adam_step, so it works on any backend).
 *
 * Parameters: a model (unet_train, patchgan) owns an array of cz_param, one per named tensor of
 * its weights file, in layer order. `value` is the fp32 master copy on the backend; `grad` is
 * an fp32 tensor of the same shape and role, allocated only for learnable tensors (BatchNorm
 * running statistics are buffers: grad.data == NULL, never touched by the optimizer). Models
 * write gradients with the backend's `accumulate` convention, so a first backward may
 * overwrite instead of requiring cz_params_zero_grad.
 *
 * Adam: exactly torch.optim.Adam (no weight decay, no amsgrad): m = b1 m + (1-b1) g,
 * v = b2 v + (1-b2) g^2, p -= lr * (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps), t 1-based.
 * Defaults are pix2pix's: lr 2e-4, beta1 0.5, beta2 0.999, eps 1e-8. The learning rate can be
 * changed between steps (cz_adam_set_lr); cz_lr_linear gives pix2pix's "linear" policy by
 * step. Moments and the step count can be saved to / restored from a safetensors file.
 *
 * Threading: like the backend, one thread at a time. Tested by tests/unit/test_train.c and,
 * through five pix2pix steps against torch.optim.Adam, tests/unit/test_train_golden.c. */
#ifndef CZ_OPTIM_H
#define CZ_OPTIM_H

#include <stddef.h>
#include <stdint.h>

#include "backend.h"
#include "safetensors.h"
#include "status.h"

#define CZ_PARAM_NAME_MAX 48

/* What a model's backward does with parameter gradients: skip them (e.g. the discriminator
 * during the generator's step), overwrite them, or add to them. */
typedef enum cz_grad_mode { CZ_GRAD_NONE = 0, CZ_GRAD_OVERWRITE = 1, CZ_GRAD_ACCUMULATE = 2 } cz_grad_mode;

typedef struct cz_param {
    char name[CZ_PARAM_NAME_MAX]; /* safetensors name, e.g. "down.1.bn.weight" */
    int ndim;                     /* 4 (conv weights) or 1 (vectors) as stored in files */
    int64_t shape[4];
    cz_tensor value; /* fp32 master copy */
    cz_tensor grad;  /* fp32 gradient; data NULL for buffers (running statistics) */
} cz_param;

static inline int cz_param_learnable(const cz_param *p) { return p->grad.data != NULL; }
static inline size_t cz_param_numel(const cz_param *p) {
    size_t k = 1;
    for (int d = 0; d < p->ndim; d++) k *= (size_t)p->shape[d];
    return k;
}

/* Allocates value (and grad when learnable) for a tensor of file shape `shape` (ndim 1 or 4;
 * 1-d becomes (1,C,1,1) on the backend). Values start at zero. */
cz_status cz_param_alloc(cz_backend *be, cz_param *p, const char *name, int ndim, const int64_t *shape,
                         cz_role role, int learnable);
void cz_param_free(cz_backend *be, cz_param *p);
/* Copies values from `st` (any float dtype), checking presence, shape and finiteness, and
 * that running variances are not negative. */
cz_status cz_param_load(cz_backend *be, cz_param *p, const cz_safetensors *st);
/* Appends the value as an F32 tensor named p->name (prefix prepended when not NULL). */
cz_status cz_param_save(cz_backend *be, const cz_param *p, const char *prefix, cz_st_writer *w);
/* Host copies (numel floats). */
cz_status cz_param_read(cz_backend *be, const cz_param *p, int grad, float *dst);
cz_status cz_param_write(cz_backend *be, cz_param *p, int grad, const float *src);
/* Zeroes the gradient of every learnable parameter. */
cz_status cz_params_zero_grad(cz_backend *be, cz_param *params, int n);
/* Learnable element count. */
size_t cz_params_count(const cz_param *params, int n);

typedef struct cz_adam_config {
    float lr, beta1, beta2, eps;
} cz_adam_config;

cz_adam_config cz_adam_config_default(void); /* 2e-4, 0.5, 0.999, 1e-8 */

typedef struct cz_adam cz_adam;

/* The optimizer keeps a pointer to `params` (which must outlive it) and allocates m, v for
 * every learnable entry. */
cz_status cz_adam_create(cz_backend *be, cz_param *params, int n, const cz_adam_config *cfg, cz_adam **out);
void cz_adam_destroy(cz_adam *a);
/* One update of every learnable parameter from its grad, at the current lr. */
cz_status cz_adam_step(cz_adam *a);
/* The same update queued as one backend call where the backend has adam_multi, skipped on the
 * device (params and moments untouched) when a loss slot whose bit is set in `gate` holds a
 * non-finite value (backend.h). Without adam_multi it is cz_adam_step, and the caller checks
 * its losses before. The step count advances either way; cz_adam_rewind takes it back for a
 * step the device skipped. */
cz_status cz_adam_step_gated(cz_adam *a, unsigned gate);
/* The same gated update in two halves, for a backend with step variables (backend.h var_set),
 * so that a recorded training step replays with each step's values. cz_adam_next_vars advances
 * the step count and gives the update's lr, 1 - beta1^t and 1 - beta2^t as the IEEE bits of
 * the doubles adam_multi computes, for var_set into three consecutive variables;
 * cz_adam_step_var queues the update reading them from variables [var, var + 3) when it runs
 * (adam_multi_var), and may be recorded. CZ_ERR_UNSUPPORTED without adam_multi_var. */
void cz_adam_next_vars(cz_adam *a, uint64_t bits[3]);
cz_status cz_adam_step_var(cz_adam *a, int var, unsigned gate);
void cz_adam_rewind(cz_adam *a);
void cz_adam_set_lr(cz_adam *a, float lr);
float cz_adam_get_lr(const cz_adam *a);
int cz_adam_steps(const cz_adam *a); /* updates done so far (t) */
/* Saves m and v as "{prefix}{name}.adam_m" / ".adam_v" and the step count as metadata
 * "{prefix}adam_step". Loading restores them (all must be present). */
cz_status cz_adam_save(const cz_adam *a, const char *prefix, cz_st_writer *w);
cz_status cz_adam_load(cz_adam *a, const char *prefix, const cz_safetensors *st);

/* pix2pix's linear policy by step: lr for the 0-based step `step` is base for the first
 * n_const steps, then falls linearly: base * (1 - (step - n_const + 1) / (n_decay + 1)),
 * never below 0. n_decay == 0 means constant. */
float cz_lr_linear(float base, long step, long n_const, long n_decay);

#endif
