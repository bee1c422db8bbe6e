/* Test-only: a stand-in for ggml's Metal backend, so the "beside Metal" route can be tested on
 * Linux. It imitates what ggml-metal shows the scheduler (ggml/src/ggml-metal/ggml-metal.cpp):
 * a GPU device "MTL0"; buffer types "MTL0", "MTL0_Mapped" (what buffer_from_host_ptr returns
 * for the mmapped model) and "MTL0_Private", all with is_host = false; supports_buft accepting
 * only its own three; supports_op as ggml-metal's own list (below); Metal's capabilities (async,
 * events, buffers from host pointers, mmap)
 * and its offload threshold (MUL_MAT with 32 or more tokens, MUL_MAT_ID counting ne[2]).
 * STANDIN_METAL_US_PER_MFLOP slows its MUL_MATs by that many microseconds per million flops
 * (routing-by-measurement tests).
 *
 * And it behaves like Metal where a careless neighbour would notice:
 * - graph_compute returns with its results held back (NaN in their memory) until the backend is
 *   synchronised (or an event recorded), so whoever reads a result before the scheduler's
 *   synchronisation reads NaN;
 * - it computes only tensors whose data lives in its own buffers (Metal finds an MTLBuffer for
 *   every operand) and fails the graph otherwise;
 * - MTL0_Private buffers report a fake base address (Metal's private memory has no CPU
 *   address): a CPU read of one faults.
 * The memory of MTL0 and MTL0_Mapped is host memory from ggml's CPU buffer type, and every op is
 * computed by ggml's own CPU backend — what matters here is which device the scheduler gives
 * each op and when results appear, not where the arithmetic runs.
 *
 * Built by crates/ggml-ane/tests/metal_coexistence.rs against the pinned ggml; loaded with
 * ggml_backend_load like any backend module.
 */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ggml-backend-impl.h"
#include "ggml-backend.h"

#define N_BUFT 3
static const char *BUFT_NAMES[N_BUFT] = {"MTL0", "MTL0_Mapped", "MTL0_Private"};

static struct ggml_backend_device standin_device;
static struct ggml_backend_buffer_type standin_bufts[N_BUFT];

/* ---- results held back until synchronisation ----
 * A graph is computed at once by ggml's CPU backend (so the stand-in's own later graphs, like
 * Metal's in-order queue, see every earlier result), then each result it wrote is saved and
 * replaced by NaN; synchronising (or recording an event, or the next graph of the stand-in,
 * or a buffer access through ggml's API, which Metal orders after its queue) puts them back.
 * Whoever reads a result's memory directly before the scheduler synchronised reads NaN. */

struct held {
    float *data;
    float *saved;
    size_t n;
};

static pthread_mutex_t held_lock = PTHREAD_MUTEX_INITIALIZER;
static struct held *held_back;
static size_t n_held;

static void finish(void) {
    pthread_mutex_lock(&held_lock);
    /* last held first: a result computed in place over an earlier one (same memory) was
     * saved as NaN, and the earlier one's saved bytes are the final ones */
    for (size_t i = n_held; i-- > 0;) {
        memcpy(held_back[i].data, held_back[i].saved, held_back[i].n * sizeof(float));
        free(held_back[i].saved);
    }
    n_held = 0;
    pthread_mutex_unlock(&held_lock);
}

static void hold_back(struct ggml_tensor *t) {
    if (t->view_src != NULL || t->type != GGML_TYPE_F32 || !ggml_is_contiguous(t) || !t->data) {
        return;
    }
    size_t n = (size_t)ggml_nelements(t);
    float *saved = malloc(n * sizeof(float));
    memcpy(saved, t->data, n * sizeof(float));
    pthread_mutex_lock(&held_lock);
    held_back = realloc(held_back, sizeof(*held_back) * (n_held + 1));
    held_back[n_held++] = (struct held){t->data, saved, n};
    pthread_mutex_unlock(&held_lock);
    for (size_t k = 0; k < n; k++) {
        ((float *)t->data)[k] = NAN;
    }
}

/* MTL0 buffers: ggml's CPU buffers whose API accesses wait for the held-back results */
static struct ggml_backend_buffer_i cpu_buffer_i;

