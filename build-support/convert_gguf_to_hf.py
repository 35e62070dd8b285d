"""Convert a GGUF checkpoint into a Hugging Face safetensors directory that vLLM can serve.

Usage (run by the vLLM venv's python; see build-support/setup-vllm.sh):

    python convert_gguf_to_hf.py MODEL.gguf OUT_DIR [--dtype bfloat16]

Builds a fresh model from the config parsed out of the GGUF metadata, dequantises the GGUF tensors
into it with ``load_state_dict`` and writes ``save_pretrained`` output (config.json,
generation_config.json, model.safetensors) plus the tokenizer (tokenizer.json, tokenizer_config.json
with the GGUF's chat template). Needs transformers, gguf and accelerate; works fully offline.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def _gguf_flag(path: Path, key: str) -> bool | None:
    from gguf import GGUFReader

    field = GGUFReader(str(path)).fields.get(key)
    return None if field is None else bool(field.contents())


def _apply_special_token_flags(tokenizer, gguf_path: Path) -> None:
    """Honour tokenizer.ggml.add_bos_token / add_eos_token, which transformers' GGUF loader drops.

    Gemma needs its <bos> on every prompt (without it the model degenerates); SmolLM2 says False.
    The flags end up in tokenizer.json's post-processor, which vLLM uses as is.
    """
    changed = False
    for flag in ("add_bos_token", "add_eos_token"):
        want = _gguf_flag(gguf_path, f"tokenizer.ggml.{flag}")
        if want is not None and getattr(tokenizer, flag, None) != want:
            setattr(tokenizer, flag, want)
            changed = True
    if changed and hasattr(tokenizer, "update_post_processor"):
        tokenizer.update_post_processor()
    ids = tokenizer("x").input_ids
    if _gguf_flag(gguf_path, "tokenizer.ggml.add_bos_token") and ids[:1] != [tokenizer.bos_token_id]:
        raise SystemExit("convert_gguf_to_hf: could not make the tokenizer add its BOS token")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("gguf", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    args = parser.parse_args(argv)
    if not args.gguf.is_file():
        print(f"convert_gguf_to_hf: no such file {args.gguf}", file=sys.stderr)
        return 2

    import torch
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    t0 = time.monotonic()
    dtype = getattr(torch, args.dtype)
    folder, name = str(args.gguf.parent), args.gguf.name

    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    config.torch_dtype = args.dtype
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    parsed = load_gguf_checkpoint(str(args.gguf), return_tensors=True, model_to_load=model)
    state = parsed["tensors"]
    missing, unexpected = model.load_state_dict(state, strict=False)
    # Tied output embeddings are absent from the GGUF by design; anything else missing is a bug.
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        print(f"convert_gguf_to_hf: missing={missing[:8]} unexpected={list(unexpected)[:8]}", file=sys.stderr)
        return 1
    if tied:
        model.tie_weights()
    model = model.to(dtype).eval()

    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    _apply_special_token_flags(tokenizer, args.gguf)
    if not getattr(tokenizer, "chat_template", None):
        print("convert_gguf_to_hf: warning: the GGUF has no chat template", file=sys.stderr)

    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out, safe_serialization=True)
    tokenizer.save_pretrained(args.out)

    # Smoke test: greedy next token from the saved directory matches the in-memory model.
    reloaded = AutoModelForCausalLM.from_pretrained(args.out, dtype=dtype).eval()
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        a = model(ids).logits[0, -1].argmax().item()
        b = reloaded(ids).logits[0, -1].argmax().item()
    if a != b:
        print("convert_gguf_to_hf: reloaded model disagrees with the converted one", file=sys.stderr)
        return 1
    n = sum(p.numel() for p in model.parameters())
    print(
        f"convert_gguf_to_hf: {config.model_type}, {n / 1e6:.0f}M params, {args.dtype}, "
        f"{len(tokenizer)} tokens, chat template: {'yes' if tokenizer.chat_template else 'no'}, "
        f"'The capital of France is' -> {tokenizer.decode([a])!r}, {time.monotonic() - t0:.1f} s",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
