"""Asking Gemini: a google-genai client from the environment, and one call with retries.

Any object with `client.models.generate_content(model=, contents=, config=)` returning something with a
`.text` works as the client; tests pass a fake one. Sleeping goes through `sleep`, so tests use a fake clock.
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass
from typing import Callable

from ckptmap.errors import CkptmapError
from ckptmap.llm_hints.priors import HintsWarning
from ckptmap.llm_hints.prompt import RESPONSE_SCHEMA

DEFAULT_MODEL = "gemini-2.5-pro"
API_KEY_ENV = "GEMINI_API_KEY"


class HintsError(CkptmapError):
    """Hints were asked for with `--hints gemini` but cannot be asked (no key, rejected request)."""


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff: wait base, base*factor, ... (at most `max_wait`) between `attempts` tries."""

    attempts: int = 6
    base: float = 2.0
    factor: float = 2.0
    max_wait: float = 60.0

    def wait(self, retry: int) -> float:
        return min(self.max_wait, self.base * self.factor ** retry)


def make_client(api_key: str | None = None):
    """A google-genai client with GEMINI_API_KEY from the environment; HintsError when there is none."""
    key = api_key or os.environ.get(API_KEY_ENV)
    if not key:
        raise HintsError(f"--hints gemini needs an API key in ${API_KEY_ENV}; set it, or use --hints cache "
                         "(recorded answers) or --hints off", key=API_KEY_ENV)
    from google import genai

    return genai.Client(api_key=key)


def generation_config():
    """JSON output constrained by RESPONSE_SCHEMA, temperature 0 so that one prompt gives one answer."""
    from google.genai import types

    return types.GenerateContentConfig(
        response_mime_type="application/json",
        response_schema=RESPONSE_SCHEMA,
        temperature=0.0,
    )


def _error_code(exc: BaseException) -> int | None:
    code = getattr(exc, "code", None)
    return code if isinstance(code, int) else None


def is_retryable(exc: BaseException) -> bool:
    """Rate limits (429 / RESOURCE_EXHAUSTED), server-side errors (5xx) and dropped connections."""
    code = _error_code(exc)
    status = str(getattr(exc, "status", "") or "")
    if code == 429 or "RESOURCE_EXHAUSTED" in status or "RESOURCE_EXHAUSTED" in str(exc):
        return True
    if code is not None and 500 <= code < 600:
        return True
    return isinstance(exc, (ConnectionError, TimeoutError))


def ask(client, model: str, prompt: str, *, config=None, policy: RetryPolicy = RetryPolicy(),
        sleep: Callable[[float], None] = time.sleep) -> str | None:
    """The answer text for `prompt`, or None when every try gave an empty answer or a retryable error.

    Empty or None answers, rate limits and server errors are retried with backoff (a HintsWarning then
    reports the give-up). Any other API error (bad key, unknown model) raises HintsError naming the model.
    """
    config = generation_config() if config is None else config
    last = "no answer"
    for attempt in range(policy.attempts):
        if attempt:
            sleep(policy.wait(attempt - 1))
        try:
            response = client.models.generate_content(model=model, contents=prompt, config=config)
        except Exception as e:  # the SDK raises its own classes; only the retryable ones are caught here
            if not is_retryable(e):
                raise HintsError(f"Gemini rejected the request: {e}", key=model) from e
            last = f"{type(e).__name__}: {e}"
            continue
        text = getattr(response, "text", None) if response is not None else None
        if text is not None and str(text).strip():
            return str(text)
        last = "empty answer" if response is not None else "None response"
    warnings.warn(f"gemini:{model}: gave up after {policy.attempts} tries ({last}); going on without hints",
                  HintsWarning, stacklevel=2)
    return None
