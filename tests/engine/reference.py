#!/usr/bin/python3
r"""Numerical reference for the lorad engine (issue 3): writes the fixtures that
the C tests compare against.

Run only to regenerate the committed fixtures, with Debian's python3-torch:

    /usr/bin/python3 tests/engine/reference.py --out tests/fixtures/engine \
        --lora-out tests/fixtures/lora

The output is deterministic (same bytes on every run with the same torch).

What it computes
----------------
A plain-torch transcription of Hugging Face `transformers`' modeling_llama,
modeling_mistral and modeling_qwen2 (eager attention path), for one sequence:

  x = embed_tokens[ids]
  per layer:
    h = RMSNorm(x)            h * rsqrt(mean(h^2) + eps), then * weight (fp32)
    q, k, v = h W^T (+ bias)  llama: bias iff attention_bias; qwen2: q/k/v
                              biases always, o_proj never; mistral: none.
                              Biases are added BEFORE RoPE.
    RoPE, rotate_half layout: dim i pairs with dim i + head_dim/2;
      inv_freq[i] = 1 / theta^(2i/head_dim), computed in fp32 exactly as
      transformers (`1.0 / (base ** (arange(0, d, 2).float() / d))`),
      optionally rewritten by llama3 rope_scaling (_compute_llama3_parameters),
      angle = fp32(position) * inv_freq[i] rounded to fp32, then cos/sin.
      q' = q*cos + rotate_half(q)*sin, rotate_half(x) = cat(-x2, x1).
    GQA: query head h reads kv head h // (n_heads / n_kv_heads).
    scores = (q k^T) * head_dim^-0.5, causal; with a sliding window W a query
      at position p sees keys at positions j with p - W < j <= p (W keys,
      itself included), exactly transformers' `kv_idx > q_idx - sliding_window`.
    softmax in fp32, @ v, o_proj (+ bias), residual add
    h = RMSNorm(x); x += down(silu(gate(h)) * up(h))   (+ biases iff mlp_bias)
  logits = RMSNorm(x) lm_head^T   (lm_head = embed_tokens when tied)

All compute is fp32.  F16 / BF16 weights are rounded to their dtype first
(round to nearest even) and the reference is computed from the rounded values
upcast to fp32, which is what the C engine does at load.

Self checks (the script fails loudly when one does not hold):
  * full-sequence forward == token-by-token forward over a KV cache;
  * the fp32 logits agree with an fp64 run of the same weights to 1e-5 of
    max|logit| (so the 1e-4 tolerance of the tests is reachable by a correct
    fp32 engine);
  * greedy continuation: every step's best logit beats the second by a margin
    (so a correct engine cannot flip a greedy token), at least two distinct
    tokens;
  * each feature case: the ablated run (the feature turned off) differs from
    the real one by more than 100 * tolerance * max|logit|.

LoRA (issue 4): `Model.linear` adds PEFT's y = W x + b + scaling * B (A x);
which modules are adapted, their rank and alpha follow PEFT 0.15
(peft_resolve: target_modules list / regex / "all-linear", exclude_modules,
layers_to_transform + layers_pattern, rank_pattern / alpha_pattern by the
first key in file order with re.match(r"(.*\.)?(KEY)$"), use_rslora).

See tests/fixtures/README.md for the fixture format and the list of cases.
"""

import argparse
import copy
import json
import math
import os
import shutil
import struct
import sys

import numpy as np
import torch

torch.set_num_threads(1)

TOL_REL = 1e-4          # the C tests' tolerance: max|d| <= TOL_REL * max|ref|
ABLATION_FACTOR = 100   # ablated logits must differ by more than this x TOL
FP64_AGREEMENT = 1e-5   # fp32 reference vs fp64 run, relative to max|logit|
GREEDY_MARGIN = 2e-3    # best - second best >= this * max|logit| at each step
N_GREEDY = 8

DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
TORCH_DTYPE_NAME = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}


# --------------------------------------------------------------------------
# configuration

def make_config(model_type="llama", hidden=32, ffn=40, layers=2, heads=4,
                kv_heads=None, head_dim=None, vocab=64, eps=1e-5,
                theta=10000.0, max_pos=128, tie=False, attention_bias=False,
                mlp_bias=False, rope_scaling=None, sliding_window=None,
                dtype="F32", bos=1, eos=2):
    """A config.json dictionary with the keys transformers writes."""
    cfg = {
        "architectures": [{"llama": "LlamaForCausalLM",
                           "mistral": "MistralForCausalLM",
                           "qwen2": "Qwen2ForCausalLM"}[model_type]],
        "model_type": model_type,
        "hidden_size": hidden,
        "intermediate_size": ffn,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads if kv_heads is not None else heads,
        "vocab_size": vocab,
        "rms_norm_eps": eps,
        "rope_theta": theta,
        "max_position_embeddings": max_pos,
        "tie_word_embeddings": tie,
        "hidden_act": "silu",
        "bos_token_id": bos,
        "eos_token_id": eos,
        "initializer_range": 0.02,
        "use_cache": True,
        "torch_dtype": TORCH_DTYPE_NAME[dtype],
    }
    if head_dim is not None:
        cfg["head_dim"] = head_dim
    if model_type == "llama":
        cfg["attention_bias"] = attention_bias
        cfg["mlp_bias"] = mlp_bias
        cfg["rope_scaling"] = rope_scaling
    elif model_type == "mistral":
        cfg["sliding_window"] = sliding_window
    elif model_type == "qwen2":
        # As Qwen2.5 checkpoints: a sliding_window value is present but
        # disabled by use_sliding_window = false.
        cfg["use_sliding_window"] = False
        cfg["sliding_window"] = max_pos
        cfg["max_window_layers"] = layers
        cfg["rope_scaling"] = rope_scaling
    return cfg


def cfg_head_dim(cfg):
    return cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]


def cfg_sliding_window(cfg):
    if cfg["model_type"] == "mistral":
        return cfg.get("sliding_window")
    if cfg["model_type"] == "qwen2" and cfg.get("use_sliding_window"):
        return cfg.get("sliding_window")
    return None


def has_bias(cfg):
    """(q/k/v bias, o bias, mlp bias) as the three model files define them."""
    mt = cfg["model_type"]
    if mt == "llama":
        ab = bool(cfg.get("attention_bias", False))
        return ab, ab, bool(cfg.get("mlp_bias", False))
    if mt == "qwen2":
        return True, False, False
    return False, False, False


# --------------------------------------------------------------------------
# weights

