"""formation: affectations and trainings declared by rectorats, turned into each UAI's training
coverage (teachers and competence levels, teachers per tool), published on
`formation.couvertures.v2` whenever a record of it changes."""
