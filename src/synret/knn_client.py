"""A client for clip-retrieval's kNN service (``clip-retrieval back``), spoken to over HTTP.

clip-retrieval 2.45 pins numpy<2, pyarrow<16 and open_clip<3, so it cannot live in the workflow's
environment. It runs as a server in an environment of its own (``envs/clip-retrieval.yaml``) and the
workflow talks to it only through its HTTP protocol: ``POST /knn-service`` with a JSON body holding
``text`` or ``embedding_input``, ``modality`` (``image``: search the image index, ``text``: the
caption index), ``num_images`` (k), ``indice_name`` and the post-filters (``deduplicate``,
``use_safety_model``, ``use_violence_detector``), answered by a list of
``{<metadata columns>..., "id": <index row>, "similarity": <inner product>}``; ``GET /indices-list``
names the indices it serves.

This module needs nothing beyond the standard library, so the Snakefile can import it cheaply.
Run as a script with the clip-retrieval environment's Python, it starts ``clip-retrieval back``
bound to the loopback interface (the stock command listens on every interface)::

    <venv>/bin/python src/synret/knn_client.py serve --indices_paths indices.json --port 1234 ...
"""

from __future__ import annotations

import hashlib
import json
import socket
import sys
import time
import urllib.error
import urllib.request
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

SERVICE_KEY = "pool.knn_service"
QUERY_MODES = ("embedding", "text")
SERVICE_DEFAULTS = {"indice_name": None, "query": "embedding", "columns": None,
                    "timeout": 60.0, "retries": 3, "parallel": 4}


class KnnServiceError(RuntimeError):
    """The kNN service could not be reached or answered with an error; the message names its URL."""


def base_url(url: str) -> str:
    """The service's root URL, whether given as ``http://host:port`` or ``.../knn-service``."""
    url = url.rstrip("/")
    return url[: -len("/knn-service")] if url.endswith("/knn-service") else url


