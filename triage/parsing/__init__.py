"""Raw message bytes to a clean `InboundMessage`: robust, bounded and fast.

`parse` is the only entry point. The modules behind it each do one job:

- `mime`: bytes → a tree of entities (headers, bodies, multipart splitting), bounded.
- `headers`: RFC 2047 words, addresses, message ids and dates from raw header values.
- `charsets`: bytes → text for unknown, misspelt or lying charsets.
- `htmltext`: HTML → plain text with line structure and `>` for quoted blocks.
- `quotes`: the new text of a reply (thread and signature removed) and its signature.
- `language`: a microsecond language guess for en/de/fr/es/nl/it.
- `message`: assembles the InboundMessage.
"""

from triage.parsing.message import parse, synthesise_message_id

__all__ = ["parse", "synthesise_message_id"]