def build_weights(cfg, seed):
    """Deterministic random weights in the HF layout, fp32, in file order.

    Matrices are N(0, gain / sqrt(fan_in)) so that attention is not uniform
    and logits are O(1..10); norm weights are 1 + N(0, 0.1); biases are
    non-zero N(0, 0.1..0.3)."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape, std):
        return torch.randn(*shape, generator=g, dtype=torch.float32) * std

    H, F, V = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    nh, nkv, hd = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg_head_dim(cfg)
    qkv_b, o_b, mlp_b = has_bias(cfg)
    w = {}
    w["model.embed_tokens.weight"] = randn(V, H, std=0.7)
    for l in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{l}."
        w[p + "input_layernorm.weight"] = 1.0 + randn(H, std=0.1)
        w[p + "self_attn.q_proj.weight"] = randn(nh * hd, H, std=1.6 / math.sqrt(H))
        w[p + "self_attn.k_proj.weight"] = randn(nkv * hd, H, std=1.6 / math.sqrt(H))
        w[p + "self_attn.v_proj.weight"] = randn(nkv * hd, H, std=1.0 / math.sqrt(H))
        w[p + "self_attn.o_proj.weight"] = randn(H, nh * hd, std=1.0 / math.sqrt(nh * hd))
        if qkv_b:
            w[p + "self_attn.q_proj.bias"] = randn(nh * hd, std=0.3)
            w[p + "self_attn.k_proj.bias"] = randn(nkv * hd, std=0.3)
            w[p + "self_attn.v_proj.bias"] = randn(nkv * hd, std=0.3)
        if o_b:
            w[p + "self_attn.o_proj.bias"] = randn(H, std=0.3)
        w[p + "post_attention_layernorm.weight"] = 1.0 + randn(H, std=0.1)
        w[p + "mlp.gate_proj.weight"] = randn(F, H, std=1.5 / math.sqrt(H))
        w[p + "mlp.up_proj.weight"] = randn(F, H, std=1.5 / math.sqrt(H))
        w[p + "mlp.down_proj.weight"] = randn(H, F, std=1.0 / math.sqrt(F))
        if mlp_b:
            w[p + "mlp.gate_proj.bias"] = randn(F, std=0.3)
            w[p + "mlp.up_proj.bias"] = randn(F, std=0.3)
            w[p + "mlp.down_proj.bias"] = randn(H, std=0.3)
    w["model.norm.weight"] = 1.0 + randn(H, std=0.1)
    if not cfg["tie_word_embeddings"]:
        w["lm_head.weight"] = randn(V, H, std=0.5)
    return w


def round_to_dtype(t, dtype):
    """The fp32 values a tensor stored as `dtype` upcasts to (RNE rounding)."""
    return t.to(DTYPES[dtype]).to(torch.float32)


def tensor_bytes(t, dtype):
    if dtype == "F32":
        return t.to(torch.float32).contiguous().numpy().astype("<f4").tobytes()
    if dtype == "F16":
        return t.to(torch.float16).contiguous().numpy().astype("<f2").tobytes()
    if dtype == "BF16":
        return t.to(torch.bfloat16).contiguous().view(torch.int16).numpy().astype("<i2").tobytes()
    raise ValueError(dtype)


def write_safetensors(path, entries, metadata=None, data_start_mod8=0):
    """entries: list of (name, fp32 tensor, dtype).  The header is padded
    with spaces (as the safetensors writer does) so that the data section
    starts at an offset = data_start_mod8 (mod 8); 0 gives the usual aligned
    file, an odd value makes every tensor unaligned."""
    header = {}
    blobs = []
    off = 0
    for name, t, dtype in entries:
        b = tensor_bytes(t, dtype)
        header[name] = {"dtype": dtype, "shape": list(t.shape),
                        "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    header["__metadata__"] = metadata if metadata is not None else {"format": "pt"}
    hj = json.dumps(header, separators=(",", ":")).encode()
    while (8 + len(hj)) % 8 != data_start_mod8:
        hj += b" "
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hj)))
        f.write(hj)
        for b in blobs:
            f.write(b)
    return off


def read_safetensors(path):
    """Independent reader used to check the written files: name -> (fp32
    tensor, dtype).  Copies the bytes, so alignment does not matter."""
    with open(path, "rb") as f:
        buf = f.read()
    (n,) = struct.unpack("<Q", buf[:8])
    header = json.loads(buf[8:8 + n])
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        b, e = info["data_offsets"]
        raw = buf[base + b: base + e]
        shape = info["shape"]
        dt = info["dtype"]
        if dt == "F32":
            t = torch.from_numpy(np.frombuffer(raw, dtype="<f4").astype(np.float32))
        elif dt == "F16":
            t = torch.from_numpy(np.frombuffer(raw, dtype="<f2").astype(np.float32))
        elif dt == "BF16":
            u = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
            t = torch.from_numpy(u.view(np.float32).copy())
        else:
            raise ValueError(dt)
        out[name] = (t.reshape(shape), dt)
    return out


def load_model_dir(d):
    """config + weights of a model directory, the way the engine reads it:
    single file or index + shards, F16/BF16 upcast to fp32, stray
    rotary_emb.inv_freq buffers dropped; generation_config eos wins."""
    with open(os.path.join(d, "config.json")) as f:
        cfg = json.load(f)
    idx = os.path.join(d, "model.safetensors.index.json")
    if os.path.exists(idx):
        with open(idx) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    w, dtypes = {}, {}
    for fn in files:
        for name, (t, dt) in read_safetensors(os.path.join(d, fn)).items():
            if name.endswith(".rotary_emb.inv_freq"):
                continue
            assert name not in w, name
            w[name] = t
            dtypes[name] = dt
    eos = cfg["eos_token_id"]
    gc = os.path.join(d, "generation_config.json")
    if os.path.exists(gc):
        with open(gc) as f:
            eos = json.load(f).get("eos_token_id", eos)
    return cfg, w, dtypes, (eos if isinstance(eos, list) else [eos])


# --------------------------------------------------------------------------
# the forward pass

class Model:
    """Weights (already rounded to their stored dtype, fp32) plus config.

    opts selects ablations: 'kv_map' ('div' = HF, 'mod' = h % n_kv),
    'rope_dim' (d used in the inv_freq exponent), 'scale_dim' (d in the
    attention scale), 'inv_freq' (explicit override), 'window' (override,
    0 = none), 'lm_head' (explicit head)."""

    def __init__(self, cfg, weights, opts=None, dtype=torch.float32, lora=None):
        self.cfg = cfg
        # LoRA (issue 4): module name -> (A [r, in], B [out, r], scaling)
        self.lora = {k: (a.to(dtype), b.to(dtype), sc) for k, (a, b, sc) in (lora or {}).items()}
        self.opts = dict(opts or {})
        self.dt = dtype
        self.w = {k: v.to(dtype) for k, v in weights.items()}
        self.H = cfg["hidden_size"]
        self.nh = cfg["num_attention_heads"]
        self.nkv = cfg["num_key_value_heads"]
        self.hd = cfg_head_dim(cfg)
        self.eps = cfg["rms_norm_eps"]
        self.inv_freq = rope_inv_freq(cfg, self.opts.get("rope_dim"))
        if "inv_freq" in self.opts:
            self.inv_freq = self.opts["inv_freq"].to(torch.float32)
        w = self.opts.get("window")
        self.window = cfg_sliding_window(cfg) if w is None else (w or None)
        sd = self.opts.get("scale_dim", self.hd)
        self.scaling = sd ** -0.5
        if "lm_head" in self.opts:
            self.head = self.opts["lm_head"].to(dtype)
        elif cfg["tie_word_embeddings"]:
            self.head = self.w["model.embed_tokens.weight"]
        else:
            self.head = self.w["lm_head.weight"]
        n_rep = self.nh // self.nkv
        if self.opts.get("kv_map", "div") == "div":
            self.kv_of = [h // n_rep for h in range(self.nh)]
        else:
            self.kv_of = [h % self.nkv for h in range(self.nh)]

    def new_cache(self):
        return [{"k": None, "v": None} for _ in range(self.cfg["num_hidden_layers"])]

    def half(self):
        return self.dt in (torch.bfloat16, torch.float16)

    def rmsnorm(self, x, weight):
        # LlamaRMSNorm / Qwen2RMSNorm / MistralRMSNorm: in fp32 for a bf16 or
        # fp16 model, the result cast back before the weight multiplies it
        xs = x.to(torch.float32) if self.half() else x
        variance = xs.pow(2).mean(-1, keepdim=True)
        xs = xs * torch.rsqrt(variance + self.eps)
        return weight * xs.to(self.dt)

    def linear(self, name, x):
        """y = x W^T (+ b).  `name` is the module name, e.g.
        'model.layers.0.self_attn.q_proj' (the hook for LoRA)."""
        y = x @ self.w[name + ".weight"].t()
        b = self.w.get(name + ".bias")
        if b is not None:
            y = y + b
        lo = self.lora.get(name)
        if lo is not None:
            # peft.tuners.lora.layer.Linear.forward:
            #   result = result + lora_B(lora_A(dropout(x))) * scaling
            a, bm, scaling = lo
            y = y + ((x @ a.t()) @ bm.t()) * scaling
        return y

    def rope(self, positions):
        # LlamaRotaryEmbedding.forward: fp32 inv_freq @ fp32 positions
        freqs = positions.to(torch.float32)[:, None] * self.inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(self.dt), emb.sin().to(self.dt)

    @staticmethod
    def rotate_half(x):
        x1 = x[..., : x.shape[-1] // 2]
        x2 = x[..., x.shape[-1] // 2:]
        return torch.cat((-x2, x1), dim=-1)

    def forward(self, ids, start, cache):
        """Logits [len(ids), vocab] for tokens at positions start.. ; the KV
        cache holds the keys/values of positions 0..start-1 and is extended."""
        n = len(ids)
        ids_t = torch.tensor(ids, dtype=torch.long)
        pos = torch.arange(start, start + n, dtype=torch.long)
        cos, sin = self.rope(pos)
        x = self.w["model.embed_tokens.weight"][ids_t]
        nh, nkv, hd = self.nh, self.nkv, self.hd
        for l in range(self.cfg["num_hidden_layers"]):
            p = f"model.layers.{l}."
            residual = x
            h = self.rmsnorm(x, self.w[p + "input_layernorm.weight"])
            q = self.linear(p + "self_attn.q_proj", h).view(n, nh, hd).transpose(0, 1)
            k = self.linear(p + "self_attn.k_proj", h).view(n, nkv, hd).transpose(0, 1)
            v = self.linear(p + "self_attn.v_proj", h).view(n, nkv, hd).transpose(0, 1)
            q = q * cos + self.rotate_half(q) * sin
            k = k * cos + self.rotate_half(k) * sin
            c = cache[l]
            c["k"] = k if c["k"] is None else torch.cat((c["k"], k), dim=1)
            c["v"] = v if c["v"] is None else torch.cat((c["v"], v), dim=1)
            T = c["k"].shape[1]
            K = c["k"][self.kv_of]          # repeat_kv
            Vv = c["v"][self.kv_of]
            scores = (q @ K.transpose(1, 2)) * self.scaling        # [nh, n, T]
            kpos = torch.arange(T)[None, :]
            qpos = pos[:, None]
            allowed = kpos <= qpos
            if self.window:
                allowed = allowed & (kpos > qpos - self.window)
            scores = scores.masked_fill(~allowed[None], float("-inf"))
            # eager attention: the softmax in fp32, cast back to the model's dtype
            probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(self.dt) \
                if self.half() else torch.softmax(scores, dim=-1)
            o = (probs @ Vv).transpose(0, 1).reshape(n, nh * hd)
            x = residual + self.linear(p + "self_attn.o_proj", o)
            residual = x
            h = self.rmsnorm(x, self.w[p + "post_attention_layernorm.weight"])
            a = torch.nn.functional.silu(self.linear(p + "mlp.gate_proj", h)) \
                * self.linear(p + "mlp.up_proj", h)
            x = residual + self.linear(p + "mlp.down_proj", a)
        x = self.rmsnorm(x, self.w["model.norm.weight"])
        return x @ self.head.t()


def rope_inv_freq(cfg, rope_dim=None):
    """_compute_default_rope_parameters / _compute_llama3_parameters, fp32."""
    hd = cfg_head_dim(cfg)
    dim = rope_dim or hd
    base = cfg["rope_theta"]
    inv_freq = 1.0 / (base ** (torch.arange(0, hd, 2, dtype=torch.int64).float() / dim))
    rs = cfg.get("rope_scaling")
    if rs is None:
        return inv_freq
    rope_type = rs.get("rope_type", rs.get("type"))
    if rope_type == "default":
        return inv_freq
    if rope_type != "llama3":
        raise ValueError(f"rope_scaling type {rope_type} not in the reference")
    factor = rs["factor"]
    low_freq_factor = rs["low_freq_factor"]
    high_freq_factor = rs["high_freq_factor"]
    old_context_len = rs["original_max_position_embeddings"]
    low_freq_wavelen = old_context_len / low_freq_factor
    high_freq_wavelen = old_context_len / high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    inv_freq_llama = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth_factor = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed_inv_freq = (1 - smooth_factor) * inv_freq_llama / factor + smooth_factor * inv_freq_llama
    is_medium_freq = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium_freq, smoothed_inv_freq, inv_freq_llama)


def argmax_lowest(row):
    m = row.max()
    return int(torch.nonzero(row == m)[0, 0])


def greedy(model, prompt, n):
    """Greedy continuation over the KV cache; also returns the margin
    (best - second best) of each step."""
    cache = model.new_cache()
    logits = model.forward(prompt, 0, cache)[-1]
    out, margins = [], []
    for i in range(n):
        t = argmax_lowest(logits)
        top2 = torch.topk(logits, 2).values
        margins.append(float(top2[0] - top2[1]))
        out.append(t)
        if i + 1 < n:
            logits = model.forward([t], len(prompt) + i, cache)[0]
    return out, margins


def greedy_until(model, prompt, eos, max_new):
    """Greedy tokens up to and including the first of the ids in `eos` (at
    most max_new), each step's margin, and the logits (fp32) at the last
    prompt position."""
    cache = model.new_cache()
    logits = model.forward(prompt, 0, cache)[-1].float()
    first, out, margins = logits, [], []
    for i in range(max_new):
        t = argmax_lowest(logits)
        top2 = torch.topk(logits, 2).values
        margins.append(float(top2[0] - top2[1]))
        out.append(t)
        if t in eos:
            break
        logits = model.forward([t], len(prompt) + i, cache)[0].float()
    return out, margins, first


def max_rel_diff(a, b):
    return float((a - b).abs().max() / b.abs().max())


def run_reference(cfg, weights, prompt, opts=None, lora=None):
    """fp32 logits at every prompt position, the greedy continuation, and the
    self checks (incremental == full, fp64 agreement, greedy margins)."""
    m = Model(cfg, weights, opts, lora=lora)
    full = m.forward(prompt, 0, m.new_cache())
    # incremental: a 3-token prefill then one token at a time
    cache = m.new_cache()
    k = min(3, len(prompt))
    parts = [m.forward(prompt[:k], 0, cache)]
    for i in range(k, len(prompt)):
        parts.append(m.forward([prompt[i]], i, cache))
    inc = torch.cat(parts)
    d = max_rel_diff(inc, full)
    if d > 1e-5:
        raise SystemExit(f"self check: incremental vs full forward differ by {d:.3g}")
    m64 = Model(cfg, weights, opts, dtype=torch.float64, lora=lora)
    full64 = m64.forward(prompt, 0, m64.new_cache())
    d = max_rel_diff(full.double(), full64)
    if d > FP64_AGREEMENT:
        raise SystemExit(f"self check: fp32 vs fp64 differ by {d:.3g}")
    g, margins = greedy(m, prompt, N_GREEDY)
    # the greedy path must also be what a full recomputation gives
    seq = list(prompt)
    for t in g:
        lg = m.forward(seq, 0, m.new_cache())[-1]
        if argmax_lowest(lg) != t:
            raise SystemExit("self check: greedy over the cache != full recomputation")
        seq.append(t)
    return full, g, margins


# --------------------------------------------------------------------------
# output

def fmt(x):
    """Shortest text that reads back as the same float32 (numpy's repr of
    np.float32), valid JSON."""
    return str(np.float32(x))


def fmt_rows(rows):
    return "[\n" + ",\n".join("    [" + ",".join(fmt(v) for v in r) + "]"
                              for r in rows.tolist()) + "\n  ]"


def write_expected(path, d):
    lines = []
    for k, v in d.items():
        if k in ("logits", "ablated_logits") and v is not None:
            s = fmt_rows(v)
        else:
            s = json.dumps(v)
        lines.append(f"  {json.dumps(k)}: {s}")
    with open(path, "w") as f:
        f.write("{\n" + ",\n".join(lines) + "\n}\n")


def write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


# --------------------------------------------------------------------------
# cases

def make_prompt(seed, n, vocab, bos):
    g = torch.Generator().manual_seed(seed + 7919)
    rest = torch.randint(3, vocab, (n - 1,), generator=g).tolist()
    return [bos] + rest


class Case:
    """One fixture directory.  `build(attempt)` returns the pieces; the
    driver retries with the next attempt (a different seed) only when the
    greedy continuation is not robust (margins, distinct tokens), never when
    an ablation fails."""

    def __init__(self, name, feature, description, **kw):
        self.name = name
        self.feature = feature
        self.description = description
        self.kw = kw


def all_entries(weights, dtype_of):
    return [(n, t, dtype_of(n)) for n, t in weights.items()]


def emit(outdir, case, seed_base):
    kw = case.kw
    last_err = None
    for attempt in range(20):
        seed = seed_base + 1000 * attempt
        cfg = make_config(**kw.get("config", {}))
        weights = build_weights(cfg, seed)
        dtype_of = kw.get("dtype_of", lambda n: kw.get("config", {}).get("dtype", "F32"))
        weights = {n: round_to_dtype(t, dtype_of(n)) for n, t in weights.items()}
        prompt = make_prompt(seed, kw.get("prompt_len", 12), cfg["vocab_size"], cfg["bos_token_id"])
        logits, g, margins = run_reference(cfg, weights, prompt)
        mx = float(logits.abs().max())
        problems = []
        if min(margins) < GREEDY_MARGIN * mx:
            problems.append(f"greedy margin {min(margins):.3g} < {GREEDY_MARGIN} * {mx:.3g}")
        if len(set(g)) < 2:
            problems.append(f"greedy is one token repeated: {g}")
        if not (1.0 <= mx <= 30.0):
            problems.append(f"max|logit| = {mx:.3g} not O(1..10)")
        check = kw.get("check_greedy")
        if check and not check(g, cfg):
            problems.append(f"greedy {g} does not suit this case")
        if not problems:
            break
        last_err = "; ".join(problems)
        print(f"  {case.name}: attempt {attempt} rejected: {last_err}", file=sys.stderr)
    else:
        raise SystemExit(f"{case.name}: no robust seed found ({last_err})")

    ablated = None
    ablation = kw.get("ablation")
    if ablation is not None:
        desc, make_ablated = ablation
        acfg, aweights, aopts = make_ablated(copy.deepcopy(cfg), dict(weights), seed)
        am = Model(acfg, aweights, aopts)
        ablated = am.forward(prompt, 0, am.new_cache())
        frm = kw.get("ablation_from", 0)   # also differs on positions >= frm alone
        diff = float((ablated[frm:] - logits[frm:]).abs().max())
        need = ABLATION_FACTOR * TOL_REL * mx
        if not diff > need:
            raise SystemExit(f"{case.name}: ablation '{desc}' changes the logits by "
                             f"{diff:.3g} <= {need:.3g}: the fixture would not test "
                             f"{case.feature}")
        print(f"  {case.name}: ablation changes logits by {diff:.3g} "
              f"({diff / mx:.3g} of max|logit|, threshold {need / mx:.3g})", file=sys.stderr)

    d = os.path.join(outdir, case.name)
    os.makedirs(d)
    write_json(os.path.join(d, "config.json"), cfg)
    entries = all_entries(weights, dtype_of)
    extra = kw.get("extra_tensors")
    if extra:
        entries = extra(entries, cfg)
    layout = kw.get("layout", "single")
    if layout == "single":
        write_safetensors(os.path.join(d, "model.safetensors"), entries)
    elif layout == "unaligned":
        write_safetensors(os.path.join(d, "model.safetensors"), entries, data_start_mod8=3)
    elif layout == "sharded":
        split = [e for e in entries if not e[0].startswith("model.layers.1.")
                 and e[0] not in ("model.norm.weight", "lm_head.weight")]
        rest = [e for e in entries if e not in split]
        names = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
        total = 0
        weight_map = {}
        for fn, part in zip(names, (split, rest)):
            total += write_safetensors(os.path.join(d, fn), part)
            for e in part:
                weight_map[e[0]] = fn
        write_json(os.path.join(d, "model.safetensors.index.json"),
                   {"metadata": {"total_size": total}, "weight_map": weight_map})
    else:
        raise ValueError(layout)

    exp = {"case": case.name, "feature": case.feature, "description": case.description,
           "ablation": ablation[0] if ablation else None,
           "prompt": prompt, "greedy": g}
    post = kw.get("post")
    if post:
        post(d, cfg, g, exp)
    exp["tolerance_rel"] = TOL_REL
    exp["logits"] = logits
    exp["ablated_logits"] = ablated
    write_expected(os.path.join(d, "expected.json"), exp)

    # read the directory back as the engine would and recompute
    rcfg, rw, rdt, reos = load_model_dir(d)
    assert set(rw) == set(weights), f"{case.name}: tensors read back differ"
    assert all(torch.equal(rw[n], weights[n]) for n in weights), case.name
    rm = Model(rcfg, rw)
    if not torch.equal(rm.forward(prompt, 0, rm.new_cache()), logits):
        raise SystemExit(f"{case.name}: logits from the written files differ")
    with open(os.path.join(d, "expected.json")) as f:
        back = json.load(f)
    assert torch.equal(torch.tensor(back["logits"], dtype=torch.float32), logits)
    if "eos" in exp:
        assert reos == exp["eos"]
    kinds = sorted(set(rdt.values()))
    print(f"{case.name}: {'+'.join(kinds)}, max|logit| {mx:.3g}, greedy {g}, "
          f"min margin {min(margins) / mx:.3g} of max", file=sys.stderr)
    return cfg, weights, prompt, logits


# ablations: (cfg, weights, seed) -> (cfg, weights, opts)

def abl_zero_biases(cfg, w, seed):
    return cfg, {n: (torch.zeros_like(t) if n.endswith(".bias") else t) for n, t in w.items()}, {}


def abl_kv_mod(cfg, w, seed):
    return cfg, w, {"kv_map": "mod"}


def abl_random_head(cfg, w, seed):
    g = torch.Generator().manual_seed(seed + 1)
    head = torch.randn(cfg["vocab_size"], cfg["hidden_size"], generator=g) * 0.5
    return cfg, w, {"lm_head": head}


def abl_head_dim(cfg, w, seed):
    d = cfg["hidden_size"] // cfg["num_attention_heads"]
    return cfg, w, {"scale_dim": d, "rope_dim": d}


def abl_no_window(cfg, w, seed):
    return cfg, w, {"window": 0}


def abl_no_rope_scaling(cfg, w, seed):
    cfg["rope_scaling"] = None
    return cfg, w, {}


STRAY_THETA = 100.0


def stray_inv_freq(cfg):
    hd = cfg_head_dim(cfg)
    return 1.0 / (STRAY_THETA ** (torch.arange(0, hd, 2, dtype=torch.int64).float() / hd))


def abl_use_stray(cfg, w, seed):
    return cfg, w, {"inv_freq": stray_inv_freq(cfg)}


def add_stray_inv_freq(entries, cfg):
    out = []
    for e in entries:
        out.append(e)
        m = e[0].split(".")
        if e[0].endswith("self_attn.o_proj.weight"):
            out.append((f"model.layers.{m[2]}.self_attn.rotary_emb.inv_freq",
                        stray_inv_freq(cfg), "F32"))
    return out


def mixed_dtype_of(name):
    # deterministic spread of the three dtypes over the tensors
    order = ["F32", "F16", "BF16"]
    return order[sum(name.encode()) % 3]


def gen_config_post(d, cfg, g, exp):
    eos = [cfg["eos_token_id"], g[3]]
    write_json(os.path.join(d, "generation_config.json"),
               {"bos_token_id": cfg["bos_token_id"], "eos_token_id": eos,
                "transformers_version": "4.45.0"})
    exp["eos"] = eos
    exp["greedy_until_eos"] = g[:4]


def gen_config_ok(g, cfg):
    return cfg["eos_token_id"] not in g and g[3] not in g[:3]


LLAMA3_SCALING = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                  "original_max_position_embeddings": 64}
ROPE_SHAPE = dict(hidden=32, ffn=32, heads=2, kv_heads=1, head_dim=16, vocab=64,
                  theta=500000.0, max_pos=512, tie=True)

CASES = [
    Case("llama_basic", "llama", "Llama, F32, multi-head attention (4 heads of 8), untied lm_head",
         config=dict(vocab=96)),
    Case("llama_gqa", "gqa", "grouped-query attention: 8 query heads over 2 kv heads "
         "(query head h reads kv head h // 4)",
         config=dict(heads=8, kv_heads=2),
         ablation=("query head h reads kv head h % n_kv (interleaved) instead of h // group",
                   abl_kv_mod)),
    Case("llama_tied", "tie_word_embeddings", "tie_word_embeddings: no lm_head.weight in the "
         "file, logits use model.embed_tokens.weight",
         config=dict(tie=True),
         ablation=("a random separate lm_head (N(0, 0.5)) instead of the embeddings",
                   abl_random_head)),
    Case("llama_head_dim", "head_dim", "head_dim 12 given in config.json while hidden/heads = 8: "
         "q/k/v are 4*12 = 48 wide, o_proj maps 48 -> 32, scale 1/sqrt(12), RoPE over 12 dims "
         "(i pairs with i + 6)",
         config=dict(heads=4, head_dim=12),
         ablation=("hidden/heads = 8 used for the attention scale and the RoPE exponent "
                   "(inv_freq[i] = theta^(-2i/8))", abl_head_dim)),
    Case("llama_bias", "attention_bias+mlp_bias", "llama with attention_bias (q, k, v, o biases) "
         "and mlp_bias (gate, up, down biases), all non-zero",
         config=dict(attention_bias=True, mlp_bias=True),
         ablation=("all biases zeroed", abl_zero_biases)),
    Case("qwen2_bias", "qwen2", "qwen2: q/k/v biases (added before RoPE), no o_proj bias, "
         "no mlp bias; rope_theta 1e6, eps 1e-6; use_sliding_window false (the "
         "sliding_window value in config.json must be ignored)",
         config=dict(model_type="qwen2", heads=4, kv_heads=2, theta=1000000.0, eps=1e-6),
         ablation=("q/k/v biases zeroed", abl_zero_biases)),
    Case("mistral_window", "sliding_window", "mistral with sliding_window 4 and a 16-token "
         "prompt: the query at position p sees keys p-3..p",
         config=dict(model_type="mistral", heads=4, kv_heads=2, sliding_window=4),
         prompt_len=16,
         ablation=("no sliding window (full causal attention)", abl_no_window)),
    Case("llama3_rope", "rope_scaling_llama3", "rope_scaling rope_type llama3 (factor 8, "
         "low 1, high 4, original_max_position_embeddings 64), rope_theta 5e5, head_dim 16 "
         "(one high, one medium, six low frequencies), prompt over positions 0..263, tied",
         config=dict(ROPE_SHAPE, rope_scaling=dict(LLAMA3_SCALING, rope_type="llama3")),
         prompt_len=264, ablation_from=256,
         ablation=("rope_scaling removed (plain RoPE)", abl_no_rope_scaling)),
    Case("llama3_rope_type_key", "rope_scaling_llama3_type_key", "as llama3_rope but the "
         "scaling type spelled with the older key \"type\": \"llama3\"; prompt over positions "
         "0..79",
         config=dict(ROPE_SHAPE, rope_scaling=dict(LLAMA3_SCALING, type="llama3")),
         prompt_len=80, ablation_from=64,
         ablation=("rope_scaling removed (plain RoPE)", abl_no_rope_scaling)),
    Case("bf16", "dtype_bf16", "every tensor stored as BF16", config=dict(dtype="BF16")),
    Case("f16", "dtype_f16", "every tensor stored as F16", config=dict(dtype="F16")),
    Case("mixed_dtypes", "dtype_mixed", "one file mixing F32, F16 and BF16 tensors (the dtype "
         "is per tensor; config torch_dtype says bfloat16)",
         config=dict(dtype="BF16"), dtype_of=mixed_dtype_of),
    Case("sharded", "sharded", "two shards (layer 0 + embeddings, layer 1 + norm + lm_head) "
         "and model.safetensors.index.json; BF16 like most sharded checkpoints",
         config=dict(dtype="BF16"), layout="sharded"),
    Case("generation_config", "generation_config", "generation_config.json lists eos_token_id "
         "[config eos, greedy[3]]; config.json's eos_token_id is an int that never occurs; "
         "greedy stops after greedy_until_eos (EOS included); BF16 weights",
         config=dict(dtype="BF16"),
         check_greedy=gen_config_ok, post=gen_config_post),
    Case("rotary_inv_freq", "stray_inv_freq", "each layer carries a stray "
         "self_attn.rotary_emb.inv_freq buffer (F32, values for rope_theta 100, i.e. wrong) "
         "that the engine must ignore; other weights F16 as in Llama-2-era checkpoints",
         config=dict(dtype="F16"), extra_tensors=add_stray_inv_freq,
         ablation=("RoPE from the stray inv_freq buffer", abl_use_stray)),
    Case("unaligned", "unaligned", "the data section starts at file offset 3 mod 8, so every "
         "tensor (F32, F16, BF16 mixed) starts unaligned for its dtype",
         dtype_of=mixed_dtype_of, layout="unaligned"),
]


# --------------------------------------------------------------------------
# LoRA adapters (issue 4): PEFT 0.15 semantics, transcribed from
# peft/tuners/tuners_utils.py (check_target_module_exists,
# _maybe_include_all_linear_layers), peft/utils/other.py (get_pattern_key)
# and peft/tuners/lora/layer.py (update_layer scaling, Linear.forward).

import re  # noqa: E402

LINEAR_SUFFIXES = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                   "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]


def linear_modules(cfg):
    """Names of the base model's Linear modules, in named_modules() order,
    without lm_head (which all-linear leaves out and no case targets)."""
    return [f"model.layers.{l}.{s}" for l in range(cfg["num_hidden_layers"])
            for s in LINEAR_SUFFIXES]


def module_shape(cfg, name):
    """(out_features, in_features) of a base Linear."""
    H, F = cfg["hidden_size"], cfg["intermediate_size"]
    q = cfg["num_attention_heads"] * cfg_head_dim(cfg)
    kv = cfg["num_key_value_heads"] * cfg_head_dim(cfg)
    last = name.rsplit(".", 1)[1]
    return {"q_proj": (q, H), "k_proj": (kv, H), "v_proj": (kv, H), "o_proj": (H, q),
            "gate_proj": (F, H), "up_proj": (F, H), "down_proj": (H, F)}[last]


def get_pattern_key(pattern_keys, key_to_match):
    for key in pattern_keys:
        if re.match(rf"(.*\.)?({key})$", key_to_match):
            return key
    return key_to_match


def check_target_module_exists(acfg, key):
    excl = acfg.get("exclude_modules")
    if excl:
        if isinstance(excl, str):
            if re.fullmatch(excl, key):
                return False
        elif key in excl:
            return False
        elif any(key.endswith(f".{e}") for e in excl):
            return False
    tm = acfg["target_modules"]
    if isinstance(tm, str):
        return re.fullmatch(tm, key) is not None
    if key in tm:
        return True
    found = any(key.endswith(f".{t}") for t in tm)
    layer_indexes = acfg.get("layers_to_transform")
    layers_pattern = acfg.get("layers_pattern")
    using = layer_indexes is not None and (
        len(layer_indexes) != 0 if isinstance(layer_indexes, list) else True)
    if using and found:
        layer_index = None
        if layers_pattern is None or len(layers_pattern) == 0:
            layer_index = re.match(r".*\.[^.]*\.(\d+)\.", key)
        else:
            pats = [layers_pattern] if isinstance(layers_pattern, str) else layers_pattern
            for pattern in pats:
                layer_index = re.match(rf".*\.{pattern}\.(\d+)\.", key)
                if layer_index is not None:
                    break
        if layer_index is None:
            found = False
        else:
            li = int(layer_index.group(1))
            found = li == layer_indexes if isinstance(layer_indexes, int) else li in layer_indexes
    return found


def peft_resolve(acfg, cfg):
    """module name -> (r, alpha, scaling) for every module PEFT adapts."""
    acfg = dict(acfg)
    tm = acfg["target_modules"]
    if isinstance(tm, str) and tm.lower() == "all-linear":
        if acfg.get("layers_to_transform") is not None:
            raise ValueError("PEFT refuses layers_to_transform with a string target_modules")
        acfg["target_modules"] = sorted({n.rsplit(".", 1)[1] for n in linear_modules(cfg)})
    elif isinstance(tm, str) and acfg.get("layers_to_transform") is not None:
        raise ValueError("PEFT refuses layers_to_transform with a string target_modules")
    out = {}
    for key in linear_modules(cfg):
        if not check_target_module_exists(acfg, key):
            continue
        r_key = get_pattern_key(acfg.get("rank_pattern", {}).keys(), key)
        alpha_key = get_pattern_key(acfg.get("alpha_pattern", {}).keys(), key)
        r = acfg.get("rank_pattern", {}).get(r_key, acfg["r"])
        alpha = acfg.get("alpha_pattern", {}).get(alpha_key, acfg["lora_alpha"])
        scaling = alpha / math.sqrt(r) if acfg.get("use_rslora") else alpha / r
        out[key] = (r, alpha, scaling)
    if not out:
        raise ValueError("target_modules matched nothing")
    return out


def peft_config(**kw):
    """adapter_config.json as PEFT 0.15 writes it (keys sorted)."""
    c = {"alpha_pattern": {}, "auto_mapping": None,
         "base_model_name_or_path": "lorad-tests/base", "bias": "none",
         "corda_config": None, "eva_config": None, "exclude_modules": None,
         "fan_in_fan_out": False, "inference_mode": True, "init_lora_weights": True,
         "layer_replication": None, "layers_pattern": None, "layers_to_transform": None,
         "loftq_config": {}, "lora_alpha": 16, "lora_bias": False, "lora_dropout": 0.0,
         "megatron_config": None, "megatron_core": "megatron.core", "modules_to_save": None,
         "peft_type": "LORA", "r": 8, "rank_pattern": {}, "revision": None,
         "target_modules": ["q_proj", "v_proj"], "task_type": "CAUSAL_LM",
         "trainable_token_indices": None, "use_dora": False, "use_rslora": False}
    c.update(kw)
    return c


def make_lora_weights(cfg, resolved, seed, dtype="F32", extra=()):
    """A [r, in] ~ N(0, 1/sqrt(in)) and B [out, r] ~ N(0, 0.5/sqrt(r)), both
    non-zero, rounded to `dtype`.  `extra` names modules that get matrices
    too (used only by ablations; they are never written)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name in linear_modules(cfg):
        if name in resolved:
            r = resolved[name][0]
        elif name in extra:
            r = 8
        else:
            continue
        o, i = module_shape(cfg, name)
        a = torch.randn(r, i, generator=g) / math.sqrt(i)
        b = torch.randn(o, r, generator=g) * (0.5 / math.sqrt(r))
        out[name] = (round_to_dtype(a, dtype), round_to_dtype(b, dtype))
    return out


