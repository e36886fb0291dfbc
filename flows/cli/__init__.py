"""The ``fusion`` command: the app and its frame (``app``), and its commands, registered here in the order
``fusion --help`` lists them: those that run (``running``), read a store (``query``, ``mining``), manage models
(``models``), record people's decisions about images (``decisions``) and look after a store (``upkeep``)."""

import typer

from flows.cli import decisions, mining, models, query, running, upkeep
from flows.cli.app import InOrder, app, main

COMMANDS = [running.demo, running.run, running.serve, running.doctor, query.runs, query.show, models.app,
            query.predictions, query.clusters, mining.find, mining.similar, decisions.exclude, decisions.relabel,
            decisions.review, decisions.decisions, query.images, query.image, query.export, upkeep.gc, upkeep.fsck,
            upkeep.backup, running.report]
for command in COMMANDS:
    if isinstance(command, typer.Typer):
        app.add_typer(command)
    else:
        app.command()(command)
InOrder.order = [c.info.name if isinstance(c, typer.Typer) else c.__name__.replace("_", "-") for c in COMMANDS]

__all__ = ["app", "main"]
