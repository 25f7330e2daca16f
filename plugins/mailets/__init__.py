"""The standard matchers and mailets of the mailet container.

Reached only through the ``chainmail.matchers`` and ``chainmail.mailets`` entry points of
``pyproject.toml``, each under its short name and the Apache James class name it stands
for (``LocalDelivery`` and ``org.apache.james.transport.mailets.LocalDelivery``).
``docs/mailets.md`` documents every one with its parameters.
"""
