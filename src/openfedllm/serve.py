"""`openfedllm serve`: a model (base + adapter) as an OpenAI-compatible chat-completions endpoint.

It listens on 127.0.0.1 only: it is for trying a trained model from any OpenAI client, and for
using it as a local judge (`openfedllm eval --judge-url http://127.0.0.1:PORT/v1`), not for
exposure to a network. Endpoints: GET /v1/models, POST /v1/chat/completions (messages,
max_tokens or max_completion_tokens, temperature, stop; one choice, no streaming). Requests are
answered one at a time: one model, one forward at a time. Every malformed request, down to a
request line http.server cannot parse, gets OpenAI's error object: 400, 413 for a body over
MAX_BODY, 408 for one that does not arrive within the read timeout (--read-timeout); max_tokens is capped at the
model's context length.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from .errors import UserError

MAX_TOKENS = 512  # when a request names none
MAX_BODY = 4 * 2**20  # bytes: a request body above this is refused (413) before it is read
READ_TIMEOUT = 30.0  # seconds a connection may take to send its request (a short body cannot pin a thread)


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.0"  # one request per connection

    def setup(self):
        self.timeout = self.server.read_timeout  # the socket timeout StreamRequestHandler sets
        super().setup()

    def log_message(self, fmt, *args):  # one line per request, not the default's stderr noise
        if self.server.verbose:
            print(f"{self.command} {getattr(self, 'path', '')} {args[1] if len(args) > 1 else ''}", flush=True)

    def _send(self, status: int, payload: dict) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, message: str, param: str | None = None) -> None:
        """OpenAI's error object: {"error": {"message", "type", "param", "code"}}."""
        kind = "invalid_request_error" if status < 500 else "server_error"
        self._send(status, {"error": {"message": message, "type": kind, "param": param, "code": None}})

    def send_error(self, code, message=None, explain=None):
        """http.server's own refusals (garbage request line, bad or oversized headers) in OpenAI's
        format too; a request line it cannot parse would otherwise get a bare body, no status line."""
        self.request_version = "HTTP/1.0"
        self.close_connection = True
        self._error(code, message or self.responses.get(code, ("error",))[0])

    def do_GET(self):
        if self.path.rstrip("/") in ("/v1/models", "/models"):
            self._send(
                200,
                {"object": "list", "data": [{"id": self.server.model_id, "object": "model", "owned_by": "openfedllm"}]},
            )
        else:
            self._error(404, f"no route {self.path}")

    def do_POST(self):
        if self.path.rstrip("/") not in ("/v1/chat/completions", "/chat/completions"):
            return self._error(404, f"no route {self.path}")
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0:
            return self._error(400, f"Content-Length: must be a byte count, got {self.headers.get('Content-Length')!r}")
        if length > MAX_BODY:
            return self._error(413, f"the body has {length} bytes; at most {MAX_BODY} are accepted")
        try:
            body = self.rfile.read(length)
        except TimeoutError:
            return self._error(408, f"the body did not arrive within {self.server.read_timeout:g} s")
        if len(body) < length:
            return self._error(400, f"the body has {len(body)} of the {length} bytes its Content-Length says")
        try:
            request = json.loads(body or b"{}", parse_constant=_no_constant)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            detail = str(exc) if "is not JSON" in str(exc) else "the body is not JSON"
            return self._error(400, detail)
        problem = check_request(request)
        if problem:
            return self._error(400, problem[1], problem[0])
        try:
            self._send(200, self.server.complete(request))
        except Exception as exc:  # noqa: BLE001 - the client gets the reason, the server keeps serving
            self._error(500, f"{type(exc).__name__}: {exc}")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_request(request) -> tuple[str | None, str] | None:
    """(param, message) of the first malformed field of a chat-completions request, else None.
    Every field is checked for its type and range before anything runs, as OpenAI's API does."""
    if not isinstance(request, dict):
        return None, "the body must be a JSON object"
    messages = request.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages", "messages: a non-empty list of {role, content} is required"
    for m in messages:
        if (
            not isinstance(m, dict)
            or m.get("role") not in ("system", "user", "assistant")
            or not isinstance(m.get("content"), str)
        ):
            return "messages", "messages: each needs role system|user|assistant and a string content"
    if messages[-1]["role"] != "user":
        return "messages", "messages: the last message must be the user's"
    for name in ("max_tokens", "max_completion_tokens"):
        value = request.get(name)
        if value is not None and not (_is_int(value) and value >= 1):
            return name, f"{name}: must be an integer of at least 1, got {value!r}"

    temperature = request.get("temperature")
    if temperature is not None and not (_is_number(temperature) and 0 <= temperature <= 2):
        return "temperature", f"temperature: must be a number from 0 to 2, got {temperature!r}"
    n = request.get("n")
    if n is not None and not _is_int(n):
        return "n", f"n: must be an integer, got {n!r}"
    if n is not None and n != 1:
        return "n", "n: only one choice per request"
    stream = request.get("stream")
    if stream is not None and not isinstance(stream, bool):
        return "stream", f"stream: must be true or false, got {stream!r}"
    if stream:
        return "stream", "stream: streaming is not supported"
    stop = request.get("stop")
    if (
        stop is not None
        and not isinstance(stop, str)
        and not (isinstance(stop, list) and len(stop) <= 4 and all(isinstance(x, str) for x in stop))
    ):
        return "stop", f"stop: must be a string or a list of up to 4 strings, got {stop!r}"
    if stop is not None and "" in ([stop] if isinstance(stop, str) else stop):
        return "stop", "stop: an empty stop sequence would stop before the first token"
    seed = request.get("seed")
    if seed is not None and not (_is_int(seed) and 0 <= seed < 2**63):
        return "seed", f"seed: must be an integer from 0 to 2**63 - 1, got {seed!r}"
    return None


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, lm, model_id: str, verbose: bool, read_timeout: float = READ_TIMEOUT):
        super().__init__(("127.0.0.1", port), _Handler)
        self.lm, self.model_id, self.verbose, self.read_timeout = lm, model_id, verbose, read_timeout
        self.context = getattr(getattr(lm.model, "config", None), "max_position_embeddings", None)
        self.lock = threading.Lock()

    def complete(self, request: dict) -> dict:
        import torch

        # check_request has vetted every field's type and range
        stop = request.get("stop") or ()
        stop = (stop,) if isinstance(stop, str) else tuple(stop)
        max_tokens = request.get("max_completion_tokens") or request.get("max_tokens") or MAX_TOKENS
        # capped at the model's context: FastChat's judge asks for 2048 whatever the model
        max_tokens = min(max_tokens, self.context or max_tokens)
        with self.lock:
            self.lm.temperature = float(request.get("temperature") or 0.0)
            if request.get("seed") is not None:
                torch.manual_seed(int(request["seed"]))
            prompt_ids = self.lm.prompt_ids(request["messages"])
            text = self.lm.chat([request["messages"]], max_new_tokens=max_tokens, stop=stop)[0]
        completion_tokens = len(self.lm.tokenizer(text, add_special_tokens=False)["input_ids"])
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model_id,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "length" if completion_tokens >= max_tokens else "stop",
                }
            ],
            "usage": {
                "prompt_tokens": len(prompt_ids),
                "completion_tokens": completion_tokens,
                "total_tokens": len(prompt_ids) + completion_tokens,
            },
        }


def serve(lm, model_id: str, port: int, verbose: bool = True, read_timeout: float = READ_TIMEOUT) -> None:
    try:
        server = _Server(port, lm, model_id, verbose, read_timeout)
    except OSError as exc:
        raise UserError(f"--port {port}: cannot listen on 127.0.0.1 ({exc.strerror})") from None
    bound = server.server_address[1]
    print(f"Serving {model_id} on http://127.0.0.1:{bound}/v1 (OpenAI chat completions); Ctrl-C stops it", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
