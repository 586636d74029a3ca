"""The Flower adapters: the one ClientApp, the transport and ServerApp over the federation core,
the SecAgg+ translation, fault-injection mods, and the apps ``flwr run`` loads."""
