/* Runs a GGUF model through libllama and writes its logits, for the end-to-end tests.
 *
 * usage: logits MODEL.gguf N_PROMPT OUT.f32
 *
 * Loads every backend ggml can find (GGML_BACKEND_PATH adds ours), without weight repacking
 * (the CPU's repacked layouts are private to it), evaluates N_PROMPT deterministic token ids in
 * one batch with logits for every position, then one more token as a decode step. Writes
 * (N_PROMPT + 1) x n_vocab little-endian f32 values (2 x n_vocab with LOGITS_LAST_ONLY=1) and prints "n_vocab N" and "ggml VERSION"
 * on stdout.
 *
 * LOGITS_SPLIT_MODE=tensor splits every layer across the listed devices (llama.cpp's `-sm
 * tensor`, with flash attention on, which it requires).
 *
 * RPC_SERVERS=host:port,... adds ggml-rpc servers as llama.cpp's `--rpc` does (devices RPC0,
 * RPC1, ... in that order; name them in LOGITS_DEVICES).
 *
 * For the beside-Metal test, as llama.cpp's `--device` / `--tensor-split` / `-ngl 99` would:
 * LOGITS_EXTRA_BACKEND=path loads one more backend module, LOGITS_DEVICES=ANE,MTL0 names the
 * model devices in order, LOGITS_TENSOR_SPLIT=0,1 gives their shares of the layers (all layers
 * offloaded). The model is mmapped as llama.cpp's default load mode does.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ggml-backend.h"
#include "llama.h"

static int fail(const char *what) {
    fprintf(stderr, "logits: %s\n", what);
    return 1;
}

static int write_rows(FILE *out, struct llama_context *ctx, int first, int count, int n_vocab) {
    for (int i = first; i < first + count; i++) {
        const float *row = llama_get_logits_ith(ctx, i);
        if (!row || fwrite(row, sizeof(float), (size_t)n_vocab, out) != (size_t)n_vocab) {
            return 0;
        }
    }
    return 1;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        return fail("usage: logits MODEL.gguf N_PROMPT OUT.f32");
    }
    const int n_prompt = atoi(argv[2]);
    if (n_prompt < 1 || n_prompt > 1000) {
        return fail("N_PROMPT must be in 1..1000");
    }

    ggml_backend_load_all();
    const char *extra = getenv("LOGITS_EXTRA_BACKEND");
    if (extra && *extra && !ggml_backend_load(extra)) {
        return fail("cannot load LOGITS_EXTRA_BACKEND");
    }
    llama_backend_init();

    const char *servers = getenv("RPC_SERVERS");
    if (servers && *servers) {
        ggml_backend_reg_t rpc = ggml_backend_reg_by_name("RPC");
        typedef ggml_backend_reg_t (*add_server_t)(const char *);
        add_server_t add = rpc ? (add_server_t)ggml_backend_reg_get_proc_address(rpc, "ggml_backend_rpc_add_server") : NULL;
        if (!add) {
            return fail("no RPC backend with ggml_backend_rpc_add_server");
        }
        char buf[512];
        snprintf(buf, sizeof buf, "%s", servers);
        for (char *ep = strtok(buf, ","); ep; ep = strtok(NULL, ",")) {
            ggml_backend_reg_t reg = add(ep);
            if (!reg) {
                return fail("cannot reach an RPC server");
            }
            ggml_backend_register(reg);
        }
    }

    struct llama_model_params mp = llama_model_default_params();
    mp.use_extra_bufts = false; /* the --no-repack of llama.cpp's tools */
    ggml_backend_dev_t devices[8] = {0};
    float split[128] = {0};
    const char *names = getenv("LOGITS_DEVICES");
    if (names && *names) {
        char buf[256];
        snprintf(buf, sizeof buf, "%s", names);
        int n = 0;
        for (char *name = strtok(buf, ","); name && n < 7; name = strtok(NULL, ",")) {
            devices[n] = ggml_backend_dev_by_name(name);
            if (!devices[n]) {
                fprintf(stderr, "logits: no device %s\n", name);
                return 1;
            }
            n++;
        }
        mp.devices = devices;
        mp.n_gpu_layers = 99;
        const char *shares = getenv("LOGITS_TENSOR_SPLIT");
        if (shares && *shares) {
            snprintf(buf, sizeof buf, "%s", shares);
            int i = 0;
            for (char *v = strtok(buf, ","); v && i < 128; v = strtok(NULL, ",")) {
                split[i++] = (float)atof(v);
            }
            mp.tensor_split = split;
        }
    }
    const char *split_mode = getenv("LOGITS_SPLIT_MODE");
    int tensor_split_mode = split_mode && strcmp(split_mode, "tensor") == 0;
    if (tensor_split_mode) {
        mp.split_mode = LLAMA_SPLIT_MODE_TENSOR;
    }
    struct llama_model *model = llama_model_load_from_file(argv[1], mp);
    if (!model) {
        return fail("cannot load the model");
    }
    const int n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(model));

    struct llama_context_params cp = llama_context_default_params();
    cp.n_ctx = 1024;
    cp.n_batch = 1024;
    cp.n_ubatch = 1024;
    cp.n_threads = 2;
    cp.n_threads_batch = 2;
    if (tensor_split_mode) {
        cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_ENABLED;
    }
    struct llama_context *ctx = llama_init_from_model(model, cp);
    if (!ctx) {
        return fail("cannot create a context");
    }

    FILE *out = fopen(argv[3], "wb");
    if (!out) {
        return fail("cannot open the output file");
    }

    /* LOGITS_LAST_ONLY=1: logits for the prompt's last token only, as llama-cli asks (the graph
     * then keeps one row from the last layer on: llama.cpp's inp_out_ids) */
    const char *last_only_env = getenv("LOGITS_LAST_ONLY");
    const int last_only = last_only_env && strcmp(last_only_env, "1") == 0;
    struct llama_batch batch = llama_batch_init(n_prompt, 0, 1);
    for (int i = 0; i < n_prompt; i++) {
        batch.token[i] = (llama_token)((i * 7919 + 13) % n_vocab);
        batch.pos[i] = i;
        batch.n_seq_id[i] = 1;
        batch.seq_id[i][0] = 0;
        batch.logits[i] = !last_only || i == n_prompt - 1;
    }
    batch.n_tokens = n_prompt;
    if (llama_decode(ctx, batch) != 0) {
        return fail("prompt decode failed");
    }
    if (last_only ? !write_rows(out, ctx, n_prompt - 1, 1, n_vocab)
                  : !write_rows(out, ctx, 0, n_prompt, n_vocab)) {
        return fail("cannot write the prompt logits");
    }

    /* LOGITS_PAUSE_MS: a pause between the prompt and the decode step (a test stops a server
     * meanwhile) */
    const char *pause = getenv("LOGITS_PAUSE_MS");
    if (pause && *pause) {
        usleep((useconds_t)atoi(pause) * 1000);
    }

    batch.token[0] = (llama_token)(n_vocab / 3);
    batch.pos[0] = n_prompt;
    batch.logits[0] = 1;
    batch.n_tokens = 1;
    if (llama_decode(ctx, batch) != 0) {
        return fail("decode step failed");
    }
    if (!write_rows(out, ctx, 0, 1, n_vocab)) {
        return fail("cannot write the decode logits");
    }

    fclose(out);
    printf("n_vocab %d\n", n_vocab);
    printf("ggml %s\n", ggml_version());
    llama_batch_free(batch);
    llama_free(ctx);
    llama_model_free(model);
    llama_backend_free();
    return 0;
}
