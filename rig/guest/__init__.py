"""Guest flavours: how a cell's guest is made and how its one agent runs and reports."""
