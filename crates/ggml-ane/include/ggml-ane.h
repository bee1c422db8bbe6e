// ggml-ane: a ggml backend that runs MUL_MAT on the Apple Neural Engine.
// Load it with GGML_BACKEND_PATH=/path/to/libggml_ane.so (.dylib on macOS), or link it and
// register ggml_backend_ane_reg() yourself.
#pragma once

#include "ggml.h"
#include "ggml-backend.h"

#ifdef __cplusplus
extern "C" {
#endif

// The backend registry (one device, "ANE").
GGML_BACKEND_API ggml_backend_reg_t ggml_backend_ane_reg(void);

// A new backend instance on the ANE device; NULL if no engine can be created.
GGML_BACKEND_API ggml_backend_t ggml_backend_ane_init(void);

// True if the backend is an ANE backend.
GGML_BACKEND_API bool ggml_backend_is_ane(ggml_backend_t backend);

#ifdef __cplusplus
}
#endif
