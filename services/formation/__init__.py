"""formation: affectations and trainings declared by rectorats, turned into one training
coverage per UAI, published on `formation.couvertures.v1` whenever it changes."""
