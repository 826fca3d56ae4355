"""Feeding the référentiel: établissements read from the annuaire's CSV exports or generated,
then published to `referentiel.etablissements.v1` as the ministère does.

Run `python -m deploy.referentiel --help`. Reading and generating are pure (`csv_formats`,
`codes`, `generator`), so they are tested without a broker; only `publish` talks to Kafka.
"""

from .csv_formats import CsvFormatError, Loaded, Skipped, load, parse, write_annuaire
from .generator import NATIONAL_MIX, generate, scale_mix
from .publish import TopicMissingError, publish_etablissements

__all__ = [
    "NATIONAL_MIX",
    "CsvFormatError",
    "Loaded",
    "Skipped",
    "TopicMissingError",
    "generate",
    "load",
    "parse",
    "publish_etablissements",
    "scale_mix",
    "write_annuaire",
]
