"""The error of the U-Net build: what this build cannot serve, named so the user can fix it."""

__all__ = ["UNetBuildError"]


class UNetBuildError(ValueError):
    """A model, config or target this build cannot serve; the message names the layer or the key."""
