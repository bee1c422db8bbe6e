"""Writes a tiny GGUF with random weights, for the end-to-end tests.

usage: tiny_model.py OUT.gguf {f16,q8_0} [--arch llama|command-r|gpt2] [--tokenizer none|test]
       [--dim 512 --ffn 1376 --layers 4 --vocab 2048 --heads 8 --kv-heads 4]

Architectures (each with a different graph shape for the backend's walker):
- llama: sequential blocks (RMS norm -> attention -> residual -> RMS norm -> FFN -> residual).
- command-r: parallel blocks (Cohere): one LayerNorm'd input read by attention *and* the FFN,
  output tied to the token embedding, a logit scale. The FFN reads the normed input in a later
  graph split than attention's, the case where a fused block's intermediate crosses splits.
- llama with `--experts N --experts-used K`: a mixture of experts in Mixtral's form (llama
  architecture, `ffn_gate_inp` router, `ffn_{gate,up,down}_exps` stacked experts, no shared
  expert): llama.cpp computes the experts' matmuls as MUL_MAT_ID.
- gpt2: LayerNorms with biases, one Q/K/V matrix with its bias, learned positions, and a GELU
  FFN with biases (fc1 -> + b1 -> GELU -> fc2 -> + b2 -> residual): whisper's block shapes in
  a llama.cpp graph.

No tokenizer by default: tokenizer.ggml.model = "none", so the test feeds token ids directly.
llama-server cannot serve that (it turns every sampled token into text, which a "none"
vocabulary refuses with an abort), so `--tokenizer test` writes llama.cpp's test vocabulary
instead: one entry per id (its hex, which is also how that tokenizer prints a token), no
special tokens, no end-of-generation token.

Weights are scaled by 1/sqrt(fan_in) so activations stay O(1) through the layers and the logits
are not all near zero (a comparison of near-zero numbers would prove little).
"""
import argparse