class KnnServiceClient:
    """Queries one index of a running ``clip-retrieval back``.

    Every request is retried ``retries`` times (waiting ``backoff``, then twice as long, ...) when the
    connection fails, times out or the server answers 5xx; a 4xx answer is not retried. Failures
    raise :class:`KnnServiceError` naming the URL and the config key it came from.
    """

    def __init__(self, url: str, indice_name: str | None = None, *, timeout: float = 60.0, retries: int = 3,
                 backoff: float = 1.0, deduplicate: bool = False, key: str = f"{SERVICE_KEY}.url"):
        if not url.startswith(("http://", "https://")):
            raise KnnServiceError(f"kNN service URL {url!r} is not an http(s) URL (config key '{key}')")
        self.url = base_url(url)
        self.indice_name = indice_name
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.deduplicate = deduplicate
        self.key = key

    def _request(self, path: str, payload: dict | None = None) -> Any:
        url = f"{self.url}{path}"
        data = None if payload is None else json.dumps(payload).encode()
        last = "no attempt"
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            request = urllib.request.Request(url, data=data, method="GET" if data is None else "POST",
                                             headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return json.loads(response.read().decode())
            except urllib.error.HTTPError as e:
                body = e.read().decode(errors="replace").strip()[:300]
                last = f"HTTP {e.code} {e.reason}" + (f": {body}" if body else "")
                if e.code < 500:
                    break
            except (urllib.error.URLError, socket.timeout, ConnectionError) as e:
                last = str(getattr(e, "reason", e))
            except json.JSONDecodeError as e:
                last = f"the answer is not JSON ({e})"
                break
        tries = attempt + 1
        raise KnnServiceError(f"kNN service {url} failed after {tries} attempt{'s' * (tries > 1)}: {last} "
                              f"(config key '{self.key}')")

    def indices(self) -> list[str]:
        """The names of the indices the service serves."""
        return list(self._request("/indices-list"))

    def query(self, *, text: str | None = None, embedding: Sequence[float] | None = None, modality: str = "image",
              k: int = 100) -> list[dict]:
        """The ``k`` nearest neighbours of a text (embedded by the server) or of an embedding.

        Each result is a dict of the index's metadata columns plus ``id`` (the index row) and
        ``similarity``, best first. clip-retrieval's post-filters are off except ``deduplicate``.
        """
        if (text is None) == (embedding is None):
            raise ValueError("give exactly one of text and embedding")
        if modality not in ("image", "text"):
            raise ValueError(f"unknown modality {modality!r}; choose from ('image', 'text')")
        payload = {
            "modality": modality,
            "num_images": int(k),
            "num_result_ids": int(k),
            "indice_name": self.indice_name,
            "deduplicate": self.deduplicate,
            "use_safety_model": False,
            "use_violence_detector": False,
            "use_mclip": False,
            "aesthetic_score": "",
            "aesthetic_weight": "",
        }
        if text is not None:
            payload["text"] = text
        else:
            payload["embedding_input"] = [float(x) for x in embedding]
        results = self._request("/knn-service", payload)
        if not isinstance(results, list):
            raise KnnServiceError(f"kNN service {self.url}/knn-service answered {str(results)[:200]!r}, "
                                  f"not a list of results (config key '{self.key}')")
        return results

    def query_many(self, items: Iterable[dict], parallel: int = 4) -> Iterator[list[dict]]:
        """``query(**item)`` for every item, answers yielded in order, ``parallel`` requests in flight.

        Items are drawn lazily and at most ``2 * parallel`` answers wait unread, so a long run of
        queries (the paper's: ~10^5 requests of 500 results) holds little in memory at once.
        """
        if parallel <= 1:
            for item in items:
                yield self.query(**item)
            return
        with ThreadPoolExecutor(max_workers=parallel) as pool:
            pending: deque = deque()
            for item in items:
                pending.append(pool.submit(self.query, **item))
                if len(pending) >= 2 * parallel:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()


def service_settings(pool: dict) -> dict | None:
    """The ``pool.knn_service`` block with its defaults filled in, or None when no service is set."""
    service = pool.get("knn_service")
    if not service:
        return None
    out = {**SERVICE_DEFAULTS, **service}
    if out["query"] not in QUERY_MODES:
        raise ValueError(f"config key '{SERVICE_KEY}.query': {out['query']!r} is not one of {QUERY_MODES}")
    return out


def knn_settings(knn: dict, pool: dict) -> dict:
    """The kNN query job's settings: ``retrieval.knn``, plus ``service`` only when a service is used
    (so a local-index configuration keeps exactly the settings, and the cache, it had before)."""
    from .config import canonical

    service = service_settings(pool)
    return canonical({**knn, "service": service}) if service else canonical(knn)


def open_clip_config_dir(venv: str | Path) -> Path:
    """Where the open_clip of a venv (e.g. the clip-retrieval one) looks for model configs."""
    found = sorted(Path(venv).glob("lib/python3*/site-packages/open_clip/model_configs"))
    if not found:
        raise FileNotFoundError(f"no open_clip package in the environment {str(venv)!r}")
    return found[-1]


def clip_model_spec(model_dir: str | Path, config_dir: str | Path) -> str:
    """The ``clip_model`` entry that makes ``clip-retrieval back`` load a CLIP saved in open_clip's
    hub layout (``open_clip_config.json`` + weights, what ``local-dir:`` names), with no network.

    clip-retrieval hands ``open_clip:<arch>/<checkpoint>`` to open_clip as ``create_model(arch,
    pretrained=checkpoint)``, and that open_clip (2.32) knows architectures only by the JSON files in
    its ``model_configs`` folder (``config_dir``). The model's config is written there under a name
    derived from its content, ``synret-<hash>``, and the spec points at the absolute weights path.
    """
    model_dir = Path(model_dir).resolve()
    config_file = model_dir / "open_clip_config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"CLIP model directory {str(model_dir)!r} has no open_clip_config.json")
    weights = [model_dir / name for name in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
               if (model_dir / name).is_file()]
    if not weights:
        raise FileNotFoundError(f"CLIP model directory {str(model_dir)!r} has no open_clip weights file")
    model_cfg = json.loads(config_file.read_text())["model_cfg"]
    text = json.dumps(model_cfg, sort_keys=True, indent=2)
    arch = "synret-" + hashlib.sha1(text.encode()).hexdigest()[:12]
    (Path(config_dir) / f"{arch}.json").write_text(text)
    return f"open_clip:{arch}/{weights[0]}"


def serve(argv: Sequence[str]) -> None:
    """Start ``clip-retrieval back`` with these arguments, listening on 127.0.0.1 only.

    Runs in the clip-retrieval environment. ``clip_back`` hard-codes ``host="0.0.0.0"``; Flask's
    ``run`` is wrapped so that the host becomes the loopback address (or ``--host``, if given).
    """
    import fire
    import flask
    from clip_retrieval.clip_back import clip_back

    args, host = list(argv), "127.0.0.1"
    if "--host" in args:
        i = args.index("--host")
        host = args[i + 1]
        del args[i : i + 2]
    original = flask.Flask.run

    def run(self, *args, **kwargs):
        kwargs.update(zip(("host", "port", "debug", "load_dotenv"), args))
        kwargs["host"] = host
        return original(self, **kwargs)

    flask.Flask.run = run
    fire.Fire(clip_back, command=args, name="clip-retrieval back")


if __name__ == "__main__":
    # run as a script, this file's folder heads sys.path: its modules (clip.py, config.py, ...) must not
    # shadow the packages clip-retrieval imports (the OpenAI `clip` above all)
    here = str(Path(__file__).resolve().parent)
    sys.path[:] = [p for p in sys.path if str(Path(p or ".").resolve()) != here]
    if sys.argv[1:2] != ["serve"]:
        sys.exit("usage: python knn_client.py serve [--host 127.0.0.1] <clip-retrieval back arguments>")
    serve(sys.argv[2:])