static void own_set_tensor(ggml_backend_buffer_t b, struct ggml_tensor *t, const void *d, size_t o, size_t s) {
    finish();
    cpu_buffer_i.set_tensor(b, t, d, o, s);
}

static void own_get_tensor(ggml_backend_buffer_t b, const struct ggml_tensor *t, void *d, size_t o, size_t s) {
    finish();
    cpu_buffer_i.get_tensor(b, t, d, o, s);
}

static void own_memset_tensor(ggml_backend_buffer_t b, struct ggml_tensor *t, uint8_t v, size_t o, size_t s) {
    finish();
    cpu_buffer_i.memset_tensor(b, t, v, o, s);
}

static bool own_cpy_tensor(ggml_backend_buffer_t b, const struct ggml_tensor *src, struct ggml_tensor *dst) {
    finish();
    return cpu_buffer_i.cpy_tensor(b, src, dst);
}

static void own_clear(ggml_backend_buffer_t b, uint8_t v) {
    finish();
    cpu_buffer_i.clear(b, v);
}

/* ---- buffer types: CPU buffers wearing Metal's names ---- */

static const char *buft_get_name(ggml_backend_buffer_type_t buft) {
    return (const char *)buft->context;
}

/* MTL0_Private: a fake base (as Metal's private buffers: GPU memory, no CPU address); tensor
 * reads and writes go through the buffer interface to real memory behind it. */
#define FAKE_BASE ((char *)0x1000)

struct private_buffer {
    char *mem;
    size_t size;
};

static void private_free(ggml_backend_buffer_t buf) {
    struct private_buffer *p = buf->context;
    free(p->mem);
    free(p);
}

static void *private_get_base(ggml_backend_buffer_t buf) {
    (void)buf;
    return FAKE_BASE;
}

static void private_set_tensor(ggml_backend_buffer_t buf, struct ggml_tensor *t, const void *data,
                               size_t offset, size_t size) {
    struct private_buffer *p = buf->context;
    memcpy(p->mem + ((char *)t->data - FAKE_BASE) + offset, data, size);
}

static void private_get_tensor(ggml_backend_buffer_t buf, const struct ggml_tensor *t, void *data,
                               size_t offset, size_t size) {
    struct private_buffer *p = buf->context;
    memcpy(data, p->mem + ((char *)t->data - FAKE_BASE) + offset, size);
}

static void private_clear(ggml_backend_buffer_t buf, uint8_t value) {
    struct private_buffer *p = buf->context;
    memset(p->mem, value, p->size);
}

static const struct ggml_backend_buffer_i private_buffer_i = {
    .free_buffer = private_free,
    .get_base = private_get_base,
    .set_tensor = private_set_tensor,
    .get_tensor = private_get_tensor,
    .clear = private_clear,
};

static ggml_backend_buffer_t buft_alloc_buffer(ggml_backend_buffer_type_t buft, size_t size) {
    if (buft == &standin_bufts[2]) {
        struct private_buffer *p = calloc(1, sizeof *p);
        p->mem = calloc(1, size ? size : 1);
        p->size = size;
        return ggml_backend_buffer_init(buft, private_buffer_i, p, size);
    }
    ggml_backend_buffer_t buf = ggml_backend_buft_alloc_buffer(ggml_backend_cpu_buffer_type(), size);
    if (buf) {
        buf->buft = buft;
        /* tensor access through ggml's API waits for the held-back results */
        cpu_buffer_i = buf->iface;
        buf->iface.set_tensor = own_set_tensor;
        buf->iface.get_tensor = own_get_tensor;
        buf->iface.memset_tensor = cpu_buffer_i.memset_tensor ? own_memset_tensor : NULL;
        buf->iface.cpy_tensor = cpu_buffer_i.cpy_tensor ? own_cpy_tensor : NULL;
        buf->iface.clear = own_clear;
    }
    return buf;
}

static size_t buft_get_alignment(ggml_backend_buffer_type_t buft) {
    (void)buft;
    return ggml_backend_buft_get_alignment(ggml_backend_cpu_buffer_type());
}

static bool buft_is_host(ggml_backend_buffer_type_t buft) {
    (void)buft;
    return false; /* as every Metal buffer type says */
}

