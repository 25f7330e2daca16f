"""An example third-party chainmail plugin package.

- :class:`~.greylist.Greylist`: a handler (plain ``def`` hooks) that defers the first
  delivery attempt of each (client network, sender, recipient) triplet;
- :class:`~.reputation.ReputationCheck`: an ``async def`` handler that asks an HTTP service
  about the client before accepting a sender;
- :class:`~.mailets.SubjectTag`: a mailet that tags the subject of mail matching a header.

Its tests (``tests/``) use only :mod:`chainmail.testing`.
"""
