"""Quality of the weight quantization methods on a Hugging Face model folder.

``python -m bench.quality MODEL_DIR`` loads the model (transformers, local files only),
quantizes every Linear layer (lm_head left out) by round-to-nearest (``rtn``, min/max),
round-to-nearest with the MSE search (``mse``), HQQ (``hqq``) and GPTQ (``gptq``), at
int4 per group of 128 and int8 per channel, and prints for each: the embedding cosine
against the float model on a fixed text (mean-pooled last hidden states, min and mean
over its sentences), the weight SQNR of the layers (mean and min; ``--per-layer``: each
layer) and the seconds the method took. GPTQ calibrates on ``--calibration FILE`` (one
sample a line) or on a built-in text distinct from the evaluation sentences.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time

EVAL_TEXT = [
    "The cat sat quietly on the warm windowsill, watching the rain.",
    "Quarterly revenue rose by twelve percent, beating analyst expectations.",
    "To reset the router, hold the power button for ten seconds.",
    "She played the violin at the concert hall on Friday evening.",
    "Photosynthesis converts light energy into chemical energy in plants.",
    "The train to the airport leaves every twenty minutes from platform four.",
    "He forgot his umbrella, so he waited in the cafe until the storm passed.",
    "Vaccines train the immune system to recognise a pathogen.",
]
CALIBRATION_TEXT = [
    "A river winds through the valley, past farms and small wooden bridges.",
    "The committee will publish its final report at the end of the month.",
    "Mix the flour and butter before adding the eggs one at a time.",
    "Satellites in low orbit circle the earth about every ninety minutes.",
    "The museum opened a new wing dedicated to modern sculpture.",
    "Interest rates influence how much households are willing to borrow.",
    "Our hiking group reached the summit just before the clouds rolled in.",
    "The software update fixes several bugs and improves battery life.",
    "Children learn languages quickly when they hear them every day.",
    "The old lighthouse still guides ships along the rocky coastline.",
    "Doctors recommend regular exercise and a balanced diet.",
    "The orchestra rehearsed the symphony for three weeks before the premiere.",
    "Volcanic ash can disrupt air travel across an entire continent.",
    "The detective noticed a small scratch on the silver key.",
    "Solar panels on the roof supply most of the building's electricity.",
    "A good night's sleep improves memory and concentration.",
]


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.quality", description=__doc__.split("\n")[0])
    p.add_argument("model_dir")
    p.add_argument("--methods", nargs="+", default=["rtn", "mse", "hqq", "gptq"],
                   choices=["rtn", "mse", "hqq", "gptq", "gptq-mse"],
                   help="gptq-mse: GPTQ setting each group's qparams by the MSE search")
    p.add_argument("--schemes", nargs="+", default=["int4", "int8"], choices=["int4", "int8"])
    p.add_argument("--group-size", type=int, default=128, help="int4 group size (default 128)")
    p.add_argument("--asymmetric", action="store_true", help="unsigned codes and zero points")
    p.add_argument("--calibration", metavar="FILE", help="GPTQ text, one sample a line")
    p.add_argument("--samples", type=int, default=128)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--device", default="cpu")
    p.add_argument("--per-layer", action="store_true", help="print each layer's SQNR")
    p.add_argument("--json", metavar="OUT", help="write the results as JSON")
    return p.parse_args(argv)


def configs(args) -> dict:
    import gpuquant as gq

    sym = not args.asymmetric
    out = {}
    if "int4" in args.schemes:
        out["int4"] = gq.QuantConfig.int4_per_group(args.group_size, symmetric=sym)
    if "int8" in args.schemes:
        out["int8"] = gq.QuantConfig(scheme="int8", granularity="channel", symmetric=sym)
    return out


def embed(model, batch):
    import torch

    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1)


def similarity(want, got) -> tuple[float, float]:
    import torch

    cos = torch.nn.functional.cosine_similarity(want.double(), got.double(), dim=-1)
    return float(cos.min()), float(cos.mean())


def run_one(base, config, method: str, calibration) -> dict:
    import gpuquant as gq

    model = copy.deepcopy(base)
    if method in ("mse", "gptq-mse"):
        config = config.replace(calibration="mse")
        method = {"mse": "rtn", "gptq-mse": "gptq"}[method]
    start = time.perf_counter()
    report = gq.quantize_model(model, config, method=method,
                               calibration=calibration if method == "gptq" else None)
    seconds = time.perf_counter() - start
    return {"layers": {r.name: r.sqnr_db for r in report.layers}, "seconds": seconds,
            "model": model}


def load(args):
    from transformers import AutoModel

    from gpuquant.model.text import load_tokenizer, read_lines, tokenize_samples

    tokenizer = load_tokenizer(args.model_dir)
    model = AutoModel.from_pretrained(args.model_dir, local_files_only=True).eval()
    model = model.float().to(args.device)
    lines = read_lines(args.calibration, args.samples) if args.calibration else \
        CALIBRATION_TEXT[: args.samples]
    calibration = tokenize_samples(tokenizer, lines, args.seq_len, args.device)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    batch = dict(tokenizer(EVAL_TEXT, return_tensors="pt", padding=True, truncation=True,
                           max_length=args.seq_len))
    return model, calibration, {k: v.to(args.device) for k, v in batch.items()}


def measure(args) -> dict:
    model, calibration, batch = load(args)
    want = embed(model, batch)
    rows = []
    for config in configs(args).values():
        for method in args.methods:
            got = run_one(model, config, method, calibration)
            cmin, cmean = similarity(want, embed(got.pop("model"), batch))
            sq = list(got["layers"].values())
            rows.append({"scheme": config.describe(), "method": method, "cos_min": cmin,
                         "cos_mean": cmean, "sqnr_mean": sum(sq) / len(sq), "sqnr_min": min(sq),
                         "seconds": got["seconds"], "layers": got["layers"]})
    return {"model_dir": args.model_dir, "device": args.device, "eval_sentences": len(EVAL_TEXT),
            "calibration_samples": len(calibration), "rows": rows}


def table(result: dict, per_layer: bool) -> str:
    lines = [f"model {result['model_dir']} on {result['device']}: embedding cosine against the "
             f"float model over {result['eval_sentences']} sentences; GPTQ on "
             f"{result['calibration_samples']} calibration samples",
             f"{'scheme':<32} {'method':<8} {'cos min':>9} {'cos mean':>9} {'SQNR mean':>10} "
             f"{'SQNR min':>9} {'seconds':>8}"]
    for r in result["rows"]:
        lines.append(f"{r['scheme']:<32} {r['method']:<8} {r['cos_min']:9.6f} {r['cos_mean']:9.6f} "
                     f"{r['sqnr_mean']:10.2f} {r['sqnr_min']:9.2f} {r['seconds']:8.2f}")
    if per_layer:
        for scheme in dict.fromkeys(r["scheme"] for r in result["rows"]):
            rows = [r for r in result["rows"] if r["scheme"] == scheme]
            lines.append(f"\nSQNR dB per layer, {scheme}")
            lines.append(f"{'layer':<48} " + " ".join(f"{r['method']:>8}" for r in rows))
            for name in rows[0]["layers"]:
                lines.append(f"{name:<48} " + " ".join(f"{r['layers'][name]:8.2f}" for r in rows))
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse(argv)
    result = measure(args)
    print(table(result, args.per_layer))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