static const struct ggml_backend_buffer_type_i standin_buft_i = {
    /* .get_name       = */ buft_get_name,
    /* .alloc_buffer   = */ buft_alloc_buffer,
    /* .get_alignment  = */ buft_get_alignment,
    /* .get_max_size   = */ NULL,
    /* .get_alloc_size = */ NULL,
    /* .is_host        = */ buft_is_host,
};

/* ---- backend (stream) ---- */

static const char *backend_get_name(ggml_backend_t backend) {
    (void)backend;
    return "MTL0";
}

/* Whether `t` (a view: what it views) has its data in one of the stand-in's buffers. */
static bool in_own_buffer(const struct ggml_tensor *t) {
    const struct ggml_tensor *base = t->view_src ? t->view_src : t;
    if (!base->buffer) {
        return false;
    }
    ggml_backend_buffer_type_t buft = ggml_backend_buffer_get_type(base->buffer);
    for (int i = 0; i < N_BUFT; i++) {
        if (buft == &standin_bufts[i]) {
            return true;
        }
    }
    return false;
}

static void backend_free(ggml_backend_t backend) {
    finish();
    ggml_backend_free((ggml_backend_t)backend->context);
    free(backend);
}

static void backend_synchronize(ggml_backend_t backend) {
    (void)backend;
    finish();
}

static enum ggml_status backend_graph_compute(ggml_backend_t backend, struct ggml_cgraph *cgraph) {
    int n = ggml_graph_n_nodes(cgraph);
    for (int i = 0; i < n; i++) {
        struct ggml_tensor *t = ggml_graph_node(cgraph, i);
        /* views compute nothing (Metal skips them, as ggml_is_empty nodes) */
        if (t->op == GGML_OP_NONE || t->op == GGML_OP_VIEW || t->op == GGML_OP_RESHAPE ||
            t->op == GGML_OP_PERMUTE || t->op == GGML_OP_TRANSPOSE || ggml_is_empty(t)) {
            continue;
        }
        /* Metal computes on its own buffers only: every result and every operand */
        bool own = in_own_buffer(t);
        for (int j = 0; own && j < GGML_MAX_SRC; j++) {
            own = !t->src[j] || in_own_buffer(t->src[j]);
        }
        if (!own) {
            fprintf(stderr, "standin-metal: %s (%s) reads or writes a tensor outside MTL0's buffers\n",
                    t->name, ggml_op_name(t->op));
            return GGML_STATUS_FAILED;
        }
    }
    finish(); /* the queue's earlier work, in order */
    enum ggml_status status = ggml_backend_graph_compute((ggml_backend_t)backend->context, cgraph);
    /* the speed knob: STANDIN_METAL_US_PER_MFLOP adds that many microseconds per million
     * flops of MUL_MAT, so tests can make this "GPU" slower than the engine beside it */
    const char *knob = getenv("STANDIN_METAL_US_PER_MFLOP");
    if (knob && status == GGML_STATUS_SUCCESS) {
        double mflop = 0;
        for (int i = 0; i < n; i++) {
            struct ggml_tensor *t = ggml_graph_node(cgraph, i);
            if (t->op == GGML_OP_MUL_MAT) {
                mflop += 2.0 * (double)t->src[0]->ne[0] * (double)ggml_nelements(t) / 1e6;
            }
        }
        double us = mflop * atof(knob);
        if (us > 0) {
            struct timespec ts = {(time_t)(us / 1e6), (long)((us - (double)(time_t)(us / 1e6) * 1e6) * 1e3)};
            nanosleep(&ts, NULL);
        }
    }
    if (status == GGML_STATUS_SUCCESS) {
        for (int i = 0; i < n; i++) {
            hold_back(ggml_graph_node(cgraph, i));
        }
    }
    return status;
}

/* Events: recording one finishes the queue (conservative: Metal signals when the GPU reaches
 * it), so waiting on a recorded event has nothing left to wait for. */
static void backend_event_record(ggml_backend_t backend, ggml_backend_event_t event) {
    (void)event;
    backend_synchronize(backend);
}

