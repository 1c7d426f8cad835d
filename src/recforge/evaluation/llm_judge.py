"""Opt-in LLM-as-judge evaluation (as in the anime clustering study): a chat model rates each user's
recommendation list given the titles they watched.

Works with any OpenAI-compatible `/chat/completions` endpoint. The prompt template is a file with
`{watched}` and `{recommended}` placeholders; the answer must be JSON with an integer `score` (1-10).
Answers are cached on disk by a hash of (model, prompt), so re-running costs nothing; transient
failures (connection errors, 429, 5xx, unparsable JSON) are retried with exponential back-off.
An LLM's opinion is not ground truth: report it next to, never instead of, the offline metrics.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, Field, ValidationError

from recforge._io import write_text_atomic
from recforge.data.interactions import Interactions
from recforge.errors import ConfigError, RecforgeError

DEFAULT_TEMPLATE = Path(__file__).parent / "templates" / "llm_judge.txt"


class JudgeConfig(BaseModel):
    base_url: str = Field(description="e.g. https://api.openai.com/v1 or http://localhost:8000/v1")
    model: str
    api_key_env: str | None = Field("OPENAI_API_KEY", description="environment variable holding the key (None: no key)")
    prompt_file: str | None = None
    cache_dir: str = ".cache/llm_judge"
    max_retries: int = 3
    backoff_seconds: float = 1.0
    timeout_seconds: float = 60.0
    temperature: float = 0.0


class Verdict(BaseModel):
    score: int = Field(ge=1, le=10)
    relevant: list[str] = Field(default_factory=list)
    reason: str = ""


class JudgeError(RecforgeError):
    """The endpoint kept failing or kept answering something that is not the requested JSON."""


@dataclass
class JudgeCall:
    verdict: Verdict
    cached: bool
    attempts: int


def _extract_json(text: str) -> dict[str, Any]:
    """The first JSON object in a reply (models sometimes wrap it in prose or ``` fences)."""
    match = re.search(r"\{.*\}", text, flags=re.DOTALL)
    if not match:
        raise ValueError("no JSON object in the reply")
    return json.loads(match.group(0))


class LLMJudge:
    def __init__(self, config: JudgeConfig) -> None:
        self.config = config
        template_path = Path(config.prompt_file) if config.prompt_file else DEFAULT_TEMPLATE
        if not template_path.exists():
            raise ConfigError(f"prompt template {template_path} not found")
        self.template = template_path.read_text()
        for placeholder in ("{watched}", "{recommended}"):
            if placeholder not in self.template:
                raise ConfigError(f"prompt template {template_path} lacks the {placeholder} placeholder")
        self.cache_dir = Path(config.cache_dir)
        self.requests_sent = 0

    def prompt(self, watched: list[tuple[str, float | None]], recommended: list[str]) -> str:
        watched_text = "\n".join(f"- {t}" + ("" if r is None else f" [{r:g}]") for t, r in watched)
        recommended_text = "\n".join(f"{i}. {t}" for i, t in enumerate(recommended, start=1))
        return self.template.format(watched=watched_text, recommended=recommended_text)

    def judge(self, watched: list[tuple[str, float | None]], recommended: list[str]) -> JudgeCall:
        prompt = self.prompt(watched, recommended)
        key = hashlib.sha256(json.dumps([self.config.model, prompt]).encode()).hexdigest()
        cached = self.cache_dir / f"{key}.json"
        if cached.exists():
            return JudgeCall(Verdict.model_validate_json(cached.read_text()), cached=True, attempts=0)
        self._headers()  # a missing key is a configuration error: fail at once, never retried
        last_error: Exception | None = None
        for attempt in range(1, self.config.max_retries + 2):
            try:
                reply = self._post(prompt)
                verdict = Verdict.model_validate(_extract_json(reply))
            except (urllib.error.URLError, TimeoutError, ConnectionError, ValueError, ValidationError, KeyError) as exc:
                if isinstance(exc, urllib.error.HTTPError) and exc.code not in (408, 429) and exc.code < 500:
                    raise JudgeError(f"{self.config.base_url}: HTTP {exc.code} {exc.reason}") from exc
                last_error = exc
                time.sleep(self.config.backoff_seconds * 2 ** (attempt - 1))
                continue
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            write_text_atomic(cached, verdict.model_dump_json())
            return JudgeCall(verdict, cached=False, attempts=attempt)
        raise JudgeError(f"no usable answer after {self.config.max_retries + 1} attempts: {last_error}")

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.config.api_key_env:
            key = os.environ.get(self.config.api_key_env)
            if not key:
                raise ConfigError(f"set {self.config.api_key_env} to the endpoint's API key (or api_key_env = none)")
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _post(self, prompt: str) -> str:
        body = json.dumps(
            {
                "model": self.config.model,
                "temperature": self.config.temperature,
                "response_format": {"type": "json_object"},
                "messages": [{"role": "user", "content": prompt}],
            }
        ).encode()
        request = urllib.request.Request(
            f"{self.config.base_url.rstrip('/')}/chat/completions", data=body, headers=self._headers(), method="POST"
        )
        self.requests_sent += 1
        with urllib.request.urlopen(request, timeout=self.config.timeout_seconds) as response:
            payload = json.loads(response.read())
        return payload["choices"][0]["message"]["content"]


def judge_rankings(
    judge: LLMJudge,
    users: np.ndarray,
    recommended: np.ndarray,
    train: Interactions,
    title_column: str = "title",
    max_watched: int = 30,
) -> pd.Series:
    """LLM scores (1-10) for each user's recommendation list.

    `users` are user indices and `recommended` their (n, k) item-index lists (-1 = padding); the user's
    most recent `max_watched` training interactions (with ratings when present) are the context.
    """
    if train.item_features is None or title_column not in train.item_features.columns:
        raise ConfigError(f"the LLM judge needs item titles (column {title_column!r})")
    titles = train.item_features[title_column].astype(str).to_numpy()
    sequences = train.sequences()
    scores = {}
    for user, items in zip(users, recommended, strict=True):
        rows = sequences.rows[sequences.indptr[user] : sequences.indptr[user + 1]][-max_watched:]
        watched = [
            (
                titles[train.item_index[r]],
                None if train.rating is None or np.isnan(train.rating[r]) else float(train.rating[r]),
            )
            for r in rows
        ]
        listed = [titles[i] for i in items if i >= 0]
        scores[int(user)] = judge.judge(watched, listed).verdict.score
    return pd.Series(scores, name="llm_judge_score", dtype=np.float64)
