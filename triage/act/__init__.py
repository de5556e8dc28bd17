"""Effects of a decision: templates, composing the reply, SMTP, the delivery queue."""
