"""Load a model as the Generator does and serve it: `kr-mini-llm serve` = `scripts/serve.py`
= `python -m kr_mini_llm.serve`.

    python scripts/serve.py --model checkpoints/demo                  # http://127.0.0.1:8000
    python scripts/serve.py --model checkpoints/demo --adapter-path adapters/demo --max-batch 16
    KR_MINI_LLM_API_KEY=secret python scripts/serve.py --model checkpoints/demo --host 0.0.0.0
    python scripts/serve.py --model checkpoints/demo --allowed-hosts llm.example.com   # behind that name
    python scripts/serve.py --model checkpoints/demo --speculative prompt_lookup --num-draft-tokens 4
"""
from __future__ import annotations

import argparse
import inspect
import ipaddress
import logging
import os
import socket
from pathlib import Path

from ..inference.speculative import check_speculative
from .command import command

log = logging.getLogger("kr_mini_llm.serve")


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog or "serve.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="checkpoint directory or training output directory")
    p.add_argument("--adapter-path", "--adapter_path", dest="adapter_path",
                   help="LoRA adapters from scripts/lora.py to apply (unfused)")
    p.add_argument("--dtype", default=None,
                   help="weight dtype, passed to Generator.from_pretrained when it takes one (default: its default)")
    p.add_argument("--device", default=None, help="cpu, cuda, mps (default: best available)")
    p.add_argument("--tokenizer", default=None, help="tokenizer.model if the checkpoint has none")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (0: any free port, printed at start)")
    p.add_argument("--api-key", "--api_key", dest="api_key", default=os.environ.get("KR_MINI_LLM_API_KEY"),
                   help="require 'Authorization: Bearer KEY' on /v1 (default: $KR_MINI_LLM_API_KEY, else none)")
    p.add_argument("--max-batch", "--max_batch", dest="max_batch", type=int, default=8,
                   help="rows of the KV cache: requests generated together (default 8)")
    p.add_argument("--served-model-name", dest="served_model_name",
                   help="the model id clients send (default: the model directory's name)")
    p.add_argument("--max-body-bytes", dest="max_body_bytes", type=int, default=1 << 20,
                   help="largest request body accepted (default 1 MiB)")
    p.add_argument("--allowed-hosts", "--allowed_hosts", dest="allowed_hosts", action="append", default=[],
                   metavar="HOSTS", help="host names clients may use besides localhost, 127.0.0.1, [::1] and --host "
                   "(comma-separated or repeated; '*' allows any, '*.example.com' its subdomains). Other Host "
                   "headers are refused, so a web page cannot reach the server through DNS rebinding")
    sp = p.add_argument_group("speculative decoding (docs/speculative.md): each running request drafts tokens "
                              "and one batched forward verifies them; greedy answers and sampling's distribution "
                              "stay those of plain decoding")
    sp.add_argument("--speculative", choices=["prompt_lookup", "draft"], default=None,
                    help="prompt_lookup: drafts from the request's own text; draft: from --draft-model")
    sp.add_argument("--draft-model", "--draft_model", dest="draft_model", default=None,
                    help="a smaller model with the same tokenizer (implies --speculative draft)")
    sp.add_argument("--num-draft-tokens", "--num_draft_tokens", dest="num_draft_tokens", type=int, default=5,
                    help="drafts per request and step (default 5)")
    sp.add_argument("--ngram", type=int, default=3, help="prompt lookup: longest n-gram matched (default 3)")
    p.add_argument("--log-level", dest="log_level", default="info", choices=["debug", "info", "warning", "error"])
    return p


def parse_args(argv=None, prog: str | None = None):
    p = build_parser(prog)
    args = p.parse_args(argv)
    if args.max_batch < 1:
        p.error(f"--max-batch must be >= 1, got {args.max_batch}")
    if not 0 <= args.port <= 65535:
        p.error(f"--port must be in 0..65535, got {args.port}")
    if args.draft_model and args.speculative is None:
        args.speculative = "draft"
    if args.draft_model and args.speculative != "draft":
        p.error(f"--draft-model drafts only with --speculative draft, not {args.speculative}")
    try:
        check_speculative(args.speculative, args.num_draft_tokens, args.ngram, args.draft_model is not None)
    except ValueError as e:
        p.error(str(e))
    return args


def load_generator(model: str, adapter_path=None, dtype: str | None = None, device=None, tokenizer=None,
                   draft_model=None):
    """Generator.from_pretrained, with `dtype` passed on only when the loader takes one."""
    from ..inference import Generator

    kwargs = dict(device=device, tokenizer_path=tokenizer, adapter_path=adapter_path)
    if draft_model is not None:
        kwargs["draft_model"] = draft_model
    if dtype is not None:
        if "dtype" in inspect.signature(Generator.from_pretrained).parameters:
            kwargs["dtype"] = dtype
        elif dtype not in ("float32", "fp32"):
            raise ValueError(f"--dtype {dtype}: this version of Generator.from_pretrained loads float32 weights "
                             "only; leave --dtype out or pass --dtype float32")
    return Generator.from_pretrained(model, **kwargs)


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.listen(2048)  # from here on, clients queue until uvicorn accepts (it starts just after)
    return sock


def allowed_hosts(bind_host: str, extra: list[str]) -> list[str]:
    """The Host names the server answers to: loopback names, the bind address (for a wildcard bind,
    this machine's name and addresses), and `extra` (items may be comma-separated)."""
    from ..serve.errors import LOOPBACK_HOSTS

    hosts = [*LOOPBACK_HOSTS, bind_host]
    if bind_host in ("0.0.0.0", "::", ""):
        name = socket.gethostname()
        hosts.append(name)
        try:
            hosts += [info[4][0] for info in socket.getaddrinfo(name, None)]
        except OSError:  # no resolver for our own name: the user names the hosts with --allowed-hosts
            pass
    hosts += [h.strip() for item in extra for h in item.split(",") if h.strip()]
    return list(dict.fromkeys(h.lower() for h in hosts))


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


@command(ValueError, OSError)  # OSError: a model file that cannot be read, a port that cannot be bound
def main(argv=None, prog: str | None = None) -> int:
    args = parse_args(argv, prog)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import uvicorn

    from ..serve.app import create_app
    from ..serve.engine import Engine

    generator = load_generator(args.model, args.adapter_path, args.dtype, args.device, args.tokenizer,
                               args.draft_model)
    sock = _listen(args.host, args.port)
    name = args.served_model_name or Path(args.model).resolve().name
    engine = Engine(generator, max_batch=args.max_batch, speculative=args.speculative,
                    num_draft_tokens=args.num_draft_tokens, ngram=args.ngram)
    app = create_app(engine, name, api_key=args.api_key, max_body_bytes=args.max_body_bytes,
                     allowed_hosts=allowed_hosts(args.host, args.allowed_hosts))
    if not _is_loopback(args.host) and not args.api_key:
        log.warning("listening on %s without --api-key: anyone who can reach this address can use the model",
                    args.host)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    spec = f", speculative {args.speculative} k={args.num_draft_tokens}" if args.speculative else ""
    print(f"serving '{name}' on http://{shown}:{port}  (chat page: /, API: /v1, max batch {args.max_batch}, "
          f"context {engine.context_length}, device {generator.device}{spec})", flush=True)
    config = uvicorn.Config(app, log_level=args.log_level, timeout_graceful_shutdown=5)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    except KeyboardInterrupt:  # Ctrl-C: uvicorn has shut down gracefully, then re-raised the signal
        pass
    return 0