def lora_map(resolved, mats, scale_of=None):
    m = {}
    for name, (r, alpha, sc) in resolved.items():
        a, b = mats[name]
        m[name] = (a, b, sc if scale_of is None else scale_of(name, r, alpha))
    return m


class LoraCase:
    def __init__(self, name, feature, description, acfg, dtype="F32", ablation=None):
        self.name, self.feature, self.description = name, feature, description
        self.acfg, self.dtype, self.ablation = acfg, dtype, ablation


# ablations: (acfg, cfg, resolved, mats, seed) -> lora map for Model

def labl_base(acfg, cfg, resolved, mats, seed):
    return {}


def labl_scale_alpha_over_r(acfg, cfg, resolved, mats, seed):
    return lora_map(resolved, mats, lambda n, r, a: a / r)


def labl_no_rank_pattern(acfg, cfg, resolved, mats, seed):
    return lora_map(resolved, mats, lambda n, r, a: a / acfg["r"])


def labl_no_alpha_pattern(acfg, cfg, resolved, mats, seed):
    return lora_map(resolved, mats, lambda n, r, a: acfg["lora_alpha"] / r)


def labl_without(pred):
    """option ignored: modules for which pred(name) holds get rank-8
    matrices too (random, not in the file) at scale alpha/r."""
    def f(acfg, cfg, resolved, mats, seed):
        extra = [n for n in linear_modules(cfg) if n not in resolved and pred(n)]
        em = make_lora_weights(cfg, {}, seed + 17, extra=extra)
        m = lora_map(resolved, mats)
        for n in extra:
            m[n] = (em[n][0], em[n][1], acfg["lora_alpha"] / 8)
        return m
    return f


