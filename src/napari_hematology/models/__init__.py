"""Model architectures.

Each module registers its builders with ``@register_model``; every module here is imported when the
registry is first used.
"""
