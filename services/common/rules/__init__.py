"""Pure rules shared by the services: who may declare what (rights), latest time wins (state). No I/O."""
