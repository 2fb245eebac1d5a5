"""Prompts: the user message built from an example and a template (:func:`build_prompt`), and the
text fed to the model (:func:`render_prompt`: the chat template when there is one)."""

from __future__ import annotations

import string

from hallugraph.data.example import DatasetError, Example
from hallugraph.models import LoadedModel

DEFAULT_TEMPLATE = "Answer the question concisely in one sentence.\n\nQuestion: {question}\nAnswer:"
CONTEXT_TEMPLATE = (
    "Answer the question concisely in one sentence, using the context.\n\n"
    "Context: {context}\n\nQuestion: {question}\nAnswer:"
)


# ---------------------------------------------------------------------------------------------
# prompts

_FORMATTER = string.Formatter()
_TEMPLATE_FIELDS = ("question", "context")


def build_prompt(
    example: Example, template: str | None = None
) -> tuple[str, tuple[int, int] | None]:
    """The user-message text and the character span ``[start, end)`` of the context in it.

    Uses :data:`CONTEXT_TEMPLATE` when the example has a context, else
    :data:`DEFAULT_TEMPLATE`, unless ``template`` is given (it may use ``{question}`` and
    ``{context}``). The span satisfies ``text[start:end] == example.context``; it is ``None``
    when the example has no context or the template does not include it.
    """
    if template is None:
        template = DEFAULT_TEMPLATE if example.context is None else CONTEXT_TEMPLATE
    values = {"question": example.question, "context": example.context}
    parts: list[str] = []
    pos = 0
    span: tuple[int, int] | None = None
    try:
        parsed = list(_FORMATTER.parse(template))
    except ValueError as err:
        raise DatasetError(f"bad prompt template {template!r}: {err}") from None
    for literal, field_name, spec, conversion in parsed:
        parts.append(literal)
        pos += len(literal)
        if field_name is None:
            continue
        root = field_name.split(".", 1)[0].split("[", 1)[0]
        if root not in _TEMPLATE_FIELDS:
            raise DatasetError(
                f"prompt template field {{{field_name}}} is not allowed; "
                f"use {{question}} and {{context}}"
            )
        if root == "context" and example.context is None:
            raise DatasetError(
                f"prompt template uses {{context}} but example {example.id!r} has no context"
            )
        try:
            obj, _ = _FORMATTER.get_field(field_name, (), values)
            obj = _FORMATTER.convert_field(obj, conversion)
            piece = _FORMATTER.format_field(obj, spec or "")
        except (AttributeError, IndexError, KeyError, TypeError, ValueError) as err:
            raise DatasetError(f"bad prompt template field {{{field_name}}}: {err}") from None
        if span is None and field_name == "context" and piece == example.context:
            span = (pos, pos + len(piece))
        parts.append(piece)
        pos += len(piece)
    return "".join(parts), span


def render_prompt(lm: LoadedModel, user_text: str) -> str:
    """The text fed to the model: the user message inside the chat template when there is one."""
    if lm.use_chat_template:
        return lm.tokenizer.apply_chat_template(
            [{"role": "user", "content": user_text}], tokenize=False, add_generation_prompt=True
        )
    return user_text
