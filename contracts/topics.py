"""The public topics and event types of wire contract v1 (CONTRACTS.md), spelled once.

A topic and a type are public API: renaming one breaks partners, so every service takes them
from here rather than from string literals.
"""

REFERENTIEL = "referentiel.etablissements.v1"
FORMATION = "formation.declarations.v1"
EQUIPEMENT = "equipement.declarations.v1"
CATALOGUE = "ressources.catalogue.v1"
ALERTES = "alertes.compatibilite.v1"
ALERTES_ETAT = "alertes.etat.v1"
"""The table of ALERTES: compacted, keyed by alert_id, the latest event of each alert, a
tombstone once it is resolved (CONTRACTS.md, Alerts, "Current state")."""
PUBLIC_TOPICS = (REFERENTIEL, FORMATION, EQUIPEMENT, CATALOGUE, ALERTES, ALERTES_ETAT)
DECLARED_OVER_HTTP = (FORMATION, EQUIPEMENT)
"""The topics only the ingestion service writes (CONTRACTS.md, Identity): rectorats and
collectivités post their declarations over HTTP."""
PRINCIPAL_HEADER = "auth-principal"
"""Record header naming who was authenticated when the event came in over HTTP (the token's
`sub`): the ingestion service sets it on every record it writes, the services keep it with the
event's inbox row, on the topics of DECLARED_OVER_HTTP only (elsewhere nobody vouches for it).
An optional header: a record is still judged by its value alone."""


def dlq(topic: str) -> str:
    """The dead-letter topic that receives, bytes unchanged, what `topic` could not accept."""
    return topic + ".dlq"


ETABLISSEMENT = "fr.education.referentiel.etablissement.v1"
AFFECTATION = "fr.education.formation.affectation.v1"
FORMATION_SUIVIE = "fr.education.formation.formation-suivie.v1"
LOT = "fr.education.equipement.lot.v1"
CONNECTIVITE = "fr.education.equipement.connectivite.v1"
RESSOURCE_PUBLIEE = "fr.education.ressources.ressource-publiee.v1"
RESSOURCE_RETIREE = "fr.education.ressources.ressource-retiree.v1"
ABONNEMENT = "fr.education.ressources.abonnement.v1"
ALERTE_LEVEE = "fr.education.alertes.alerte-levee.v1"
ALERTE_RESOLUE = "fr.education.alertes.alerte-resolue.v1"

TOPIC_TYPES: dict[str, frozenset[str]] = {
    REFERENTIEL: frozenset({ETABLISSEMENT}),
    FORMATION: frozenset({AFFECTATION, FORMATION_SUIVIE}),
    EQUIPEMENT: frozenset({LOT, CONNECTIVITE}),
    CATALOGUE: frozenset({RESSOURCE_PUBLIEE, RESSOURCE_RETIREE, ABONNEMENT}),
    ALERTES: frozenset({ALERTE_LEVEE, ALERTE_RESOLUE}),
}
