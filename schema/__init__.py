"""Business logic exposed: operations (plain Python) and the GraphQL schema over them."""
