"""LLM agents: ask a chat model (OpenAI-compatible or Anthropic) for one experiment as SEARCH/REPLACE edits.

One proposal is one conversation: the prompt, the model's reply, and, when some SEARCH text does not match, up to
MAX_EDIT_RETRIES follow-ups quoting the closest real lines. Network trouble never stops the research loop: the SDK
retries 429/5xx/timeouts itself (settings.max_retries, with backoff), and if it still fails the proposal is None
and the reason is in `last_error`.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import threading
import time
from pathlib import PurePosixPath

from autoresearch import UsageError
from autoresearch.agents.base import Context, Proposal, Result, Usage
from autoresearch.agents.edits import apply_edits, describe_errors, parse_reply
from autoresearch.agents.pricing import cost
from autoresearch.agents.prompt import build_prompt
from autoresearch.config import AgentSettings

log = logging.getLogger(__name__)

MAX_EDIT_RETRIES = 2  # follow-ups per proposal when SEARCH text does not match
RETRYABLE = ("mismatch", "ambiguous", "missing", "empty_search", "no_path", "incomplete")  # edit errors worth sending back


class CallFailed(Exception):
    """The SDK gave up on a call (after its own retries)."""


class LLMAgent:
    """What both providers share: the conversation, edit parsing and retries, and the bill. Subclasses do one call."""

    name = "llm"
    default_key_env = ""
    concurrent_proposals = True  # with K workers the loop asks for several proposals at once, each in a thread

    @property
    def last_error(self) -> str | None:
        """Why the last proposal of this thread gave up (None if it did not): per thread, as proposals may overlap."""
        return getattr(self._local, "last_error", None)

    @last_error.setter
    def last_error(self, value: str | None) -> None:
        self._local.last_error = value

    def __init__(self, settings: AgentSettings):
        if not settings.model:
            raise UsageError(f"the {self.name} agent needs a model: set [agent] model = \"...\" in autoresearch.toml")
        key_env = settings.api_key_env or self.default_key_env
        key = os.environ.get(key_env, "")
        if not key:
            raise UsageError(f"the {self.name} agent needs an API key in ${key_env} (a local server that wants none: "
                             "set it to any value; another variable: [agent] api_key_env)")
        self._local, self._lock = threading.local(), threading.Lock()
        self.settings = settings
        self.model = settings.model
        self.spent = Usage()
        self.calls: list[dict] = []
        self.last_error: str | None = None
        self.results: list[Result] = []
        self.client = self._make_client(key)

    # --- the agent protocol --------------------------------------------------------------------------------------

    def propose(self, context: Context) -> Proposal | None:
        """One experiment as the full new text of each changed editable file, or None (gave up, or the call failed)."""
        self.last_error = None
        parent = context.files
        current = {**parent, **context.fix.files} if context.fix is not None else dict(parent)
        editable = self._editable(context)
        messages = [{"role": "user", "content": build_prompt(context)}]
        description, rejected = "", []
        for attempt in range(MAX_EDIT_RETRIES + 1):
            try:
                reply = self._call(messages)
            except CallFailed as exc:
                return self._give_up(str(exc))
            parsed = parse_reply(reply)
            description = parsed.description or description
            if not parsed.edits and not parsed.incomplete:
                return self._give_up("the model replied with no edits" if attempt == 0 else
                                     "the model sent no corrected edits", quiet=attempt == 0)
            current, errors = apply_edits(current, parsed, editable, allow_applied=attempt > 0)
            rejected += [e for e in errors if e.kind == "locked"]
            retryable = [e for e in errors if e.kind in RETRYABLE]
            if not retryable:
                break
            if attempt == MAX_EDIT_RETRIES:
                return self._give_up(f"edits still did not apply after {MAX_EDIT_RETRIES} retries: {retryable[0]}")
            applied = len(parsed.edits) - len([e for e in errors if e.kind != "incomplete"])
            messages += [{"role": "assistant", "content": reply},
                         {"role": "user", "content": describe_errors(errors, applied)}]
        changed = {path: text for path, text in current.items() if parent.get(path) != text}
        if not changed:
            return self._give_up("; ".join(map(str, rejected)) if rejected else "the edits changed nothing")
        return Proposal(description or self._fallback_description(context, changed), changed)

    def observe(self, result: Result) -> None:
        self.results.append(result)

    def check(self) -> None:
        """One cheap call (list the models, no retries, 15 s) before the baseline: an unreachable endpoint or a key
        it refuses is a one-line error naming the URL, in seconds. Any other answer means the server is there."""
        sdk = self._sdk()
        try:
            self.client.with_options(max_retries=0, timeout=15.0).models.list()
        except (sdk.APIConnectionError, sdk.AuthenticationError, sdk.PermissionDeniedError) as exc:
            raise UsageError(f"the {self.name} agent cannot use {self.client.base_url} ({type(exc).__name__}: "
                             f"{' '.join(str(exc).split())[:200]}); check the URL, the key and the network") from None
        except sdk.APIStatusError:
            pass  # the server answered: it may just not list models

    # --- one call, billed ----------------------------------------------------------------------------------------

    def _call(self, messages: list[dict]) -> str:
        """Send the conversation, bill the tokens, and return the reply's text; CallFailed if the SDK gives up."""
        started = time.monotonic()
        try:
            text, input_tokens, output_tokens = self._complete(messages)
        except self._sdk_error() as exc:
            raise CallFailed(f"{type(exc).__name__}: {exc}") from exc
        dollars = cost(self.model, input_tokens, output_tokens, self.settings.prices)
        with self._lock:  # several proposals' calls may end at once
            self.spent = self.spent.add(Usage(input_tokens, output_tokens, dollars, 1))
        self.calls.append({"model": self.model, "input_tokens": input_tokens, "output_tokens": output_tokens,
                           "cost_usd": dollars, "seconds": time.monotonic() - started})
        return text

    def _make_client(self, key: str):
        raise NotImplementedError

    def _sdk_error(self) -> type[BaseException]:
        raise NotImplementedError

    def _complete(self, messages: list[dict]) -> tuple[str, int, int]:
        """One call: (reply text, input tokens, output tokens)."""
        raise NotImplementedError

    # --- helpers -------------------------------------------------------------------------------------------------

    def _give_up(self, reason: str, quiet: bool = False) -> None:
        """Record why this proposal is None; the loop carries on."""
        self.last_error = None if quiet else reason
        if not quiet:
            log.warning("%s agent: %s", self.name, reason)
        return None

    @staticmethod
    def _editable(context: Context):
        """A path may change if it is not locked and is one of the editable files or matches an editable glob."""
        known = set(context.files) | (set(context.fix.files) if context.fix is not None else set())

        def editable(path: str) -> bool:
            if path in context.locked:
                return False
            if path in known:
                return True
            return any(PurePosixPath(path).match(p) or fnmatch.fnmatch(path, p) for p in context.editable)

        return editable

    @staticmethod
    def _fallback_description(context: Context, changed: dict[str, str]) -> str:
        if context.fix is not None:
            return context.fix.description
        return "edit " + ", ".join(sorted(changed))