import gguf
import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("kind", choices=["f16", "q8_0"])
    ap.add_argument("--arch", choices=["llama", "command-r", "gpt2"], default="llama")
    ap.add_argument("--tokenizer", choices=["none", "test"], default="none")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--ffn", type=int, default=1376)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--experts", type=int, default=0, help="llama only: experts per layer")
    ap.add_argument("--experts-used", type=int, default=2, help="experts each token uses")
    a = ap.parse_args()

    rng = np.random.default_rng(a.seed)
    head_dim = a.dim // a.heads
    kv_dim = head_dim * a.kv_heads
    llama = a.arch == "llama"
    gpt2 = a.arch == "gpt2"
    if gpt2:
        a.kv_heads = a.heads
        kv_dim = a.dim

    w = gguf.GGUFWriter(a.out, a.arch)
    w.add_name(f"ggml-ane tiny {a.arch}")
    w.add_context_length(1024)
    w.add_embedding_length(a.dim)
    w.add_block_count(a.layers)
    w.add_feed_forward_length(a.ffn)
    w.add_head_count(a.heads)
    w.add_head_count_kv(a.kv_heads)
    moe = a.experts > 0
    if moe:
        assert llama, "experts: llama architecture (Mixtral's form) only"
        w.add_expert_count(a.experts)
        w.add_expert_used_count(a.experts_used)
    if gpt2:
        w.add_layer_norm_eps(1e-5)
    elif llama:
        w.add_rope_dimension_count(head_dim)
        w.add_layer_norm_rms_eps(1e-5)
    else:
        w.add_layer_norm_eps(1e-5)
        # Command-R scales its logits (0.0625 in the released models); a milder one keeps
        # the tiny model's logits spread out enough to compare
        w.add_logit_scale(0.5)
    w.add_vocab_size(a.vocab)
    w.add_tokenizer_model(a.tokenizer)
    if a.tokenizer == "test":
        w.add_token_list([f"{i:x}" for i in range(a.vocab)])
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if a.kind == "f16" else gguf.LlamaFileType.MOSTLY_Q8_0)

    def matrix(name: str, rows: int, cols: int) -> None:
        # numpy [rows, cols] is ggml ne = [cols, rows]: cols is K, the reduced dimension
        m = (rng.standard_normal((rows, cols)) / np.sqrt(cols)).astype(np.float32)
        if a.kind == "f16":
            w.add_tensor(name, m.astype(np.float16))
        else:
            q = gguf.quants.quantize(m, gguf.GGMLQuantizationType.Q8_0)
            w.add_tensor(name, q, raw_dtype=gguf.GGMLQuantizationType.Q8_0)

    def norm(name: str) -> None:
        w.add_tensor(name, (1.0 + 0.1 * rng.standard_normal(a.dim)).astype(np.float32))
        if gpt2:
            bias(name.replace(".weight", ".bias"), a.dim)

    def bias(name: str, n: int) -> None:
        w.add_tensor(name, (0.1 * rng.standard_normal(n)).astype(np.float32))

    emb = rng.standard_normal((a.vocab, a.dim)).astype(np.float32)
    if not llama:
        # tied: the embedding is also the output head, so rows of ~unit norm keep logits O(1)
        emb /= np.sqrt(a.dim) / 4
    w.add_tensor("token_embd.weight", emb.astype(np.float16))
    if gpt2:
        pos = 0.1 * rng.standard_normal((1024, a.dim))
        w.add_tensor("position_embd.weight", pos.astype(np.float32))
        for i in range(a.layers):
            p = f"blk.{i}."
            norm(p + "attn_norm.weight")
            matrix(p + "attn_qkv.weight", 3 * a.dim, a.dim)
            bias(p + "attn_qkv.bias", 3 * a.dim)
            matrix(p + "attn_output.weight", a.dim, a.dim)
            bias(p + "attn_output.bias", a.dim)
            norm(p + "ffn_norm.weight")
            matrix(p + "ffn_up.weight", a.ffn, a.dim)
            bias(p + "ffn_up.bias", a.ffn)
            matrix(p + "ffn_down.weight", a.dim, a.ffn)
            bias(p + "ffn_down.bias", a.dim)
    for i in range(a.layers if not gpt2 else 0):
        p = f"blk.{i}."
        norm(p + "attn_norm.weight")
        matrix(p + "attn_q.weight", a.dim, a.dim)
        matrix(p + "attn_k.weight", kv_dim, a.dim)
        matrix(p + "attn_v.weight", kv_dim, a.dim)
        matrix(p + "attn_output.weight", a.dim, a.dim)
        if llama:
            norm(p + "ffn_norm.weight")
        if moe:
            # the router [dim -> experts], and each expert's FFN stacked: numpy
            # [experts, rows, cols] is ggml ne = [cols, rows, experts]
            # the router's scores far apart (x 32): fp16 rounding anywhere before it (attention
            # on the engine) must not flip a token's top-2 experts, or the comparison with the
            # CPU would measure routing luck, not arithmetic
            router = rng.standard_normal((a.experts, a.dim)) * 32 / np.sqrt(a.dim)
            w.add_tensor(p + "ffn_gate_inp.weight", router.astype(np.float32))
            for name, rows, cols in (("gate", a.ffn, a.dim), ("up", a.ffn, a.dim), ("down", a.dim, a.ffn)):
                m = rng.standard_normal((a.experts, rows, cols)) / np.sqrt(cols)
                w.add_tensor(p + f"ffn_{name}_exps.weight", m.astype(np.float16))
            continue
        matrix(p + "ffn_gate.weight", a.ffn, a.dim)
        matrix(p + "ffn_up.weight", a.ffn, a.dim)
        matrix(p + "ffn_down.weight", a.dim, a.ffn)
    norm("output_norm.weight")
    if llama or gpt2:
        matrix("output.weight", a.vocab, a.dim)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    main()
