"""The demo model computed as Hugging Face computes a bf16 model, for the C
test of the CPU backend's bf16 dot products (tests/demo/test_demo_model.c).

Reads the cases of tests/fixtures/demo/logits.json (adapter and prompt ids),
runs demo/model and demo/adapters with every tensor in bfloat16 as
transformers does for torch_dtype=bfloat16 (matmuls in bf16, RMSNorm and
the attention softmax in fp32 and cast back, PEFT's LoRA in the model's
dtype: tests/engine/reference.py), and writes
tests/fixtures/demo/logits_bf16.json: per case the logits at the last
prompt position, the greedy tokens up to and including EOS, and each greedy
step's margin (best - second best logit), so that the test asks for equal
tokens only while the margin allows. demo/train.py calls write() after it
writes logits.json; run this file alone to rewrite it from the committed
model:

    /usr/bin/python3 demo/bf16_reference.py
"""
import json
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "engine"))
import reference as ref  # noqa: E402

FIXTURES = os.path.join(ROOT, "tests", "fixtures", "demo")
# the bound for a bf16 computation: max |d logit| <= TOL * max |logit|
TOL_REL = 2e-2
MAX_NEW = 64


def lora_map(cfg, adir):
    acfg = json.load(open(os.path.join(adir, "adapter_config.json")))
    w = {k: v for k, (v, _) in ref.read_safetensors(os.path.join(adir, "adapter_model.safetensors")).items()}
    out = {}
    for name, (r, alpha, sc) in ref.peft_resolve(acfg, cfg).items():
        out[name] = (w[f"base_model.model.{name}.lora_A.weight"],
                     w[f"base_model.model.{name}.lora_B.weight"], sc)
    return out


def write(model_dir=os.path.join(HERE, "model"), adapters_dir=os.path.join(HERE, "adapters")):
    cfg, weights, _, eos = ref.load_model_dir(model_dir)
    cases = json.load(open(os.path.join(FIXTURES, "logits.json")))["cases"]
    models = {}
    rows = []
    for c in cases:
        name = c["adapter"]
        if name not in models:
            lora = None if name == "base" else lora_map(cfg, os.path.join(adapters_dir, name))
            models[name] = ref.Model(cfg, weights, dtype=torch.bfloat16, lora=lora)
        with torch.no_grad():
            g, margins, first = ref.greedy_until(models[name], c["prompt"], eos, MAX_NEW)
        head = ", ".join(f"{json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}"
                         for k, v in (("adapter", name), ("skill", c["skill"]),
                                      ("prompt_text", c["prompt_text"]), ("prompt", c["prompt"]),
                                      ("greedy", g),
                                      ("margins", [float(f"{m:.6g}") for m in margins])))
        rows.append("    {" + head + ',\n     "logits": [' +
                    ",".join(ref.fmt(v) for v in first.tolist()) + "]}")
    with open(os.path.join(FIXTURES, "logits_bf16.json"), "w") as f:
        f.write('{\n  "model": "demo/model",\n  "adapters": "demo/adapters",\n'
                '  "computation": "bf16, as transformers computes torch_dtype=bfloat16",\n')
        f.write(f'  "tolerance_rel": {TOL_REL},\n  "cases": [\n')
        f.write(",\n".join(rows) + "\n  ]\n}\n")
    return len(rows)


if __name__ == "__main__":
    torch.set_num_threads(1)
    print(f"bf16 reference: {write()} cases")
