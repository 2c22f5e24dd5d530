"""Prompt sets, their tokenisation (with token spans of fields and target tokens) and exact left-padded batches.

A :class:`PromptSet` holds records: ``prompt`` (required) and the known fields ``target``, ``subject``,
``relation``, ``label``, ``task``, ``id``; every other column is kept as metadata. :func:`encode` turns it into
token ids for one model, and :func:`batches` into left-padded :class:`Batch` es whose position ids come from the
attention mask, so a method's numbers for a padded batch equal its numbers prompt by prompt.
"""

from __future__ import annotations

from .batches import Batch, batches, make_batch
from .prompt_set import KNOWN_FIELDS, PromptSet, as_prompt_set
from .tokens import Encoded, EncodedSet, encode, target_token, token_span, tokenize

__all__ = ["KNOWN_FIELDS", "Batch", "Encoded", "EncodedSet", "PromptSet", "as_prompt_set", "batches", "encode",
           "make_batch", "target_token", "token_span", "tokenize"]
