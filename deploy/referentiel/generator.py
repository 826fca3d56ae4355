"""Synthetic établissements shaped like the annuaire's, reproducible from a seed.

The real annuaire may not be shipped with the project, and one département is too small to
stress the platform: demos and scale tests draw établissements instead, with valid and unique
UAIs, real département / académie / région codes and the national mix of types, so that every
rule keyed on them (who may declare what, alerts per académie) behaves as on real data.
"""

import random
from collections import Counter
from collections.abc import Iterator, Mapping

from contracts import Etablissement, uai_check_letter

from . import codes

TYPES = ("ecole", "college", "lycee", "erea", "autre")
# DEPP 2024 for écoles, collèges and lycées (DOMAIN.md); EREA: about 80 in France.
NATIONAL_MIX = {"ecole": 47_790, "college": 6_980, "lycee": 3_700, "erea": 80}
# Share of public établissements, rounded from the DEPP's counts of public and private ones.
PUBLIC_SHARE = {"ecole": 0.89, "college": 0.76, "lycee": 0.58, "erea": 1.0, "autre": 0.5}
CLOSED_SHARE = 0.01  # a few, so that consumers meet `ouvert: false` in demos too
# Commune numbers drawn from 1..N: plausible INSEE codes, not necessarily existing communes.
# Overseas départements have a few dozen communes (971: 32, 972: 34, 974: 24, 976: 17).
COMMUNES = {"971": 32, "972": 34, "973": 22, "974": 24, "976": 17}
METROPOLE_COMMUNES = 350
UAIS_PER_DEPARTEMENT = 10_000  # the four digits after the three of the département

PATRONYMES = (
    "Jules Ferry",
    "Jean Jaurès",
    "Jacques Prévert",
    "Jean Moulin",
    "Victor Hugo",
    "Louis Pasteur",
    "Marie Curie",
    "Jean de La Fontaine",
    "Paul Langevin",
    "Simone Veil",
    "Albert Camus",
    "Antoine de Saint-Exupéry",
    "Georges Brassens",
    "Condorcet",
    "Anne Frank",
    "Jean Macé",
    "Paul Éluard",
    "Louise Michel",
    "Victor Schœlcher",
    "Aimé Césaire",
    "Olympe de Gouges",
)
SAINTS = ("Saint-Joseph", "Sainte-Marie", "Notre-Dame", "Saint-Michel", "Sainte-Anne", "Saint-Jean-Baptiste")
LABELS = {
    "ecole": ("École maternelle", "École élémentaire", "École primaire"),
    "college": ("Collège",),
    "lycee": ("Lycée", "Lycée professionnel", "Lycée polyvalent"),
    "erea": ("EREA",),
    "autre": ("Centre d'information et d'orientation", "Institut médico-éducatif"),
}


def scale_mix(count: int) -> dict[str, int]:
    """The national mix scaled to `count`, summing to it exactly (largest remainders)."""
    if count < 0:
        raise ValueError(f"count must be >= 0, not {count}")
    total = sum(NATIONAL_MIX.values())
    exact = {t: count * n / total for t, n in NATIONAL_MIX.items()}
    mix = {t: int(x) for t, x in exact.items()}
    by_remainder = sorted(exact, key=lambda t: exact[t] - mix[t], reverse=True)
    for t in by_remainder[: count - sum(mix.values())]:
        mix[t] += 1
    return mix


def generate(
    count_or_mix: int | Mapping[str, int], seed: int, departement: str | None = None
) -> Iterator[Etablissement]:
    """`count_or_mix` établissements (a count in the national mix, or {type: count}).

    With `departement` ("035", "35", "2A", "974") all are in that one; otherwise each is in a
    département drawn uniformly. The same arguments give the same établissements, in order.
    """
    mix = scale_mix(count_or_mix) if isinstance(count_or_mix, int) else dict(count_or_mix)
    unknown = set(mix) - set(TYPES)
    if unknown or any(n < 0 for n in mix.values()):
        raise ValueError(f"a mix maps {', '.join(TYPES)} to counts >= 0, not {mix}")
    if departement is None:
        departements = sorted(codes.DEPARTEMENTS)
    elif (code := codes.departement(departement)) in codes.DEPARTEMENTS:
        departements = [code]
    else:
        raise ValueError(f"unknown département {departement!r} (metropolitan France and DROM only)")
    rng = random.Random(seed)
    types = [t for t in TYPES for _ in range(mix.get(t, 0))]
    rng.shuffle(types)
    places = [rng.choice(departements) for _ in types]
    numbers = {}
    for dep, n in sorted(Counter(places).items()):
        if n > UAIS_PER_DEPARTEMENT:
            raise ValueError(f"{n} établissements in département {dep}: a UAI prefix holds {UAIS_PER_DEPARTEMENT:,}")
        numbers[dep] = iter(rng.sample(range(UAIS_PER_DEPARTEMENT), n))
    return (_etablissement(rng, t, dep, next(numbers[dep])) for t, dep in zip(types, places, strict=True))


def _etablissement(rng: random.Random, type_: str, dep: str, number: int) -> Etablissement:
    digits = f"{codes.uai_prefix(dep)}{number:04d}"
    academie, region = codes.DEPARTEMENTS[dep]
    communes = COMMUNES.get(dep, METROPOLE_COMMUNES)
    commune_digits = 5 - len(codes.commune_prefix(dep))
    public = rng.random() < PUBLIC_SHARE[type_]
    label = rng.choice(LABELS[type_])
    if public:
        nom = f"{label} {rng.choice(PATRONYMES)}"
    else:
        nom = f"{label} {'privée' if label.startswith('École') else 'privé'} {rng.choice(SAINTS)}"
    return Etablissement.model_validate(
        dict(
            uai=digits + uai_check_letter(digits),
            nom=nom,
            type=type_,
            statut="public" if public else "prive",
            code_commune=f"{codes.commune_prefix(dep)}{rng.randint(1, communes):0{commune_digits}d}",
            code_departement=dep,
            code_academie=academie,
            code_region=region,
            ouvert=rng.random() >= CLOSED_SHARE,
        )
    )
