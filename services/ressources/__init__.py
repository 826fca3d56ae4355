"""ressources: the catalogue and the GAR subscriptions; checks every subscribed resource
against each établissement's equipment and training coverage and publishes alerts."""
