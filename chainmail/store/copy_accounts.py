"""Copying an embedded installation's accounts into PostgreSQL (``chainmail accounts
copy-to-postgres``): the local domains, the users with their password hashes (no password
is known or needed: the hash format is the same), the recipient rewrite table and the
mailbox quotas of ``var/chainmail.db``.

What is already in the database is kept as it is (a user there keeps its password, a
quota there its value), so the copy can be run again, for example after a node that still
ran on SQLite took more changes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Copied", "copy_accounts"]


@dataclass
class Copied:
    """How many of each were added (``kept``: already in the database, left alone)."""

    domains: int = 0
    users: int = 0
    mappings: int = 0
    quotas: int = 0
    kept: int = 0
    problems: list[str] = field(default_factory=list)


def copy_accounts(source, target) -> Copied:
    """Copy from ``source`` (a ``SqliteBackend``) into ``target`` (a ``PostgresBackend``)."""
    done = Copied()
    domains, target_domains = source.domains(), target.domains()
    try:
        for name in domains.list():
            if target_domains.add(name):
                done.domains += 1
            else:
                done.kept += 1
        users, target_users = source.users(), target.users(domains=target_domains)
        try:
            for name, stored in users.password_hashes().items():
                if target_users.add_hashed(name, stored):
                    done.users += 1
                else:
                    done.kept += 1
        finally:
            users.close()
            target_users.close()
    finally:
        domains.close()
        target_domains.close()
    rrt, target_rrt = source.rrt(), target.rrt()
    try:
        adders = {"alias": target_rrt.add_alias, "forward": target_rrt.add_forward,
                  "domain": target_rrt.add_domain_alias}
        for mapping in rrt.list():
            try:
                added = adders[mapping.kind](mapping.source, mapping.target)
            except (KeyError, ValueError) as exc:
                done.problems.append(f"{mapping.kind} {mapping.source} -> {mapping.target}: "
                                     f"{exc}")
                continue
            if added:
                done.mappings += 1
            else:
                done.kept += 1
    finally:
        rrt.close()
        target_rrt.close()
    quotas, target_quotas = source.quotas(), target.quotas()
    try:
        present = target_quotas.all()
        for user, limit in quotas.all().items():
            if user in present:
                done.kept += 1
                continue
            target_quotas.set(user, limit)
            done.quotas += 1
    finally:
        quotas.close()
        target_quotas.close()
    return done