static void backend_event_wait(ggml_backend_t backend, ggml_backend_event_t event) {
    (void)backend;
    (void)event;
}

static const struct ggml_backend_i standin_backend_i = {
    .get_name = backend_get_name,
    .free = backend_free,
    .synchronize = backend_synchronize,
    .graph_compute = backend_graph_compute,
    .event_record = backend_event_record,
    .event_wait = backend_event_wait,
};

static ggml_guid_t standin_guid(void) {
    static ggml_guid guid = {'s', 't', 'a', 'n', 'd', '-', 'i', 'n', '-', 'm', 'e', 't', 'a', 'l', '-', '0'};
    return &guid;
}

/* ---- device ---- */

static const char *dev_get_name(ggml_backend_dev_t dev) {
    (void)dev;
    return "MTL0";
}

static const char *dev_get_description(ggml_backend_dev_t dev) {
    (void)dev;
    return "stand-in for Apple Metal (test only; the CPU computes)";
}

static void dev_get_memory(ggml_backend_dev_t dev, size_t *free_mem, size_t *total) {
    (void)dev;
    *free_mem = (size_t)8 << 30;
    *total = (size_t)8 << 30;
}

static enum ggml_backend_dev_type dev_get_type(ggml_backend_dev_t dev) {
    (void)dev;
    return GGML_BACKEND_DEVICE_TYPE_GPU;
}

static void dev_get_props(ggml_backend_dev_t dev, struct ggml_backend_dev_props *props) {
    props->name = dev_get_name(dev);
    props->description = dev_get_description(dev);
    dev_get_memory(dev, &props->memory_free, &props->memory_total);
    props->type = GGML_BACKEND_DEVICE_TYPE_GPU;
    props->device_id = NULL;
    props->caps.async = true;
    props->caps.host_buffer = false;
    props->caps.buffer_from_host_ptr = true;
    props->caps.events = true;
    props->caps.mmap_support = true;
}

static ggml_backend_t dev_init_backend(ggml_backend_dev_t dev, const char *params) {
    (void)params;
    ggml_backend_dev_t cpu_dev = ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU);
    ggml_backend_t cpu = cpu_dev ? ggml_backend_dev_init(cpu_dev, NULL) : NULL;
    if (!cpu) {
        return NULL;
    }
    ggml_backend_t backend = malloc(sizeof(struct ggml_backend));
    backend->guid = standin_guid();
    backend->iface = standin_backend_i;
    backend->device = dev;
    backend->context = cpu;
    return backend;
}

static ggml_backend_buffer_type_t dev_get_buffer_type(ggml_backend_dev_t dev) {
    (void)dev;
    return &standin_bufts[0];
}

static ggml_backend_buffer_t dev_buffer_from_host_ptr(ggml_backend_dev_t dev, void *ptr, size_t size,
                                                      size_t max_tensor_size) {
    (void)dev;
    (void)max_tensor_size;
    ggml_backend_buffer_t buf = ggml_backend_cpu_buffer_from_ptr(ptr, size);
    if (buf) {
        buf->buft = &standin_bufts[1]; /* MTL0_Mapped */
    }
    return buf;
}

/* ---- which ops it takes: ggml-metal's own list ----
 * ggml_metal_device_supports_op of the pinned ggml (0.25.3, ggml-metal-device.m L1539-1955)
 * for an Apple7+ GPU with bfloat (M2 and later; STANDIN_METAL_NO_BF16=1 is an M1), cut to the
 * ops a llama, MoE or whisper graph holds; anything else is refused, as Metal refuses what its
 * list does not name. So the scheduler sends to the CPU (or to us) exactly what it would beside
 * real Metal: a flash attention of an unlisted head size, a BF16 operand on an M1. */
static bool f32_or_f16(const struct ggml_tensor *t) {
    return t->type == GGML_TYPE_F32 || t->type == GGML_TYPE_F16;
}

static bool has_bf16_operand(const struct ggml_tensor *op) {
    if (op->type == GGML_TYPE_BF16) {
        return true;
    }
    for (int i = 0; i < 3; i++) {
        if (op->src[i] != NULL && op->src[i]->type == GGML_TYPE_BF16) {
            return true;
        }
    }
    return false;
}

