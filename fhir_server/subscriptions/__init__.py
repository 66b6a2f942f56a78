"""R4 Subscriptions: criteria and status rules, the outbox dispatcher, rest-hook and websocket delivery."""
