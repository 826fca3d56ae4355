"""What the read API answers, as its OpenAPI document gives it to partners who build on it
(`responses={200: {"model": ...}}`): the routes build their answers as plain data, and
tests/integration/test_read_api.py validates real answers against the served document.

What the API reads as it was stored is described as it may have been stored, not by the
contract's bounds of today (CONTRACTS.md, Limits): those came on 30 November 2026, and what was
stored before them is still answered (a resolved alert keeps its content for good). A client
that validates the answers against this document refused a whole page for one such item."""

from datetime import date
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from contracts import AlertKind, Reason
from contracts import Etablissement as EtablissementDeclare
from contracts.alertes import _Alerte
from contracts.internal import CouvertureFormation, ProfilEquipement

AlertState = Literal["open", "resolved"]


class _Reponse(BaseModel):
    model_config = ConfigDict(extra="forbid")  # the document says every field there is


# The contract's 256 characters (CONTRACTS.md, Limits) bound what was received or raised since
# 7feea38 and 1921c0c (30 November 2026); what was stored before may be longer, and is answered.
DEPUIS_LES_BORNES = "au plus 256 caractères pour une alerte levée depuis le 30 novembre 2026, sans limite avant"


class RaisonLue(Reason):
    """A reason of a stored alert, as it was raised."""

    detail: str = Field(description=f"ce qui est à corriger : {DEPUIS_LES_BORNES}")


# Named as the contract's, so that the document's schema keeps its name (and a client's type).
class Etablissement(EtablissementDeclare):
    """An établissement as the référentiel holds it."""

    nom: str = Field(
        description="au plus 256 caractères pour un nom reçu depuis le 30 novembre 2026, sans limite avant"
    )


class AlerteLue(_Alerte):
    """An alert as `/alertes` lists it: the facts of its latest raise, its state, when it resolved."""

    resource_id: str = Field(min_length=1, description=DEPUIS_LES_BORNES)
    # mypy: a list is invariant, though a RaisonLue is a Reason (without its bound).
    reasons: list[RaisonLue] = []  # type: ignore[assignment]
    state: AlertState = Field(description="open : ouverte ; resolved : résolue depuis")
    resolved_at: AwareDatetime | None = Field(description="quand elle a été résolue (null tant qu'elle est ouverte)")
    nom: str | None = Field(description="le nom de l'établissement au référentiel aujourd'hui (null s'il n'y est pas)")
    title: str | None = Field(
        description="le titre de la ressource au catalogue aujourd'hui (null si elle a été retirée depuis)"
    )


class PageAlertes(_Reponse):
    total: int = Field(description="les alertes que les filtres retiennent, toutes pages confondues")
    limit: int
    offset: int
    items: list[AlerteLue]
    suivant: str | None = Field(description="à redonner en `apres` pour la page suivante ; null après la dernière")
    last_event_id: int = Field(
        description="la position du journal des alertes quand la page a été lue : celle de la première page "
        "est d'où reprendre `/alertes/flux` (`depuis` ou `Last-Event-ID`) sans rien manquer des pages suivantes"
    )


class Verdict(_Reponse):
    alerte: bool = Field(description="la condition de ce type d'alerte est vraie")
    reasons: list[Reason] = Field(description="pourquoi (au plus 5), vide sans alerte")
    alert_id: str | None = Field(description="l'alerte ouverte de ce type pour la paire, s'il y en a une")


class Abonnement(_Reponse):
    start: date
    end: date | None


class RessourceAbonnee(_Reponse):
    """A subscribed resource and, while the pair is evaluated, its verdicts as things are now."""

    resource_id: str
    title: str | None = Field(description="null tant qu'elle n'est pas publiée")
    abonnement: Abonnement
    publiee: bool
    au_catalogue: bool = Field(description="false : abonnée avant d'être publiée ; true et publiee false : retirée")
    evaluee: bool = Field(description="abonnement actif, établissement ouvert, ressource publiée (CONTRACTS.md)")
    verdicts: dict[AlertKind, Verdict] | None = Field(description="chaque type d'alerte ; null si non évaluée")
    reevaluation_en_attente: bool = Field(
        description="une réévaluation en arrière-plan (ressource republiée, seuils changés) n'a pas encore atteint "
        "cette paire : les verdicts sont ceux d'aujourd'hui, les alert_id ceux d'avant elle"
    )
    compatible: int | None = Field(None, ge=0, description="postes compatibles (seulement si évaluée)")
    devices: int | None = Field(None, ge=0, description="postes avec un système déclaré (seulement si évaluée)")
    coverage: float | None = Field(None, ge=0, le=1, description="part formée la plus faible (si évaluée)")


class FormationDetaillee(CouvertureFormation):
    detail_masque: Literal[False]


class FormationMasquee(_Reponse):
    """Fewer than MIN_TEACHERS_DETAILED teachers counted: their count alone (api.formation_shown)."""

    uai: str
    enseignants: int = Field(ge=0)
    detail_masque: Literal[True]


class FicheEtablissement(_Reponse):
    etablissement: Etablissement
    equipement: ProfilEquipement | None = Field(description="null tant qu'aucun équipement n'est déclaré")
    formation: FormationDetaillee | FormationMasquee | None = Field(
        description="null tant qu'aucune affectation n'est déclarée ; le seul nombre d'enseignants en dessous de 5"
    )
    ressources: list[RessourceAbonnee]


class Comptes(_Reponse):
    """The evaluated pairs of one resource, by verdict (queries.synthese)."""

    evalues: int = Field(ge=0)
    compatibles: int = Field(ge=0)
    partiels: int = Field(ge=0)
    incompatibles: int = Field(ge=0)
    sous_formes: int = Field(ge=0, description="formation insuffisante (en plus du verdict d'équipement)")


EN_ATTENTE = Field(
    description="une réévaluation en arrière-plan (ressource publiée ou republiée, seuils changés) n'a pas "
    "encore atteint toutes ses paires : celles qu'elle n'a pas atteintes sont comptées d'après les alertes d'avant "
    "elle (compatibles si elles n'en avaient pas)"
)


class SyntheseRessource(_Reponse):
    resource_id: str
    title: str | None = Field(description="null si la ressource a été retirée")
    publiee: bool
    total: Comptes
    par_academie: dict[str, Comptes] = Field(description="par code académie")
    reevaluation_en_attente: bool = EN_ATTENTE


class Repartition(_Reponse):
    resource_id: str
    par_departement: dict[str, Comptes] = Field(description="par code département")
    reevaluation_en_attente: bool = EN_ATTENTE


class Territoires(_Reponse):
    academies: dict[str, list[str]] = Field(description="code académie : ses codes département, dans l'ordre")
    noms: dict[str, str] = Field(
        description="code académie : son nom, pour toutes les académies (DOMAIN.md), au référentiel ou non"
    )
