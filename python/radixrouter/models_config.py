"""Which model names the router serves and where each one goes.

Sources, merged in this order:
- ``--worker-url URL`` (SGLang workers of the *native* model, ``--served-model-name``; the router renders
  its template and tokenizes when a tokenizer is configured);
- ``--openai-url [NAME=]URL`` (OpenAI-compatible upstreams; ``NAME=`` serves them as model NAME, without
  it they are *passthrough* upstreams: every model name the router does not serve otherwise goes there
  unchanged), all with the key from ``--openai-api-key-env``;
- ``--config FILE`` (TOML, or YAML when PyYAML is installed)::

      [models."gpt-4o-mini"]                      # the name clients use
      kind = "openai"                              # defaults for the upstreams below
      api_key_env = "OPENAI_API_KEY"               # the variable that holds the key (never the key itself)
      upstreams = [
        { url = "https://api.openai.com/v1", model = "gpt-4o-mini", weight = 3 },
        { url = "https://relay.example/v1", api_key_env = "RELAY_KEY", weight = 1 },
      ]

      [models.qwen3]
      upstreams = [{ url = "http://10.0.0.5:30000", kind = "sglang" }]

  Per upstream: ``url``, ``kind`` (``sglang``: an SGLang server, reached at ``/v1/...``, aborted with
  ``/abort_request``; ``openai``: any OpenAI-compatible base URL, the one an OpenAI SDK's ``base_url``
  takes, ``/v1`` added when it has no path), ``weight`` (> 0, default 1), ``api_key_env``, ``model`` (the
  name the upstream knows the model by; default: the client's name). A model named ``"*"`` is passthrough.

A config-file model with the native name whose upstreams are all ``sglang`` joins the native fleet; every
other model is *relayed*: the client's request goes to the upstream's OpenAI endpoint with the model name
mapped and the upstream key injected (see :mod:`radixrouter.relay`).

Errors are :class:`ModelConfigError` (a ``ValueError``) with one clear line; keys are read from the
environment when the app is built and never appear in errors or logs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from radixrouter.workers import WorkerError, normalize_url

KINDS = ("sglang", "openai")
PASSTHROUGH = "*"

__all__ = ["KINDS", "PASSTHROUGH", "ModelConfigError", "ModelSpec", "UpstreamSpec", "build_models", "load_file"]


class ModelConfigError(ValueError):
    """A bad --openai-url, --config file or key variable."""


@dataclass(slots=True)
class UpstreamSpec:
    url: str
    kind: str = "openai"
    weight: float = 1.0
    api_key_env: str | None = None
    model: str | None = None  # the upstream's own name for the model; None = the client's name

    def base_url(self) -> str:
        """Where the OpenAI endpoints are: `{base}/chat/completions`, `{base}/completions`, `{base}/models`."""
        return self.url + "/v1" if self.kind == "sglang" else self.url

    def api_key(self) -> str | None:
        if not self.api_key_env:
            return None
        value = os.environ.get(self.api_key_env)
        if not value:
            raise ModelConfigError(f"the variable {self.api_key_env} (an upstream API key) is not set or empty")
        return value


@dataclass(slots=True)
class ModelSpec:
    name: str
    upstreams: list[UpstreamSpec] = field(default_factory=list)

    @property
    def passthrough(self) -> bool:
        return self.name == PASSTHROUGH


def _norm_upstream_url(url: str, kind: str) -> str:
    try:
        url = normalize_url(url)
    except WorkerError as e:
        raise ModelConfigError(str(e)) from None
    u = urlsplit(url)
    if u.username is not None or u.password is not None:
        raise ModelConfigError(f"upstream URL for {u.hostname}: put credentials in a key variable "
                               "(api_key_env / --openai-api-key-env), not in the URL")
    if u.fragment:
        raise ModelConfigError(f"upstream URL {url!r}: no '#fragment' allowed")
    if kind == "openai" and u.path in ("", "/"):
        url += "/v1"
    return url


def _env_name_ok(name: object, where: str) -> str | None:
    if name is None:
        return None
    if not isinstance(name, str) or not name or not all(c.isalnum() or c == "_" for c in name):
        raise ModelConfigError(f"{where}: api_key_env must be the NAME of an environment variable")
    return name


def parse_openai_flag(value: str, key_env: str | None) -> ModelSpec:
    """`--openai-url [NAME=]URL` -> a one-upstream model (NAME, or passthrough)."""
    name = PASSTHROUGH
    url = value.strip()
    head, sep, rest = url.partition("=")
    if sep and "://" not in head and "/" not in head:
        name, url = head.strip(), rest.strip()
        if not name:
            raise ModelConfigError(f"--openai-url {value!r}: empty model name before '='")
    up = UpstreamSpec(_norm_upstream_url(url, "openai"), "openai", 1.0,
                      _env_name_ok(key_env, "--openai-api-key-env"))
    return ModelSpec(name, [up])


_UPSTREAM_KEYS = {"url", "kind", "weight", "api_key_env", "model"}
_MODEL_KEYS = {"upstreams", "kind", "weight", "api_key_env", "model"}


def load_file(path: str) -> list[ModelSpec]:
    """The models of a TOML (or, with PyYAML, YAML) config file."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ModelConfigError(f"--config {path}: {e.strerror or e}") from None
    if path.endswith((".yaml", ".yml")):
        try:
            import yaml  # type: ignore[import-untyped]
        except ImportError:
            raise ModelConfigError(f"--config {path}: YAML needs PyYAML (pip install 'radixrouter[yaml]'); "
                                   "or write the file in TOML") from None
        try:
            doc = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise ModelConfigError(f"--config {path}: invalid YAML: {str(e).splitlines()[0]}") from None
    else:
        try:
            import tomllib
        except ImportError:  # Python 3.10
            try:
                import tomli as tomllib  # type: ignore[no-redef]
            except ImportError:
                raise ModelConfigError(f"--config {path}: TOML needs Python 3.11+ or the tomli package") from None
        try:
            doc = tomllib.loads(raw.decode("utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ModelConfigError(f"--config {path}: invalid TOML: {e}") from None
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise ModelConfigError(f"--config {path}: expected a table with a 'models' table")
    extra = set(doc) - {"models"}
    if extra:
        raise ModelConfigError(f"--config {path}: unknown top-level key(s) {', '.join(sorted(extra))}")
    models = doc.get("models") or {}
    if not isinstance(models, dict):
        raise ModelConfigError(f"--config {path}: 'models' must map model names to tables")
    out = []
    for name, m in models.items():
        where = f"--config {path}: models.{name}"
        if not isinstance(name, str) or not name:
            raise ModelConfigError(f"--config {path}: model names must be non-empty strings")
        if not isinstance(m, dict):
            raise ModelConfigError(f"{where} must be a table")
        bad = set(m) - _MODEL_KEYS
        if bad:
            raise ModelConfigError(f"{where}: unknown key(s) {', '.join(sorted(bad))}")
        ups = m.get("upstreams")
        if not isinstance(ups, list) or not ups:
            raise ModelConfigError(f"{where}: 'upstreams' must be a non-empty list")
        spec = ModelSpec(name)
        for i, u in enumerate(ups):
            uw = f"{where}.upstreams[{i}]"
            if isinstance(u, str):
                u = {"url": u}
            if not isinstance(u, dict):
                raise ModelConfigError(f"{uw} must be a table or a URL string")
            bad = set(u) - _UPSTREAM_KEYS
            if bad:
                raise ModelConfigError(f"{uw}: unknown key(s) {', '.join(sorted(bad))}")
            merged = {k: m[k] for k in ("kind", "weight", "api_key_env", "model") if k in m} | u
            url = merged.get("url")
            if not isinstance(url, str):
                raise ModelConfigError(f"{uw}: 'url' (a string) is required")
            kind = merged.get("kind", "openai")
            if kind not in KINDS:
                raise ModelConfigError(f"{uw}: kind must be 'sglang' or 'openai', got {kind!r}")
            weight = merged.get("weight", 1)
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 < weight < 1e9:
                raise ModelConfigError(f"{uw}: weight must be a number > 0")
            umodel = merged.get("model")
            if umodel is not None and (not isinstance(umodel, str) or not umodel):
                raise ModelConfigError(f"{uw}: 'model' must be a non-empty string")
            spec.upstreams.append(UpstreamSpec(_norm_upstream_url(url, kind), kind, float(weight),
                                               _env_name_ok(merged.get("api_key_env"), uw), umodel))
        out.append(spec)
    return out


def build_models(config) -> tuple[list[str], list[ModelSpec]]:
    """(extra native SGLang worker URLs, relayed models) from a Config; raises ModelConfigError.

    Also checks that every key variable named is set, so a missing key fails at startup, not per request.
    """
    native_name = config.model_name()
    relayed: dict[str, ModelSpec] = {}
    native_extra: list[str] = []
    for value in config.openai_urls or ():
        spec = parse_openai_flag(value, config.openai_api_key_env)
        relayed.setdefault(spec.name, ModelSpec(spec.name)).upstreams.extend(spec.upstreams)
    if config.config_file:
        for spec in load_file(config.config_file):
            if (spec.name == native_name and all(u.kind == "sglang" for u in spec.upstreams)
                    and all(u.model is None and u.api_key_env is None for u in spec.upstreams)
                    and spec.name not in relayed):
                native_extra += [u.url for u in spec.upstreams]
                continue
            if spec.passthrough and spec.name in relayed:  # unnamed --openai-url + "*": one pool
                relayed[spec.name].upstreams.extend(spec.upstreams)
                continue
            if spec.name in relayed:
                raise ModelConfigError(f"model {spec.name!r} is defined twice (--openai-url and --config)")
            relayed[spec.name] = spec
    if native_name in relayed and config.worker_urls:
        raise ModelConfigError(f"model {native_name!r} has --worker-url workers and also relayed upstreams; "
                               "serve them under different names")
    for spec in relayed.values():
        seen = set()
        for u in spec.upstreams:
            u.api_key()  # raises when the variable is missing
            ident = (u.url, u.api_key_env, u.model)
            if ident in seen:
                raise ModelConfigError(f"model {spec.name!r}: upstream {u.url} is listed twice")
            seen.add(ident)
    return native_extra, list(relayed.values())
