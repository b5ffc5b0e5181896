"""The scripted and verbatim backends take every generation option: the scripted one stops at a
stop string as a model would, and a seed changes neither."""

from __future__ import annotations

from llm.base import ChatMessage, GenerationOptions, TextPiece
from llm.scripted import ScriptedLLM
from llm.verbatim import VerbatimText

SCRIPT = [ChatMessage("user", "Ahoy there. Stop here, sailor!")]


async def pieces(backend, options: GenerationOptions) -> list[TextPiece]:
    return [piece async for piece in backend.stream_chat(SCRIPT, options)]


async def test_the_scripted_llm_ends_before_a_stop_string():
    llm = ScriptedLLM(token_delay_s=0)
    seeded = await pieces(llm, GenerationOptions(seed=3, stop=("Stop h", "")))
    assert "".join(piece.text for piece in seeded) == "Ahoy there. "
    assert seeded[-1].finish_reason == "stop"
    plain = await pieces(llm, GenerationOptions(stop=("Stop!",)))  # starts like the text, never is it
    assert "".join(piece.text for piece in plain) == SCRIPT[0].content and plain[-1].finish_reason == "stop"


async def test_verbatim_text_ignores_sampling_options():
    said = await pieces(VerbatimText("Hello."), GenerationOptions(seed=3, stop=("ll",), temperature=1e-320))
    assert said == [TextPiece("Hello.", finish_reason="stop")]