def _import_sdk(module: str, agent: str):
    """The provider's SDK, or a one-line error saying how to install it."""
    try:
        return __import__(module)
    except ImportError:
        raise UsageError(f"the {agent} agent needs the {module} SDK: pip install 'autoresearch[llm]'") from None


class OpenAIAgent(LLMAgent):
    """Any OpenAI-compatible chat-completions endpoint (OpenAI, vLLM, llama.cpp, Ollama, OpenRouter...)."""

    name = "openai"
    default_key_env = "OPENAI_API_KEY"

    def _sdk(self):
        return _import_sdk("openai", self.name)

    def _make_client(self, key: str):
        openai = self._sdk()

        kwargs = {"base_url": self.settings.base_url} if self.settings.base_url else {}
        return openai.OpenAI(api_key=key, max_retries=self.settings.max_retries,
                             timeout=self.settings.timeout_seconds, **kwargs)

    def _sdk_error(self) -> type[BaseException]:
        openai = self._sdk()
        return openai.OpenAIError

    def _complete(self, messages: list[dict]) -> tuple[str, int, int]:
        # OpenAI's own API wants max_completion_tokens (reasoning models refuse max_tokens); other servers often
        # know only max_tokens.
        official = not self.settings.base_url or "api.openai.com" in self.settings.base_url
        limit = {"max_completion_tokens" if official else "max_tokens": self.settings.max_tokens}
        response = self.client.chat.completions.create(model=self.model, messages=messages, **limit)
        text = response.choices[0].message.content if response.choices else None
        usage = response.usage
        return text or "", (usage.prompt_tokens or 0) if usage else 0, (usage.completion_tokens or 0) if usage else 0


class AnthropicAgent(LLMAgent):
    """Anthropic's Messages API."""

    name = "anthropic"
    default_key_env = "ANTHROPIC_API_KEY"

    def _sdk(self):
        return _import_sdk("anthropic", self.name)

    def _make_client(self, key: str):
        anthropic = self._sdk()

        return anthropic.Anthropic(api_key=key, base_url=self.settings.base_url, max_retries=self.settings.max_retries,
                                   timeout=self.settings.timeout_seconds)

    def _sdk_error(self) -> type[BaseException]:
        anthropic = self._sdk()
        return anthropic.AnthropicError

    def _complete(self, messages: list[dict]) -> tuple[str, int, int]:
        response = self.client.messages.create(model=self.model, max_tokens=self.settings.max_tokens, messages=messages)
        text = "".join(getattr(block, "text", "") for block in response.content if block.type == "text")
        usage = response.usage
        return text, (usage.input_tokens or 0) if usage else 0, (usage.output_tokens or 0) if usage else 0