/* ggml_metal_supports_mul_mat_op (L1513-1537) with the matrix-matrix path's test
 * (ggml-metal-common.cpp L35-49: K of 64 or more and more than 8 tokens, 32 for experts) */
static bool metal_mul_mat(const struct ggml_tensor *op, bool is_id) {
    if (op->src[0]->type == GGML_TYPE_TQ1_0) {
        return false;
    }
    if (op->src[1]->type != GGML_TYPE_F16) {
        return true;
    }
    if (op->src[0]->type == GGML_TYPE_BF16) {
        return false;
    }
    if (!is_id && op->src[0]->type == GGML_TYPE_F16) {
        return true;
    }
    const int64_t k = op->src[0]->ne[0];
    if (is_id) {
        return k >= 64 && op->src[2]->ne[1] >= 32;
    }
    return !ggml_is_transposed(op->src[0]) && !ggml_is_transposed(op->src[1]) && k >= 64 &&
           op->src[1]->ne[1] > 8;
}

/* flash attention's head sizes (L1711-1724) and K/V types (L1734-1748) */
static bool metal_flash_attn(const struct ggml_tensor *op) {
    static const int64_t heads[] = {32, 40, 48, 64, 72, 80, 96, 112, 128, 192, 256, 320, 512, 576};
    bool listed = false;
    for (size_t i = 0; i < sizeof(heads) / sizeof(heads[0]); i++) {
        listed |= op->src[0]->ne[0] == heads[i];
    }
    if (!listed || op->src[1]->ne[0] < op->src[2]->ne[0] || op->src[1]->type != op->src[2]->type) {
        return false;
    }
    if (op->src[1]->ne[0] == 72 && op->src[1]->ne[0] != op->src[2]->ne[0]) {
        return false;
    }
    switch (op->src[1]->type) {
    case GGML_TYPE_F32:
    case GGML_TYPE_F16:
    case GGML_TYPE_BF16:
    case GGML_TYPE_Q8_0:
    case GGML_TYPE_Q4_0:
    case GGML_TYPE_Q4_1:
    case GGML_TYPE_Q5_0:
    case GGML_TYPE_Q5_1:
        return true;
    default:
        return false;
    }
}

/* CPY/DUP/CONT/SET (L1860-1921) */
static bool metal_copy(const struct ggml_tensor *op) {
    switch (op->src[0]->type) {
    case GGML_TYPE_F32:
        switch (op->type) {
        case GGML_TYPE_F32:
        case GGML_TYPE_F16:
        case GGML_TYPE_BF16:
        case GGML_TYPE_Q8_0:
        case GGML_TYPE_Q4_0:
        case GGML_TYPE_Q4_1:
        case GGML_TYPE_Q5_0:
        case GGML_TYPE_Q5_1:
        case GGML_TYPE_IQ4_NL:
        case GGML_TYPE_I32:
            return true;
        default:
            return false;
        }
    case GGML_TYPE_F16:
        return op->type == GGML_TYPE_F32 || op->type == GGML_TYPE_F16;
    case GGML_TYPE_BF16:
        return op->type == GGML_TYPE_F32 || op->type == GGML_TYPE_BF16;
    case GGML_TYPE_Q4_0:
    case GGML_TYPE_Q4_1:
    case GGML_TYPE_Q5_0:
    case GGML_TYPE_Q5_1:
    case GGML_TYPE_Q8_0:
        return op->type == GGML_TYPE_F32 || op->type == GGML_TYPE_F16;
    case GGML_TYPE_I32:
        return op->type == GGML_TYPE_F32 || op->type == GGML_TYPE_I32;
    default:
        return false;
    }
}

