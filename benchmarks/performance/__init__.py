"""Performance: adapter speed, frozen-forward engines, working memory, load and scale through the server."""
