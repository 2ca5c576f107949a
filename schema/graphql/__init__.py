"""The GraphQL schema: types, resolvers, execution."""