static bool dev_supports_op(ggml_backend_dev_t dev, const struct ggml_tensor *op) {
    (void)dev;
    const char *no_bf16 = getenv("STANDIN_METAL_NO_BF16");
    if (no_bf16 != NULL && strcmp(no_bf16, "1") == 0 && has_bf16_operand(op)) {
        return false;
    }
    const struct ggml_tensor *a = op->src[0];
    switch (op->op) {
    case GGML_OP_NONE:
    case GGML_OP_RESHAPE:
    case GGML_OP_VIEW:
    case GGML_OP_TRANSPOSE:
    case GGML_OP_PERMUTE:
    case GGML_OP_REPEAT:
    case GGML_OP_ROPE:
    case GGML_OP_ARGSORT:
    case GGML_OP_ARANGE:
    case GGML_OP_CONV_TRANSPOSE_1D:
        return true;
    case GGML_OP_SCALE:
    case GGML_OP_CLAMP:
    case GGML_OP_SQR:
    case GGML_OP_SQRT:
    case GGML_OP_SIN:
    case GGML_OP_COS:
    case GGML_OP_LOG:
        return ggml_is_contiguous_rows(a) && f32_or_f16(a);
    case GGML_OP_UNARY:
        switch (ggml_get_unary_op(op)) {
        case GGML_UNARY_OP_TANH:
        case GGML_UNARY_OP_RELU:
        case GGML_UNARY_OP_SIGMOID:
        case GGML_UNARY_OP_GELU:
        case GGML_UNARY_OP_GELU_ERF:
        case GGML_UNARY_OP_GELU_QUICK:
        case GGML_UNARY_OP_SILU:
        case GGML_UNARY_OP_ELU:
        case GGML_UNARY_OP_NEG:
        case GGML_UNARY_OP_ABS:
        case GGML_UNARY_OP_EXP:
        case GGML_UNARY_OP_HARDSWISH:
        case GGML_UNARY_OP_HARDSIGMOID:
            return ggml_is_contiguous_rows(a) && f32_or_f16(a);
        default:
            return false;
        }
    case GGML_OP_GLU:
        switch (ggml_get_glu_op(op)) {
        case GGML_GLU_OP_REGLU:
        case GGML_GLU_OP_GEGLU:
        case GGML_GLU_OP_SWIGLU:
        case GGML_GLU_OP_SWIGLU_OAI:
        case GGML_GLU_OP_GEGLU_ERF:
        case GGML_GLU_OP_GEGLU_QUICK:
            return ggml_is_contiguous_1(a) && f32_or_f16(a);
        default:
            return false;
        }
    case GGML_OP_ADD:
    case GGML_OP_SUB:
    case GGML_OP_MUL:
    case GGML_OP_DIV:
    case GGML_OP_ADD_ID:
        return ggml_is_contiguous_rows(a) && ggml_is_contiguous_rows(op->src[1]) && f32_or_f16(a) &&
               a->type == op->src[1]->type;
    case GGML_OP_CONCAT:
        return a->type == op->src[1]->type && a->type == op->type &&
               (f32_or_f16(a) || a->type == GGML_TYPE_I32 || a->type == GGML_TYPE_BF16);
    case GGML_OP_SUM_ROWS:
    case GGML_OP_MEAN:
    case GGML_OP_SOFT_MAX:
    case GGML_OP_GROUP_NORM:
    case GGML_OP_L2_NORM:
    case GGML_OP_NORM:
    case GGML_OP_RMS_NORM:
        return ggml_is_contiguous_rows(a);
    case GGML_OP_ARGMAX:
        return true;
    case GGML_OP_IM2COL:
        return ggml_is_contiguous(op->src[1]) && op->src[1]->type == GGML_TYPE_F32 && f32_or_f16(op);
    case GGML_OP_PAD:
    case GGML_OP_UPSCALE:
        return a->type == GGML_TYPE_F32;
    case GGML_OP_FLASH_ATTN_EXT:
        return metal_flash_attn(op);
    case GGML_OP_MUL_MAT:
        return metal_mul_mat(op, false);
    case GGML_OP_MUL_MAT_ID:
        return metal_mul_mat(op, true);
    case GGML_OP_SET:
    case GGML_OP_CPY:
    case GGML_OP_DUP:
    case GGML_OP_CONT:
        return metal_copy(op);
    case GGML_OP_GET_ROWS:
        return a->type != GGML_TYPE_TQ1_0;
    case GGML_OP_SET_ROWS:
        if (a->type == GGML_TYPE_F16) {
            return op->type == GGML_TYPE_F16;
        }
        return a->type == GGML_TYPE_F32 &&
               (f32_or_f16(op) || op->type == GGML_TYPE_BF16 || op->type == GGML_TYPE_Q8_0 ||
                op->type == GGML_TYPE_Q4_0 || op->type == GGML_TYPE_Q4_1 || op->type == GGML_TYPE_Q5_0 ||
                op->type == GGML_TYPE_Q5_1 || op->type == GGML_TYPE_IQ4_NL);
    default:
        return false;
    }
}

