"""The `llmserve` command line: runs the stack, manages models (registry gRPC API), servings,
keys and usage (the edge's admin HTTP API) and chats with a serving (the public OpenAI API)."""