def labl_attention_only(acfg, cfg, resolved, mats, seed):
    return {n: v for n, v in lora_map(resolved, mats).items() if ".self_attn." in n}


LORA_CASES = [
    LoraCase("qv_r8", "lora", "r 8, alpha 16 on q_proj and v_proj (the common recipe)",
             peft_config(), ablation=("no adapter", labl_base)),
    LoraCase("all_linear_r4", "all-linear", "target_modules \"all-linear\": every projection "
             "of every layer (not lm_head), r 4, alpha 8",
             peft_config(r=4, lora_alpha=8, target_modules="all-linear"),
             ablation=("only the attention projections adapted", labl_attention_only)),
    LoraCase("rslora_r16", "use_rslora", "use_rslora: scaling alpha/sqrt(r) = 8/4 = 2 on "
             "q, k, v, o, r 16",
             peft_config(r=16, lora_alpha=8, use_rslora=True,
                         target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]),
             ablation=("scaling alpha/r = 0.5", labl_scale_alpha_over_r)),
    LoraCase("rank_pattern", "rank_pattern", "rank_pattern resolved by the first key in file "
             "order with re.match('(.*\\\\.)?(KEY)$'): layer 0 v_proj matches both "
             "'layers.0.self_attn.v_proj' (first: r 2) and 'v_proj' (r 4); layer 1 v_proj r 4; "
             "layer 0 q_proj r 6; layer 1 q_proj the default 8",
             peft_config(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                         rank_pattern={"layers.0.self_attn.v_proj": 2, "v_proj": 4,
                                       "layers.0.self_attn.q_proj": 6}),
             ablation=("scaling alpha / r (the default r) everywhere", labl_no_rank_pattern)),
    LoraCase("alpha_pattern", "alpha_pattern", "alpha_pattern and rank_pattern looked up "
             "separately: q_proj r 4 (rank_pattern) with alpha 32 in layer 1 only "
             "(alpha_pattern), down_proj alpha 64, the rest r 8 alpha 16",
             peft_config(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"],
                         rank_pattern={"q_proj": 4},
                         alpha_pattern={"layers.1.self_attn.q_proj": 32, "down_proj": 64}),
             ablation=("alpha 16 everywhere", labl_no_alpha_pattern)),
    LoraCase("regex_targets", "target_modules_regex", "target_modules as a string: a regular "
             "expression that must match the whole module name (re.fullmatch): layer 1 q/v "
             "and the gate_proj of both layers",
             peft_config(r=8, lora_alpha=16, target_modules=
                         r".*\.layers\.1\.self_attn\.(q|v)_proj|.*\.mlp\.gate_proj"),
             ablation=("no adapter (the string not understood as a regex matches nothing)",
                       labl_base)),
    LoraCase("layers_to_transform", "layers_to_transform", "q/v/o_proj limited to layer 1 by "
             "layers_to_transform [1] with layers_pattern \"layers\"",
             peft_config(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "o_proj"],
                         layers_to_transform=[1], layers_pattern="layers"),
             ablation=("layer 0 adapted too (random rank-8 matrices, not in the file)",
                       labl_without(lambda n: n.rsplit(".", 1)[1] in ("q_proj", "v_proj", "o_proj")))),
    LoraCase("exclude_modules", "exclude_modules", "all-linear minus exclude_modules "
             "[\"o_proj\", \"model.layers.0.mlp.up_proj\"] (an entry matches by equality or "
             "as a '.'-suffix)",
             peft_config(r=4, lora_alpha=16, target_modules="all-linear",
                         exclude_modules=["o_proj", "model.layers.0.mlp.up_proj"]),
             ablation=("excluded modules adapted too (random rank-8 matrices, not in the file)",
                       labl_without(lambda n: True))),
    LoraCase("bf16_r8", "dtype_bf16", "adapter file in BF16, r 8, alpha 16, all seven "
             "projections listed explicitly",
             peft_config(r=8, lora_alpha=16, target_modules=[
                 "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]),
             dtype="BF16", ablation=("no adapter", labl_base)),
    LoraCase("fan_in_fan_out", "fan_in_fan_out", "fan_in_fan_out true in the config: PEFT "
             "forces it off for nn.Linear (warning), so nothing is transposed; r 8 on q, v",
             peft_config(r=8, lora_alpha=16, fan_in_fan_out=True),
             ablation=("no adapter", labl_base)),
]


def emit_lora(outdir, case, seed_base, cfg, weights, prompt, base_logits):
    acfg = case.acfg
    resolved = peft_resolve(acfg, cfg)
    last_err = None
    for attempt in range(20):
        seed = seed_base + 1000 * attempt
        mats = make_lora_weights(cfg, resolved, seed, case.dtype)
        lora = lora_map(resolved, mats)
        logits, g, margins = run_reference(cfg, weights, prompt, lora=lora)
        mx = float(logits.abs().max())
        problems = []
        if min(margins) < GREEDY_MARGIN * mx:
            problems.append(f"greedy margin {min(margins):.3g} < {GREEDY_MARGIN} * {mx:.3g}")
        if len(set(g)) < 2:
            problems.append(f"greedy is one token repeated: {g}")
        if not problems:
            break
        last_err = "; ".join(problems)
        print(f"  lora/{case.name}: attempt {attempt} rejected: {last_err}", file=sys.stderr)
    else:
        raise SystemExit(f"lora/{case.name}: no robust seed found ({last_err})")
    d0 = float((logits - base_logits).abs().max())
    if not d0 > ABLATION_FACTOR * TOL_REL * mx:
        raise SystemExit(f"lora/{case.name}: the adapter barely changes the logits ({d0:.3g})")
    desc, fn = case.ablation
    am = Model(cfg, weights, lora=fn(acfg, cfg, resolved, mats, seed))
    ablated = am.forward(prompt, 0, am.new_cache())
    diff = float((ablated - logits).abs().max())
    need = ABLATION_FACTOR * TOL_REL * mx
    if not diff > need:
        raise SystemExit(f"lora/{case.name}: ablation '{desc}' changes the logits by "
                         f"{diff:.3g} <= {need:.3g}")
    print(f"  lora/{case.name}: ablation changes logits by {diff / mx:.3g} of max|logit|",
          file=sys.stderr)

    d = os.path.join(outdir, case.name)
    os.makedirs(d)
    write_json(os.path.join(d, "adapter_config.json"), acfg)
    entries = []
    for name in linear_modules(cfg):
        if name in resolved:
            a, b = mats[name]
            entries.append((f"base_model.model.{name}.lora_A.weight", a, case.dtype))
            entries.append((f"base_model.model.{name}.lora_B.weight", b, case.dtype))
    write_safetensors(os.path.join(d, "adapter_model.safetensors"), entries)
    back = read_safetensors(os.path.join(d, "adapter_model.safetensors"))
    for name, t, _ in entries:
        assert torch.equal(back[name][0], t), name
    exp = {"case": case.name, "feature": case.feature, "description": case.description,
           "base": "base", "ablation": desc, "prompt": prompt, "greedy": g,
           "modules": {n: {"r": r, "alpha": a, "scaling": sc}
                       for n, (r, a, sc) in resolved.items()},
           "tolerance_rel": TOL_REL, "logits": logits, "ablated_logits": ablated}
    write_expected(os.path.join(d, "expected.json"), exp)
    print(f"lora/{case.name}: {len(resolved)} modules, ranks "
          f"{sorted(set(v[0] for v in resolved.values()))}, max|logit| {mx:.3g}, greedy {g}",
          file=sys.stderr)


LORA_BASE = Case("base", "lora_base", "the base model of every LoRA case: llama, GQA 4/2, "
                 "F32; its expected.json holds the logits without an adapter",
                 config=dict(heads=4, kv_heads=2))


def write_lora(outdir):
    if os.path.isdir(outdir):
        shutil.rmtree(outdir)
    os.makedirs(outdir)
    cfg, weights, prompt, base_logits = emit(outdir, LORA_BASE, 424242)
    for i, case in enumerate(LORA_CASES):
        emit_lora(outdir, case, 7000003 * (i + 1), cfg, weights, prompt, base_logits)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="output directory (replaced)")
    ap.add_argument("--only", help="comma-separated case names")
    ap.add_argument("--lora-out", help="also write the LoRA fixtures there (replaced)")
    args = ap.parse_args()
    if args.lora_out:
        write_lora(args.lora_out)
    only = set(args.only.split(",")) if args.only else None
    if not only and os.path.isdir(args.out):
        shutil.rmtree(args.out)
    os.makedirs(args.out, exist_ok=True)
    for i, case in enumerate(CASES):
        if only and case.name not in only:
            continue
        if only:
            shutil.rmtree(os.path.join(args.out, case.name), ignore_errors=True)
        emit(args.out, case, 1000003 * (i + 1))


if __name__ == "__main__":
    main()
