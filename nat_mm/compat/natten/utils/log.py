"""NATTEN 0.17's ``natten.utils.log``: ``get_logger(name)`` is ``logging.getLogger(name)``."""
import logging

__all__ = ['get_logger']


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(name)
