"""Suite-wide test hygiene.

Every `openai.OpenAI` client a test creates is closed when that test ends, also the ones made inline
(`client(router).chat.completions.create(...)`): an unclosed client leaves a pooled socket whose
ResourceWarning (an error under this suite's `filterwarnings = error`) would surface in whichever later
test the garbage collector happens to run in."""

from __future__ import annotations

import openai
import pytest

_OPEN: list[openai.OpenAI] = []
_init = openai.OpenAI.__init__


def _tracked_init(self, *args, **kwargs) -> None:
    _init(self, *args, **kwargs)
    _OPEN.append(self)


openai.OpenAI.__init__ = _tracked_init  # type: ignore[method-assign]


@pytest.fixture(autouse=True)
def _close_openai_clients():
    yield
    while _OPEN:
        _OPEN.pop().close()
