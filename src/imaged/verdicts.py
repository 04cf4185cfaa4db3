"""What verdicts are called and how a warned one reads. Shared by the verification engine and by
the callers that recognise verdicts without importing it (the bindir shim, imagectl): the
engine's imports would cost those short-lived processes their start-up time."""

# What a verdict allowed in warn mode says after its failure: `<failure>; allowed in warn mode (<rule>)`.
WARN_NOTE = "allowed in warn mode"
# The verdicts `imagectl policy test` reports and an expectations file names.
VERDICTS = ("verified", "warned", "unverified", "denied", "error")


def warned(message: str) -> bool:
    """Whether a Verify message is that of a verdict allowed in warn mode."""
    return f"; {WARN_NOTE} (" in message
