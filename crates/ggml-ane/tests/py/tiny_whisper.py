"""Writes a tiny whisper model with random weights, for the whisper.cpp end-to-end tests.

usage: tiny_whisper.py OUT.bin [--seed 1] [--ftype f16|f32] [--state 128] [--heads 2]
       [--layers 2] [--vocab 51865]

The legacy ggml file that whisper.cpp's whisper_model_load reads (what its
models/convert-pt-to-ggml.py writes): magic, eleven int32 hparams, the mel filterbank, the
vocabulary, then each tensor as n_dims, name length, type, dims (ggml order: innermost first),
name, data. Read by whisper.cpp 1.8.3 and 1.8.5 alike.

Real where the encoder's workload is: 1500 audio positions (30 s of 16 kHz audio), 80 mels with
whisper's own filterbank (librosa's Slaney mel filters), sinusoidal encoder positions. Small
elsewhere: width 128 with 2 heads (head size 64, as in every released whisper), 2 encoder and 2
decoder layers. The vocabulary size fixes whisper's special token ids (51864: English only,
EOT 50256; 51865: multilingual, EOT 50257, SOT 50258, language tokens after it); the file lists
the ordinary tokens only (synthetic strings: each id in hex) and whisper.cpp names the special
ones itself.

--ftype f32 writes every tensor as f32 (whisper.cpp's ftype 0). Both versions load it, but their
encoder aborts on the CPU: conv1d's im2col wants an f16 kernel (GGML_ASSERT in
ggml_compute_forward_im2col_f16), so such a file has no CPU reference. f16 is the default.

Matrices are N(0, 1/fan_in) so activations stay O(1) through the layers (attention's query and
key: twice that, see attention()); the token embedding is also the output head (tied, as in
whisper), so logits come out about N(0, 1). Deterministic from --seed.
"""
import argparse
import struct

import numpy as np

GGML_FILE_MAGIC = 0x67676D6C
SAMPLE_RATE = 16000
N_FFT = 400
N_AUDIO_CTX = 1500
N_TEXT_CTX = 448
N_MELS = 80


