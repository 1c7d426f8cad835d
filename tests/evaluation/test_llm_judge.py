"""The LLM judge against a local fake OpenAI-compatible server (no network)."""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from recforge.evaluation.llm_judge import JudgeConfig, JudgeError, LLMJudge


class FakeServer:
    def __init__(self, replies: list[tuple[int, str]]) -> None:
        self.replies = list(replies)
        self.requests: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers["Content-Length"])
                server.requests.append(
                    {
                        "path": self.path,
                        "auth": self.headers.get("Authorization"),
                        "body": json.loads(self.rfile.read(length)),
                    }
                )
                status, content = server.replies.pop(0) if server.replies else (500, "")
                payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.httpd = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()


@pytest.fixture
def judge_factory(tmp_path, monkeypatch):
    monkeypatch.setenv("TEST_KEY", "sk-test")
    servers = []

    def make(replies, **overrides):
        server = FakeServer(replies)
        servers.append(server)
        config = JudgeConfig(
            base_url=server.url,
            model="judge-1",
            api_key_env="TEST_KEY",
            cache_dir=str(tmp_path / "cache"),
            backoff_seconds=0.0,
            **overrides,
        )
        return LLMJudge(config), server

    yield make
    for server in servers:
        server.close()


WATCHED = [("Cowboy Bebop", 9.0), ("Trigun", None)]
RECOMMENDED = ["Samurai Champloo", "Outlaw Star"]


def test_parses_retries_and_caches(judge_factory):
    good = 'Sure! ```json\n{"score": 8, "relevant": ["Samurai Champloo"], "reason": "same director"}\n```'
    judge, server = judge_factory([(500, ""), (200, "not json at all"), (200, good)])
    call = judge.judge(WATCHED, RECOMMENDED)
    assert call.verdict.score == 8 and call.verdict.relevant == ["Samurai Champloo"] and call.attempts == 3
    request = server.requests[-1]
    assert request["path"] == "/v1/chat/completions" and request["auth"] == "Bearer sk-test"
    prompt = request["body"]["messages"][0]["content"]
    assert "- Cowboy Bebop [9]" in prompt and "2. Outlaw Star" in prompt
    again = judge.judge(WATCHED, RECOMMENDED)
    assert again.cached and again.verdict == call.verdict and len(server.requests) == 3


def test_out_of_range_score_is_retried_then_refused(judge_factory):
    judge, server = judge_factory([(200, '{"score": 42}')] * 3, max_retries=2)
    with pytest.raises(JudgeError, match="no usable answer after 3 attempts"):
        judge.judge(WATCHED, RECOMMENDED)
    assert len(server.requests) == 3


def test_client_errors_are_not_retried(judge_factory):
    judge, server = judge_factory([(401, "")])
    with pytest.raises(JudgeError, match="HTTP 401"):
        judge.judge(WATCHED, RECOMMENDED)
    assert len(server.requests) == 1


def test_template_must_have_placeholders(tmp_path):
    from recforge.errors import ConfigError

    template = tmp_path / "prompt.txt"
    template.write_text("rate {watched}")
    with pytest.raises(ConfigError, match="recommended"):
        LLMJudge(JudgeConfig(base_url="http://x", model="m", prompt_file=str(template)))


def test_experiment_runs_the_judge_when_configured(judge_factory, data_dir, tmp_path):
    from recforge.experiment import run_experiment

    judge, server = judge_factory([(200, json.dumps({"score": 1 + i % 10})) for i in range(5)])
    config = {
        "dataset": {"name": "ml-100k"},
        "split": {"kind": "per_user"},
        "evaluation": {"ks": [10], "llm_judge": {**judge.config.model_dump(), "n_users": 5}},
    }
    result = run_experiment(config)
    ranking = result.runs[0].results["ranking"]
    assert ranking.summary["llm_judge_score"] == pytest.approx(3.0)  # scores 1..5
    assert ranking.per_user["llm_judge_score"].notna().sum() == 5
    assert len(server.requests) == 5
    prompts = [r["body"]["messages"][0]["content"] for r in server.requests]
    assert all(re.search(r"^- .+ \(\d{4}\) \[[1-5]\]$", p, flags=re.M) for p in prompts)  # rated movie titles
    assert all(re.search(r"^10\. ", p, flags=re.M) for p in prompts)  # ten recommendations listed


def test_a_missing_key_fails_at_once_without_a_request(judge_factory, monkeypatch):
    from recforge.errors import ConfigError

    judge, server = judge_factory([(200, '{"score": 5}')])
    monkeypatch.delenv(judge.config.api_key_env, raising=False)
    with pytest.raises(ConfigError, match=judge.config.api_key_env):
        judge.judge(WATCHED, RECOMMENDED)
    assert server.requests == []


def test_experiment_notes_an_unreachable_judge_and_skips_a_disabled_one(data_dir, tmp_path):
    from recforge.evaluation.report import write_report
    from recforge.experiment import run_experiment

    settings = {"base_url": "http://127.0.0.1:9", "model": "m", "api_key_env": None, "max_retries": 0}
    settings |= {"backoff_seconds": 0.0, "cache_dir": str(tmp_path / "cache"), "n_users": 3}
    config = {"dataset": {"name": "ml-100k"}, "split": {"kind": "per_user"}, "evaluation": {"llm_judge": settings}}
    result = run_experiment(config)  # nothing listens on port 9: the models are kept, the failure noted
    ranking = result.runs[0].results["ranking"]
    assert "llm_judge_score" not in ranking.summary
    assert any(note.startswith("llm_judge_score: not computed") for note in ranking.notes)
    write_report(result, tmp_path / "report")
    assert "llm_judge_score: not computed" in (tmp_path / "report" / "report.md").read_text()

    config["evaluation"]["llm_judge"] = settings | {"enabled": False}
    ranking = run_experiment(config).runs[0].results["ranking"]
    assert not any("llm_judge" in note for note in ranking.notes)
