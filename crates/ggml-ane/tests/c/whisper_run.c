/* Runs a whisper model through libwhisper and writes its decoder logits, for the end-to-end tests.
 *
 * usage: whisper-run MODEL.bin OUT.f32 [N_STEPS]
 *
 * Loads backends as whisper-cli does (ggml_backend_load_all: modules next to the executable or in
 * the current folder, then the one GGML_BACKEND_PATH names), then: a fixed synthetic audio (3 s
 * at 16 kHz: three tones and deterministic noise) -> log mel -> the encoder (n_audio_ctx
 * positions) -> N_STEPS (default 8) greedy decoder steps from the start-of-transcript sequence
 * (SOT, en, transcribe on a multilingual model; then no-timestamps), each taking the plain argmax
 * (no token suppression). Writes N_STEPS x n_vocab little-endian f32 values (each step's logits
 * for its last token) and prints on stdout "prompt: ..." (the SOT sequence), "tokens: ..." (the
 * N_STEPS chosen ids), "n_vocab N" and "ggml VERSION". Fails on a non-finite logit.
 *
 * WHISPER_USE_GPU=1 lets whisper take a GPU device (default 0: none; whisper takes every ACCEL
 * device either way); WHISPER_FLASH_ATTN=1 turns flash attention on (default off, although
 * whisper's own default is on).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ggml-backend.h"
#include "whisper.h"

#define SAMPLE_RATE 16000
#define N_SAMPLES (3 * SAMPLE_RATE)
#define N_THREADS 2
#define MAX_PROMPT 4

static int fail(const char *what) {
    fprintf(stderr, "whisper-run: %s\n", what);
    return 1;
}

static int env_flag(const char *name) {
    const char *v = getenv(name);
    return v && strcmp(v, "1") == 0;
}

/* Tones at 440, 1000 and 3000 Hz plus noise from a fixed LCG (not rand(): the same on every libc). */
static void make_audio(float *pcm) {
    const double pi = 3.14159265358979323846;
    unsigned int state = 12345;
    for (int i = 0; i < N_SAMPLES; i++) {
        const double t = (double)i / SAMPLE_RATE;
        state = state * 1664525u + 1013904223u;
        const double noise = (double)(state >> 8) / (double)(1u << 24) - 0.5;
        pcm[i] = (float)(0.3 * sin(2 * pi * 440 * t) + 0.2 * sin(2 * pi * 1000 * t) +
                         0.1 * sin(2 * pi * 3000 * t) + 0.05 * noise);
    }
}

int main(int argc, char **argv) {
    if (argc != 3 && argc != 4) {
        return fail("usage: whisper-run MODEL.bin OUT.f32 [N_STEPS]");
    }
    const int n_steps = argc == 4 ? atoi(argv[3]) : 8;
    if (n_steps < 1 || n_steps > 400) {
        return fail("N_STEPS must be in 1..400");
    }

    ggml_backend_load_all();

    struct whisper_context_params cp = whisper_context_default_params();
    cp.use_gpu = env_flag("WHISPER_USE_GPU");
    cp.flash_attn = env_flag("WHISPER_FLASH_ATTN");
    struct whisper_context *ctx = whisper_init_from_file_with_params(argv[1], cp);
    if (!ctx) {
        return fail("cannot load the model");
    }
    const int n_vocab = whisper_n_vocab(ctx);

    static float pcm[N_SAMPLES];
    make_audio(pcm);
    if (whisper_pcm_to_mel(ctx, pcm, N_SAMPLES, N_THREADS) != 0) {
        return fail("whisper_pcm_to_mel failed");
    }
    if (whisper_encode(ctx, 0, N_THREADS) != 0) {
        return fail("whisper_encode failed");
    }

    /* the prompt whisper_full starts from, with language en and no timestamps */
    whisper_token prompt[MAX_PROMPT];
    int n_prompt = 0;
    prompt[n_prompt++] = whisper_token_sot(ctx);
    if (whisper_is_multilingual(ctx)) {
        const int en = whisper_lang_id("en");
        if (en < 0) {
            return fail("no language id for en");
        }
        prompt[n_prompt++] = whisper_token_lang(ctx, en);
        prompt[n_prompt++] = whisper_token_transcribe(ctx);
    }
    prompt[n_prompt++] = whisper_token_not(ctx);

    FILE *out = fopen(argv[2], "wb");
    if (!out) {
        return fail("cannot open the output file");
    }
    whisper_token *chosen = malloc(sizeof(whisper_token) * (size_t)n_steps);
    if (!chosen) {
        return fail("out of memory");
    }

    /* step 0 decodes the prompt, each later step the token chosen before it */
    const whisper_token *batch = prompt;
    int n_batch = n_prompt;
    int n_past = 0;
    for (int step = 0; step < n_steps; step++) {
        if (whisper_decode(ctx, batch, n_batch, n_past, N_THREADS) != 0) {
            return fail("whisper_decode failed");
        }
        /* logits are kept per batch position; only the last one's are computed */
        const float *logits = whisper_get_logits(ctx) + (size_t)(n_batch - 1) * n_vocab;
        int best = 0;
        for (int i = 0; i < n_vocab; i++) {
            if (!isfinite(logits[i])) {
                fprintf(stderr, "whisper-run: step %d: logit %d is not finite\n", step, i);
                return 1;
            }
            if (logits[i] > logits[best]) {
                best = i;
            }
        }
        if (fwrite(logits, sizeof(float), (size_t)n_vocab, out) != (size_t)n_vocab) {
            return fail("cannot write the logits");
        }
        chosen[step] = best;
        n_past += n_batch;
        batch = &chosen[step];
        n_batch = 1;
    }
    if (fclose(out) != 0) {
        return fail("cannot write the logits");
    }

    printf("prompt:");
    for (int i = 0; i < n_prompt; i++) {
        printf(" %d", prompt[i]);
    }
    printf("\ntokens:");
    for (int i = 0; i < n_steps; i++) {
        printf(" %d", chosen[i]);
    }
    printf("\nn_vocab %d\n", n_vocab);
    printf("ggml %s\n", ggml_version());
    free(chosen);
    whisper_free(ctx);
    return 0;
}
