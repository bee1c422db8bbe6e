/* Loads every backend ggml finds (GGML_BACKEND_PATH adds ours), lists the devices and each
 * registry's features as `llama-cli --list-devices` and a system-info line would, then exits.
 * With LIST_INIT=NAME it also creates and frees a backend of device NAME, found by name after
 * the loads as llama.cpp's `-dev NAME` finds it (and refused, as there, if it is a CPU device).
 * LIST_LOADS=N calls ggml_backend_load_all N times: llama.cpp's common loads lazily, once for
 * each of `-dev`, `--list-devices`, `-ot` it parses (llama.cpp#22290).
 * Run by tests/loading.rs. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ggml-backend.h"

typedef struct {
    const char *name;
    const char *value;
} feature;
typedef const feature *(*get_features_fn)(ggml_backend_reg_t);

int main(void) {
    const char *loads = getenv("LIST_LOADS");
    for (int n = loads ? atoi(loads) : 1; n > 0; n--) {
        ggml_backend_load_all();
    }
    for (size_t i = 0; i < ggml_backend_dev_count(); i++) {
        ggml_backend_dev_t dev = ggml_backend_dev_get(i);
        size_t free_mem = 0, total_mem = 0;
        ggml_backend_dev_memory(dev, &free_mem, &total_mem);
        printf("device %s: %s (%zu/%zu bytes, type %d)\n", ggml_backend_dev_name(dev),
               ggml_backend_dev_description(dev), free_mem, total_mem,
               (int)ggml_backend_dev_type(dev));
    }
    for (size_t i = 0; i < ggml_backend_reg_count(); i++) {
        ggml_backend_reg_t reg = ggml_backend_reg_get(i);
        get_features_fn get =
            (get_features_fn)ggml_backend_reg_get_proc_address(reg, "ggml_backend_get_features");
        for (const feature *f = get ? get(reg) : NULL; f && f->name; f++) {
            printf("feature %s %s=%s\n", ggml_backend_reg_name(reg), f->name, f->value);
        }
    }
    const char *init = getenv("LIST_INIT");
    if (init && *init) {
        ggml_backend_dev_t dev = ggml_backend_dev_by_name(init);
        if (dev && ggml_backend_dev_type(dev) == GGML_BACKEND_DEVICE_TYPE_CPU) {
            dev = NULL;
        }
        ggml_backend_t b = dev ? ggml_backend_dev_init(dev, NULL) : NULL;
        if (!b) {
            fprintf(stderr, "list_devices: no backend for %s\n", init);
            return 1;
        }
        ggml_backend_free(b);
    }
    return 0;
}
