"""chainmail's built-in plugins.

Installed as the ``chainmail_plugins`` package and reached only through the
``chainmail.handlers`` entry points declared in ``pyproject.toml``, exactly as a third-party
plugin is: nothing under ``chainmail/`` imports from here.
"""
