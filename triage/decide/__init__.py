"""Pure decisions about one message: etiquette, sender authentication, features, model, dispose."""
