-- Where an open alert was raised (its académie, département and responsable), kept once its
-- établissement moves (a commune merged, a change of département): its resolution is announced
-- there, as its raise was, so that a dashboard filtering on them (the stream's filters, or a
-- consumer of the topics) sees it resolve. NULL while the alert is where it was raised (the
-- row's content says it), which is nearly always: set by the first update that moves it.
ALTER TABLE alertes ADD COLUMN levee_portee jsonb;
