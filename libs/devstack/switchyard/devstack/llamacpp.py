"""Run a llama.cpp server (xllamacpp, in-process) until SIGTERM: the local LLM engine."""

from __future__ import annotations

import argparse
import signal
import threading

import xllamacpp  # type: ignore[import-untyped]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", required=True, help="GGUF file")
    ap.add_argument("--alias", required=True, help="model name the server reports")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--parallel", type=int, default=4, help="concurrent sequences (slots)")
    ap.add_argument("--ctx", type=int, default=8192, help="total context, shared by the slots")
    ap.add_argument("--embeddings", action="store_true", help="also serve /v1/embeddings (mean pooling)")
    ap.add_argument("--chat-template-file", help="Jinja chat template, for models that ship none")
    # llama.cpp's host-memory prompt cache (the evicted slots' KV state, for later prefix reuse)
    # defaults to 8 GiB per server and grows ~1.3 MB per distinct SmolLM2 prompt until then: the
    # soak (`./switchyard bench soak`) saw the engine's RSS rise 22 MB/min. Off unless asked for;
    # a slot still reuses its own cached prefix.
    ap.add_argument("--cache-ram-mib", type=int, default=0, help="host-memory prompt cache, MiB (0: off; llama.cpp's default is 8192)")
    args = ap.parse_args()

    p = xllamacpp.CommonParams()
    p.model.path = args.model
    p.model_alias = {args.alias}
    p.hostnames = [args.host]
    p.port = args.port
    p.n_parallel = args.parallel
    p.n_ctx = args.ctx
    p.cpuparams.n_threads = args.threads
    p.cpuparams_batch.n_threads = args.threads
    p.endpoint_metrics = True
    p.cache_ram_mib = args.cache_ram_mib
    if args.embeddings:
        # The same server keeps serving completions.
        p.embedding = True
        p.pooling_type = xllamacpp.llama_pooling_type.LLAMA_POOLING_TYPE_MEAN
    if args.chat_template_file:
        p.use_jinja = True
        p.chat_template = open(args.chat_template_file).read()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    server = xllamacpp.Server(p)
    print(f"llama.cpp serving {args.alias} on {server.listening_address}", flush=True)
    stop.wait()
    del server


if __name__ == "__main__":
    main()
