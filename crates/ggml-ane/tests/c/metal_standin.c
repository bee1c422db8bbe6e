/* Test-only: a stand-in for ggml's Metal backend, so the "beside Metal" route can be tested on
 * Linux. It imitates what ggml-metal shows the scheduler (ggml/src/ggml-metal/ggml-metal.cpp):
 * a GPU device "MTL0"; buffer types "MTL0", "MTL0_Mapped" (what buffer_from_host_ptr returns
 * for the mmapped model) and "MTL0_Private", all with is_host = false; supports_buft accepting
 * only its own three; Metal's capabilities (buffers from host pointers, mmap) and its offload
 * threshold (MUL_MAT with 32 or more rows in the batch). The memory is host memory from ggml's
 * CPU buffer type, and every op is computed by ggml's own CPU backend — what matters here is
 * which device the scheduler gives each op, not where the arithmetic runs.
 *
 * Built by crates/ggml-ane/tests/metal_coexistence.rs against the pinned ggml; loaded with
 * ggml_backend_load like any backend module.
 */
#include <stdlib.h>
#include <string.h>

#include "ggml-backend-impl.h"
#include "ggml-backend.h"

#define N_BUFT 3
static const char *BUFT_NAMES[N_BUFT] = {"MTL0", "MTL0_Mapped", "MTL0_Private"};

static struct ggml_backend_device standin_device;
static struct ggml_backend_buffer_type standin_bufts[N_BUFT];

/* ---- buffer types: CPU buffers wearing Metal's names ---- */

static const char *buft_get_name(ggml_backend_buffer_type_t buft) {
    return (const char *)buft->context;
}

static ggml_backend_buffer_t buft_alloc_buffer(ggml_backend_buffer_type_t buft, size_t size) {
    ggml_backend_buffer_t buf = ggml_backend_buft_alloc_buffer(ggml_backend_cpu_buffer_type(), size);
    if (buf) {
        buf->buft = buft;
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

/* ---- backend (stream): ggml's CPU backend does the work ---- */

static const char *backend_get_name(ggml_backend_t backend) {
    (void)backend;
    return "MTL0";
}

static void backend_free(ggml_backend_t backend) {
    ggml_backend_free((ggml_backend_t)backend->context);
    free(backend);
}

static enum ggml_status backend_graph_compute(ggml_backend_t backend, struct ggml_cgraph *cgraph) {
    return ggml_backend_graph_compute((ggml_backend_t)backend->context, cgraph);
}

static const struct ggml_backend_i standin_backend_i = {
    .get_name = backend_get_name,
    .free = backend_free,
    .graph_compute = backend_graph_compute,
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
    /* Metal says async and events too; this stand-in is synchronous */
    props->caps.async = false;
    props->caps.host_buffer = false;
    props->caps.buffer_from_host_ptr = true;
    props->caps.events = false;
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

static bool dev_supports_op(ggml_backend_dev_t dev, const struct ggml_tensor *op) {
    (void)dev;
    (void)op;
    return true; /* every op of a llama layer, as Metal */
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
    return (op->op == GGML_OP_MUL_MAT || op->op == GGML_OP_MUL_MAT_ID) && op->ne[1] >= 32;
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
