/* Loads every backend ggml finds (GGML_BACKEND_PATH adds ours), lists the devices and each
 * registry's features as `llama-cli --list-devices` and a system-info line would, then exits.
 * With LIST_INIT=NAME it also creates and frees a backend of device NAME.
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
    ggml_backend_load_all();
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
        ggml_backend_t b = dev ? ggml_backend_dev_init(dev, NULL) : NULL;
        if (!b) {
            fprintf(stderr, "list_devices: no backend for %s\n", init);
            return 1;
        }
        ggml_backend_free(b);
    }
    return 0;
}
