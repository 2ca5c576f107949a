"""Synthetic demo data: made-up people at reserved example domains and fictional phone ranges."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

_FIRST = ["Ada", "Bruno", "Chiara", "Dmitri", "Elif", "Farid", "Greta", "Hiro", "Ines", "Jonas",
          "Kwame", "Lena", "Mateo", "Nadia", "Olu", "Priya", "Quentin", "Rosa", "Sven", "Tomoko"]
_LAST = ["Abara", "Bergstrom", "Castellanos", "Dufresne", "Eriksen", "Fontaine", "Gallo",
         "Haddad", "Ivanova", "Jablonski", "Kowalczyk", "Lindqvist", "Moreau", "Nakamura",
         "Okafor", "Petrov", "Quispe", "Rinaldi", "Sato", "Thorsen"]
_COMPANIES = ["Acme Widgets", "Borealis Logistics", "Cobalt Analytics", "Dunmore Foods",
              "Everlight Energy", "Fjord Textiles", "Granite Insurance", "Halcyon Health"]
_INDUSTRIES = ["manufacturing", "logistics", "software", "food", "energy", "retail",
               "insurance", "healthcare"]
_DOMAINS = ["example.com", "example.org", "example.net"]


def accounts(count: int, rng: random.Random) -> Iterator[dict[str, Any]]:
    for i in range(count):
        name = _COMPANIES[i % len(_COMPANIES)] + ("" if i < len(_COMPANIES) else f" {i}")
        yield {"name": name, "industry": _INDUSTRIES[i % len(_INDUSTRIES)],
               "website": f"https://{name.lower().replace(' ', '-')}.example.com"}


def contacts(count: int, rng: random.Random) -> Iterator[dict[str, Any]]:
    for i in range(count):
        first, last = rng.choice(_FIRST), rng.choice(_LAST)
        yield {
            "first_name": first, "last_name": last,
            "title": rng.choice(["Buyer", "CFO", "Head of IT", "Office manager", "Engineer"]),
            # 555-01xx numbers are reserved for fiction
            "email": f"{first.lower()}.{last.lower()}{i}@{rng.choice(_DOMAINS)}",
            "phone": f"+1 555 01{rng.randrange(100):02d}",
            "address": f"{rng.randrange(1, 200)} Example Street, Sampletown",
            "birth_date": f"{rng.randrange(1950, 2004)}-{rng.randrange(1, 13):02d}-"
                          f"{rng.randrange(1, 29):02d}",
            "national_id": f"DEMO-{rng.randrange(10**8):08d}",
            "notes": "Synthetic demo contact.",
        }