def mel_filters(n_mels: int) -> np.ndarray:
    """librosa.filters.mel(sr=16000, n_fft=400, n_mels) with its defaults (Slaney scale and
    norm), the filterbank whisper ships: [n_mels, 1 + n_fft/2]."""
    f_sp, min_log_hz, min_log_mel, logstep = 200.0 / 3, 1000.0, 15.0, np.log(6.4) / 27.0

    def hz_to_mel(f):
        f = np.asarray(f, dtype=np.float64)
        log_part = min_log_mel + np.log(np.maximum(f, min_log_hz) / min_log_hz) / logstep
        return np.where(f >= min_log_hz, log_part, f / f_sp)

    def mel_to_hz(m):
        return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)

    fft_freqs = np.linspace(0, SAMPLE_RATE / 2, 1 + N_FFT // 2)
    mel_freqs = mel_to_hz(np.linspace(hz_to_mel(0.0), hz_to_mel(SAMPLE_RATE / 2), n_mels + 2))
    widths = np.diff(mel_freqs)
    ramps = mel_freqs[:, None] - fft_freqs[None, :]
    rising = -ramps[:-2] / widths[:-1, None]
    falling = ramps[2:] / widths[1:, None]
    weights = np.maximum(0, np.minimum(rising, falling))
    weights *= (2.0 / (mel_freqs[2:] - mel_freqs[:-2]))[:, None]
    return weights.astype(np.float32)


def sinusoids(length: int, channels: int) -> np.ndarray:
    """whisper's encoder positional embedding: [length, channels]."""
    log_timescale_increment = np.log(10000) / (channels // 2 - 1)
    inv_timescales = np.exp(-log_timescale_increment * np.arange(channels // 2))
    scaled_time = np.arange(length)[:, None] * inv_timescales[None, :]
    return np.concatenate([np.sin(scaled_time), np.cos(scaled_time)], axis=1).astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--ftype", choices=["f16", "f32"], default="f16")
    ap.add_argument("--state", type=int, default=128)
    ap.add_argument("--heads", type=int, default=2)
    ap.add_argument("--layers", type=int, default=2, help="encoder layers, and as many decoder layers")
    ap.add_argument("--vocab", type=int, choices=[51864, 51865], default=51865)
    a = ap.parse_args()
    if a.state % a.heads:
        ap.error("--state must be a multiple of --heads")

    rng = np.random.default_rng(a.seed)
    f16 = a.ftype == "f16"
    n = a.state

    with open(a.out, "wb") as out:
        out.write(struct.pack(
            "<12i", GGML_FILE_MAGIC,
            a.vocab, N_AUDIO_CTX, n, a.heads, a.layers,
            N_TEXT_CTX, n, a.heads, a.layers,
            N_MELS, 1 if f16 else 0,
        ))

        filters = mel_filters(N_MELS)
        out.write(struct.pack("<2i", *filters.shape))
        out.write(filters.tobytes())

        # the ordinary tokens: ids below EOT
        n_ordinary = 50257 if a.vocab >= 51865 else 50256
        out.write(struct.pack("<i", n_ordinary))
        for i in range(n_ordinary):
            word = f"{i:x}".encode()
            out.write(struct.pack("<i", len(word)) + word)

        def tensor(name: str, data: np.ndarray) -> None:
            # like convert-pt-to-ggml.py: in an f16 file, only tensors of 2+ dims are f16, and
            # not the conv biases or the positional embeddings
            kept_f32 = name.endswith(("conv1.bias", "conv2.bias", "positional_embedding"))
            half = f16 and data.ndim >= 2 and not kept_f32
            data = data.astype(np.float16 if half else np.float32)
            word = name.encode()
            out.write(struct.pack("<3i", data.ndim, len(word), 1 if half else 0))
            out.write(struct.pack(f"<{data.ndim}i", *reversed(data.shape)))
            out.write(word)
            out.write(data.tobytes())

        def linear(prefix: str, rows: int, cols: int, bias: bool = True, gain: float = 1.0) -> None:
            # numpy [rows, cols] is ggml ne = [cols, rows]: cols is the reduced dimension
            tensor(prefix + ".weight", gain * rng.standard_normal((rows, cols)) / np.sqrt(cols))
            if bias:
                tensor(prefix + ".bias", 0.02 * rng.standard_normal(rows))

        def layer_norm(prefix: str) -> None:
            tensor(prefix + ".weight", 1.0 + 0.1 * rng.standard_normal(n))
            tensor(prefix + ".bias", 0.1 * rng.standard_normal(n))

        def attention(prefix: str) -> None:
            # query and key at twice the scale: scores of std ~4, so attention picks out a few
            # positions as a trained model's does, instead of averaging all 1500 (which would
            # leave the logits nearly blind to the audio)
            linear(prefix + ".query", n, n, gain=2.0)
            linear(prefix + ".key", n, n, bias=False, gain=2.0)
            linear(prefix + ".value", n, n)
            linear(prefix + ".out", n, n)

        def mlp(prefix: str) -> None:
            layer_norm(prefix + "_ln")
            linear(prefix + ".0", 4 * n, n)
            linear(prefix + ".2", n, 4 * n)

        tensor("encoder.positional_embedding", sinusoids(N_AUDIO_CTX, n))
        # conv weights [out, in, kernel 3]; biases [out, 1] as the converter reshapes them
        tensor("encoder.conv1.weight", rng.standard_normal((n, N_MELS, 3)) / np.sqrt(3 * N_MELS))
        tensor("encoder.conv1.bias", 0.02 * rng.standard_normal((n, 1)))
        tensor("encoder.conv2.weight", rng.standard_normal((n, n, 3)) / np.sqrt(3 * n))
        tensor("encoder.conv2.bias", 0.02 * rng.standard_normal((n, 1)))
        for i in range(a.layers):
            p = f"encoder.blocks.{i}"
            layer_norm(p + ".attn_ln")
            attention(p + ".attn")
            mlp(p + ".mlp")
        layer_norm("encoder.ln_post")

        tensor("decoder.positional_embedding", 0.1 * rng.standard_normal((N_TEXT_CTX, n)))
        tensor("decoder.token_embedding.weight", rng.standard_normal((a.vocab, n)) / np.sqrt(n))
        for i in range(a.layers):
            p = f"decoder.blocks.{i}"
            layer_norm(p + ".attn_ln")
            attention(p + ".attn")
            layer_norm(p + ".cross_attn_ln")
            attention(p + ".cross_attn")
            mlp(p + ".mlp")
        layer_norm("decoder.ln")


if __name__ == "__main__":
    main()
