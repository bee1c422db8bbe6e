/* Prints the sizes, offsets and enum values ggml-ane's `abi` module mirrors, as the pinned
 * ggml headers define them. Compiled and run by tests/layout_tests.rs. */
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>

#include "ggml.h"
#include "ggml-backend.h"
#include "ggml-backend-impl.h"
#include "ggml-impl.h"

/* ggml-impl.h's static helpers name ggml_abort; this program never calls them nor links ggml */
void ggml_abort(const char *file, int line, const char *fmt, ...) {
    (void)file; (void)line; (void)fmt;
    abort();
}

#define SIZE(T) printf("%s %zu\n", #T, sizeof(struct T))
#define OFF(T, F) printf("%s.%s %zu\n", #T, #F, offsetof(struct T, F))
#define VAL(V) printf("%s %d\n", #V, (int)(V))

int main(void) {
    SIZE(ggml_tensor);
    OFF(ggml_tensor, ne); OFF(ggml_tensor, nb); OFF(ggml_tensor, op); OFF(ggml_tensor, op_params);
    OFF(ggml_tensor, flags); OFF(ggml_tensor, src); OFF(ggml_tensor, view_src); OFF(ggml_tensor, data);
    OFF(ggml_tensor, name); OFF(ggml_tensor, extra);
    SIZE(ggml_type_traits);
    OFF(ggml_type_traits, type_size); OFF(ggml_type_traits, is_quantized); OFF(ggml_type_traits, to_float);
    SIZE(ggml_backend_reg); OFF(ggml_backend_reg, iface); OFF(ggml_backend_reg, context);
    SIZE(ggml_backend_reg_i);
    SIZE(ggml_backend_device); OFF(ggml_backend_device, reg);
    SIZE(ggml_backend_device_i);
    OFF(ggml_backend_device_i, supports_op); OFF(ggml_backend_device_i, offload_op);
    OFF(ggml_backend_device_i, event_synchronize);
    SIZE(ggml_backend); OFF(ggml_backend, iface); OFF(ggml_backend, device); OFF(ggml_backend, context);
    SIZE(ggml_backend_i); OFF(ggml_backend_i, graph_compute); OFF(ggml_backend_i, graph_optimize);
    SIZE(ggml_backend_dev_props); OFF(ggml_backend_dev_props, type); OFF(ggml_backend_dev_props, device_id);
    OFF(ggml_backend_dev_props, caps);
    SIZE(ggml_backend_dev_caps);
    SIZE(ggml_threadpool_params); OFF(ggml_threadpool_params, n_threads); OFF(ggml_threadpool_params, poll);
    SIZE(ggml_hash_set); OFF(ggml_hash_set, used); OFF(ggml_hash_set, keys);
    OFF(ggml_cgraph, n_nodes); OFF(ggml_cgraph, nodes); OFF(ggml_cgraph, use_counts);
    OFF(ggml_cgraph, visited_hash_set);
    printf("ggml_bitset_t %zu\n", sizeof(ggml_bitset_t));
    VAL(GGML_OP_MUL_MAT); VAL(GGML_OP_RESHAPE); VAL(GGML_OP_VIEW); VAL(GGML_OP_PERMUTE); VAL(GGML_OP_TRANSPOSE);
    VAL(GGML_TYPE_BF16); VAL(GGML_TYPE_I32);
#ifndef LAYOUT_NO_COMPUTE_FLAG /* ggml before 0.9.6 has none */
    VAL(GGML_TENSOR_FLAG_COMPUTE);
#endif
    VAL(GGML_TENSOR_FLAG_INPUT); VAL(GGML_TENSOR_FLAG_OUTPUT); VAL(GGML_BACKEND_DEVICE_TYPE_ACCEL); VAL(GGML_BACKEND_DEVICE_TYPE_IGPU);
    VAL(GGML_BACKEND_DEVICE_TYPE_GPU);
    VAL(GGML_BACKEND_BUFFER_USAGE_WEIGHTS); VAL(GGML_BACKEND_BUFFER_USAGE_ANY); VAL(GGML_STATUS_ABORTED);
    VAL(GGML_BACKEND_API_VERSION);
    return 0;
}
