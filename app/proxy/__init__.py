"""The OpenAI-compatible proxy blueprint."""
from .views import bp

__all__ = ["bp"]