static bool dev_supports_buft(ggml_backend_dev_t dev, ggml_backend_buffer_type_t buft) {
    (void)dev;
    for (int i = 0; i < N_BUFT; i++) {
        if (buft == &standin_bufts[i]) {
            return true;
        }
    }
    return false;
}

static bool dev_offload_op(ggml_backend_dev_t dev, const struct ggml_tensor *op) {
    (void)dev;
    /* ggml-metal.cpp get_op_batch_size: MUL_MAT_ID's tokens are ne[2] */
    int64_t batch = op->op == GGML_OP_MUL_MAT_ID ? op->ne[2] : op->ne[1];
    return (op->op == GGML_OP_MUL_MAT || op->op == GGML_OP_MUL_MAT_ID) && batch >= 32;
}

static ggml_backend_event_t dev_event_new(ggml_backend_dev_t dev) {
    ggml_backend_event_t ev = malloc(sizeof(struct ggml_backend_event));
    ev->device = dev;
    ev->context = NULL;
    return ev;
}

static void dev_event_free(ggml_backend_dev_t dev, ggml_backend_event_t event) {
    (void)dev;
    free(event);
}

static void dev_event_synchronize(ggml_backend_dev_t dev, ggml_backend_event_t event) {
    (void)dev;
    (void)event;
}

static const struct ggml_backend_device_i standin_device_i = {
    .get_name = dev_get_name,
    .get_description = dev_get_description,
    .get_memory = dev_get_memory,
    .get_type = dev_get_type,
    .get_props = dev_get_props,
    .init_backend = dev_init_backend,
    .get_buffer_type = dev_get_buffer_type,
    .buffer_from_host_ptr = dev_buffer_from_host_ptr,
    .supports_op = dev_supports_op,
    .supports_buft = dev_supports_buft,
    .offload_op = dev_offload_op,
    .event_new = dev_event_new,
    .event_free = dev_event_free,
    .event_synchronize = dev_event_synchronize,
};

/* ---- registry ---- */

static const char *reg_get_name(ggml_backend_reg_t reg) {
    (void)reg;
    return "MTL";
}

static size_t reg_get_device_count(ggml_backend_reg_t reg) {
    (void)reg;
    return 1;
}

static ggml_backend_dev_t reg_get_device(ggml_backend_reg_t reg, size_t index) {
    (void)reg;
    return index == 0 ? &standin_device : NULL;
}

/* The three buffer types, by index (0 MTL0, 1 MTL0_Mapped, 2 MTL0_Private), for tests that
   ask another device whether it accepts them. */
static ggml_backend_buffer_type_t standin_buffer_type(int i) {
    return i >= 0 && i < N_BUFT ? &standin_bufts[i] : NULL;
}

static void *reg_get_proc_address(ggml_backend_reg_t reg, const char *name) {
    (void)reg;
    return strcmp(name, "standin_buffer_type") == 0 ? (void *)standin_buffer_type : NULL;
}

static const struct ggml_backend_reg_i standin_reg_i = {
    .get_name = reg_get_name,
    .get_device_count = reg_get_device_count,
    .get_device = reg_get_device,
    .get_proc_address = reg_get_proc_address,
};

static struct ggml_backend_reg standin_reg = {
    .api_version = GGML_BACKEND_API_VERSION,
    .iface = standin_reg_i,
    .context = NULL,
};

ggml_backend_reg_t ggml_backend_init(void) {
    standin_device.iface = standin_device_i;
    standin_device.reg = &standin_reg;
    standin_device.context = NULL;
    for (int i = 0; i < N_BUFT; i++) {
        standin_bufts[i].iface = standin_buft_i;
        standin_bufts[i].device = &standin_device;
        standin_bufts[i].context = (void *)BUFT_NAMES[i];
    }
    return &standin_reg;
}
