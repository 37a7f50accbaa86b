"""The Faust runtime the agents run on: the app and its settings, the batch consumer and
its commits, the topics, the telemetry, the logs, the version. Below ``agents/`` and
above ``tables/`` and ``storage/`` (``.importlinter``); ``app/`` composes it."""
