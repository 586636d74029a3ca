"""A device's local training: its data and state, the two local trainers behind one interface,
the device's evaluation of itself, and its checks of what a server sends. No Flower here."""
